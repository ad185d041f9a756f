{#
    asapp_raw_source(relation, columns): an ASAPP raw feed table with exactly the documented columns, each of its
    documented type (columns: name -> canonical type), and the lineage columns. The load lands documented columns
    typed, so they are selected as they are; a raw column that holds text instead (a table loaded before raw
    columns were typed, or a column that was undocumented when it first arrived) is cast by asapp_cast. A missing
    column is null, a missing table gives no rows (see relation_or_empty).
#}
{% macro asapp_lineage_columns() -%}
    {{ return({
        '_asapp_feed': dbt.type_string(),
        '_asapp_version': dbt.type_string(),
        '_asapp_partition_at': dbt.type_timestamp(),
        '_asapp_file': dbt.type_string(),
        '_asapp_split': dbt.type_int(),
        '_asapp_line': dbt.type_bigint(),
        '_asapp_loaded_at': dbt.type_timestamp(),
        '_dlt_load_id': dbt.type_string(),
    }) }}
{%- endmacro %}

{% macro asapp_raw_source(relation, columns) -%}
    {%- set found, existing = asapp_existing_columns(relation) -%}
    select
    {%- for name, type in columns.items() %}
        {% if name in existing and type != 'varchar' and existing[name].is_string() -%}
            {{ asapp_cast(adapter.quote(name), type) }}
        {%- elif name in existing -%}
            cast({{ adapter.quote(name) }} as {{ asapp_type(type) }})
        {%- else -%}
            cast(null as {{ asapp_type(type) }})
        {%- endif %} as {{ name }},
    {%- endfor %}
    {%- for name, type in asapp_lineage_columns().items() %}
        {% if name in existing -%}
            cast({{ adapter.quote(name) }} as {{ type }})
        {%- else -%}
            cast(null as {{ type }})
        {%- endif %} as {{ name }}{{ ',' if not loop.last }}
    {%- endfor %}
    {% if found is not none -%}
    from {{ found }}
    {%- else -%}
    where 1 = 0
    {%- endif %}
{%- endmacro %}

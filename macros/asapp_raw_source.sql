{#
    asapp_raw_source(relation, columns): the raw feed table with exactly the documented columns (as text) and
    the lineage columns. A documented column that the data does not carry yet is null; a raw table that does not
    exist yet (the feed was never exported to this customer) gives an empty relation, so `dbt build` still passes.
    Both are decided when the model runs, from the warehouse's catalog.
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
    {%- set existing = [] -%}
    {%- set found = namespace(relation=none) -%}
    {%- if execute -%}
        {%- set found.relation = adapter.get_relation(
            database=relation.database, schema=relation.schema, identifier=relation.identifier) -%}
        {%- if found.relation is not none -%}
            {%- for c in adapter.get_columns_in_relation(found.relation) -%}
                {%- do existing.append(c.name | lower) -%}
            {%- endfor -%}
        {%- endif -%}
    {%- endif -%}
    select
    {%- for name in columns %}
        {% if name in existing -%}
            cast({{ adapter.quote(name) }} as {{ dbt.type_string() }})
        {%- else -%}
            cast(null as {{ dbt.type_string() }})
        {%- endif %} as {{ name }},
    {%- endfor %}
    {%- for name, type in asapp_lineage_columns().items() %}
        {% if name in existing -%}
            cast({{ name }} as {{ type }})
        {%- else -%}
            cast(null as {{ type }})
        {%- endif %} as {{ name }}{{ ',' if not loop.last }}
    {%- endfor %}
    {% if found.relation is not none -%}
    from {{ found.relation }}
    {%- else -%}
    where 1 = 0
    {%- endif %}
{%- endmacro %}

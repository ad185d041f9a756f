{#
    asapp_raw_source(relation, columns): an ASAPP raw feed table with exactly the documented columns, each of its
    documented type (columns: name -> canonical type), and the lineage columns. The load lands documented columns
    typed, so their cast to it is a no-op; a raw column that holds text instead (a table loaded before raw
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
    {%- set catalog = asapp_existing_columns(relation) -%}
    {%- set existing = catalog[1] -%}
    {%- set types = {} -%}
    {%- set expressions = {} -%}
    {%- for name, type in columns.items() -%}
        {%- do types.update({name: asapp_type(type)}) -%}
        {%- if name in existing and type != 'varchar' and existing[name].is_string() -%}
            {%- do expressions.update({name: asapp_cast(adapter.quote(name), type)}) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- do types.update(asapp_lineage_columns()) -%}
    {{ relation_or_empty(relation, types, expressions, catalog) }}
{%- endmacro %}

{#
    asapp_raw_source(relation, columns): an ASAPP raw feed table with exactly the documented columns (as text)
    and the lineage columns; see relation_or_empty for what happens when columns or the table are missing.
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
    {%- set typed = {} -%}
    {%- for name in columns -%}
        {%- do typed.update({name: dbt.type_string()}) -%}
    {%- endfor -%}
    {%- do typed.update(asapp_lineage_columns()) -%}
    {{ relation_or_empty(relation, typed) }}
{%- endmacro %}

{#
    asapp_record_key(columns): one text key for a feed's unique condition, null-safe, for merges and tests.
    A null key column is a value of its own ('<null>'), as it is for row_number's partition.
#}
{% macro asapp_record_key(columns) -%}
    {%- set parts = [] -%}
    {%- for c in columns -%}
        {%- do parts.append(asapp_key_part(c)) -%}
        {%- if not loop.last -%}{%- do parts.append("'|'") -%}{%- endif -%}
    {%- endfor -%}
    {{ dbt.hash(dbt.concat(parts)) }}
{%- endmacro %}

{#- asapp_key_part(column): how the key reads one column (null as '<null>'). -#}
{% macro asapp_key_part(column) -%}
    coalesce(cast({{ column }} as {{ dbt.type_string() }}), '<null>')
{%- endmacro %}

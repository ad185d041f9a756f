{#- Values (when present) match a regular expression as a whole; used for the formats the ASAPP API requires. -#}
{% test asapp_matches_pattern(model, column_name, pattern) %}
    select {{ column_name }}
    from {{ model }}
    where {{ column_name }} is not null
        and not {{ asapp_regex_full_match(column_name, pattern) }}
{% endtest %}

{% macro asapp_regex_full_match(expression, pattern) -%}
    {{ return(adapter.dispatch('asapp_regex_full_match', 'asapp_elt')(expression, pattern)) }}
{%- endmacro %}

{% macro default__asapp_regex_full_match(expression, pattern) -%}
    regexp_like({{ expression }}, '^(?:{{ pattern }})$')
{%- endmacro %}

{% macro duckdb__asapp_regex_full_match(expression, pattern) -%}
    regexp_full_match({{ expression }}, '{{ pattern }}')
{%- endmacro %}

{% macro postgres__asapp_regex_full_match(expression, pattern) -%}
    ({{ expression }} ~ '^(?:{{ pattern }})$')
{%- endmacro %}

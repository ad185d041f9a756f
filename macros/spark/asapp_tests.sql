{#- Spark's spelling of the generic tests' engine-specific parts (macros/generic_tests/). -#}

{#- Spark reads backslash escapes in string literals: the pattern's backslashes are doubled to reach the regex. -#}
{% macro spark__asapp_regex_full_match(expression, pattern) -%}
    ({{ expression }} rlike '^(?:{{ pattern | replace('\\', '\\\\') }})$')
{%- endmacro %}

{% macro spark__asapp_untyped_has(column, key) -%}
    get_json_object({{ column }}, '$.{{ key }}') is not null
{%- endmacro %}

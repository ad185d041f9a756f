{#-
    Counts raw values that are present but could not be cast to the documented type (they are null in staging).
    Used with severity warn: bad values never fail the build, but they are reported. `columns` maps column name
    to canonical type. A typed raw column holds null for such a value and the row's _asapp_untyped keeps it as
    sent ({"column": "value"}); a raw column of text holds the value itself. A raw table that does not exist yet
    has no failures.
-#}
{% test asapp_cast_failures(model, columns) %}
    {%- set found, existing = asapp_existing_columns(model) -%}
    {%- set checked = [] -%}
    {%- for name, type in columns.items() if name in existing and type != 'varchar' -%}
        {%- if existing[name].is_string() or '_asapp_untyped' in existing -%}
            {%- do checked.append((name, type, existing[name].is_string())) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if checked -%}
        {%- for name, type, as_text in checked %}
    select '{{ name }}' as column_name, count(*) as failures
    from {{ found }}
            {%- if as_text %}
    where {{ adapter.quote(name) }} is not null
        and trim(cast({{ adapter.quote(name) }} as {{ dbt.type_string() }})) <> ''
        and {{ asapp_cast(adapter.quote(name), type) }} is null
            {%- else %}
    where {{ asapp_untyped_has('_asapp_untyped', name) }}
            {%- endif %}
    having count(*) > 0
        {{ 'union all' if not loop.last }}
        {%- endfor %}
    {%- else %}
    select cast(null as {{ dbt.type_string() }}) as column_name, 0 as failures where 1 = 0
    {%- endif %}
{% endtest %}

{#- asapp_untyped_has(column, key): whether the JSON object in column (text) has key. -#}
{% macro asapp_untyped_has(column, key) -%}
    {{ return(adapter.dispatch('asapp_untyped_has', 'asapp_elt')(column, key)) }}
{%- endmacro %}

{% macro default__asapp_untyped_has(column, key) -%}
    {{ column }} like '%"{{ key }}":%'
{%- endmacro %}

{% macro duckdb__asapp_untyped_has(column, key) -%}
    json_extract({{ column }}, '$."{{ key }}"') is not null
{%- endmacro %}

{% macro postgres__asapp_untyped_has(column, key) -%}
    cast({{ column }} as json) -> '{{ key }}' is not null
{%- endmacro %}

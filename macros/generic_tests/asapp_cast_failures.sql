{#-
    Counts raw values that are present but could not be cast to the documented type (they became null in
    staging). Used with severity warn: bad values never fail the build, but they are reported.
    `columns` maps column name to canonical type. A raw table that does not exist yet has no failures.
-#}
{% test asapp_cast_failures(model, columns) %}
    {%- set found, existing = asapp_existing_columns(model) -%}
    {%- set checked = [] -%}
    {%- for name, type in columns.items() if name in existing and type != 'varchar' -%}
        {%- do checked.append((name, type)) -%}
    {%- endfor -%}
    {%- if checked -%}
        {%- for name, type in checked %}
    select '{{ name }}' as column_name, count(*) as failures
    from {{ found }}
    where {{ adapter.quote(name) }} is not null
        and trim(cast({{ adapter.quote(name) }} as {{ dbt.type_string() }})) <> ''
        and {{ asapp_cast(adapter.quote(name), type) }} is null
    having count(*) > 0
        {{ 'union all' if not loop.last }}
        {%- endfor %}
    {%- else %}
    select cast(null as {{ dbt.type_string() }}) as column_name, 0 as failures where 1 = 0
    {%- endif %}
{% endtest %}

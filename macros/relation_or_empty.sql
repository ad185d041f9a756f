{#
    relation_or_empty(relation, columns): `select` of the given columns (name -> type) from relation, casting
    each; a column the relation lacks is null, and a relation that does not exist yet (a feed never exported,
    a source not configured) gives an empty, typed result, so `dbt build` still passes.
    Decided when the model runs, from the warehouse's catalog.
#}
{% macro relation_or_empty(relation, columns) -%}
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
    {%- for name, type in columns.items() %}
        {% if name in existing -%}
            cast({{ adapter.quote(name) }} as {{ type }})
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

{#
    asapp_existing_columns(relation): (the relation as found in the warehouse's catalog or none, its columns by
    lowercase name). Empty outside execution (parsing) and for a relation that does not exist yet.
#}
{% macro asapp_existing_columns(relation) -%}
    {%- set columns = {} -%}
    {%- set found = none -%}
    {%- if execute -%}
        {%- set found = adapter.get_relation(
            database=relation.database, schema=relation.schema, identifier=relation.identifier) -%}
        {%- if found is not none -%}
            {%- for c in adapter.get_columns_in_relation(found) -%}
                {%- do columns.update({c.name | lower: c}) -%}
            {%- endfor -%}
        {%- endif -%}
    {%- endif -%}
    {{ return((found, columns)) }}
{%- endmacro %}

{#
    relation_or_empty(relation, columns, expressions): `select` of the given columns (name -> type) from relation,
    casting each (or expressions[name] instead, for a column the relation has); a column the relation lacks is
    null, and a relation that does not exist yet (a feed never exported, a source not configured) gives an empty,
    typed result, so `dbt build` still passes. Decided when the model runs, from the warehouse's catalog
    (catalog: what asapp_existing_columns(relation) returned, for a caller that has looked it up already).
    Every column is cast to its type, an expression's result too: the type of a `case` (asapp_cast on Postgres) is
    the engine's choice (Postgres drops numeric's precision and scale), and a column must have the same type
    whether its relation exists or not, or an incremental model's next run stops (on_schema_change='fail').
#}
{% macro relation_or_empty(relation, columns, expressions={}, catalog=none) -%}
    {%- set found, existing = catalog if catalog is not none else asapp_existing_columns(relation) -%}
    select
    {%- for name, type in columns.items() %}
        {% if name in existing and name in expressions -%}
            cast({{ expressions[name] }} as {{ type }})
        {%- elif name in existing -%}
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

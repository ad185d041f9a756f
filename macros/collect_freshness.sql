{#
    `dbt source freshness` checks the sources that were delivered. A raw table exists once a feed (or an APSIS
    table) has landed rows; one that does not exist was never delivered (most accounts receive a few of ASAPP's
    feeds), which is not lateness: it is reported as not delivered and passes. A table that exists is checked by
    dbt's own query, so a feed that was delivered and then stopped warns and errors after its thresholds.
    This overrides dbt's built-in collect_freshness (the root project's macro wins) and hands every delivered
    source back to it.
#}
{% macro collect_freshness(source, loaded_at_field, filter) %}
    {%- set relation = adapter.get_relation(source.database, source.schema, source.identifier) -%}
    {%- if relation is none -%}
        {{ log(source.schema ~ '.' ~ source.identifier ~ ': never delivered, not checked', info=True) }}
        {% call statement('collect_freshness', fetch_result=True, auto_begin=False) -%}
            select
                {{ current_timestamp() }} as max_loaded_at,
                {{ current_timestamp() }} as snapshotted_at
        {%- endcall %}
        {{ return(load_result('collect_freshness')) }}
    {%- endif -%}
    {{ return(adapter.dispatch('collect_freshness', 'dbt')(source, loaded_at_field, filter)) }}
{% endmacro %}

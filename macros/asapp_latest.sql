{#
    asapp_latest(relation, partition_by, order_by, columns): keep one row per partition_by, the first by order_by.
    This is the dedup of ASAPP's "Removing Duplicate Data": the newest version of each record wins, by the
    feed's ordering key, then by insertion order (partition time, load time, split, file, line), all descending.
    Unlike dbt_utils.deduplicate, rows with null columns are kept.
#}
{% macro asapp_latest(relation, partition_by, order_by, columns) -%}
    {{ return(adapter.dispatch('asapp_latest', 'asapp_elt')(relation, partition_by, order_by, columns)) }}
{%- endmacro %}

{% macro default__asapp_latest(relation, partition_by, order_by, columns) -%}
    select {{ columns | join(', ') }}
    from (
        select
            *,
            row_number() over (
                partition by {{ partition_by | join(', ') }}
                order by {{ order_by | join(', ') }}
            ) as _asapp_row_number
        from {{ relation }}
    ) as ranked
    where _asapp_row_number = 1
{%- endmacro %}

{% macro duckdb__asapp_latest(relation, partition_by, order_by, columns) -%}
    select *
    from {{ relation }}
    qualify row_number() over (
        partition by {{ partition_by | join(', ') }}
        order by {{ order_by | join(', ') }}
    ) = 1
{%- endmacro %}

{% macro snowflake__asapp_latest(relation, partition_by, order_by, columns) -%}
    {{ duckdb__asapp_latest(relation, partition_by, order_by, columns) }}
{%- endmacro %}

{% macro databricks__asapp_latest(relation, partition_by, order_by, columns) -%}
    {{ duckdb__asapp_latest(relation, partition_by, order_by, columns) }}
{%- endmacro %}

{% macro bigquery__asapp_latest(relation, partition_by, order_by, columns) -%}
    {{ duckdb__asapp_latest(relation, partition_by, order_by, columns) }}
{%- endmacro %}

{% macro postgres__asapp_latest(relation, partition_by, order_by, columns) -%}
    {#- distinct on keeps null keys together, as row_number's partition does. -#}
    select distinct on ({{ partition_by | join(', ') }}) *
    from {{ relation }}
    order by {{ partition_by | join(', ') }}, {{ order_by | join(', ') }}
{%- endmacro %}

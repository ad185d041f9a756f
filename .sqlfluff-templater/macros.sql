{#- Stand-ins for the project's macros when sqlfluff renders models with its jinja templater: the real ones
    (macros/) call adapter.dispatch and read the warehouse catalog, which a linter cannot. -#}
{% macro asapp_cast(column, type) %}cast({{ column }} as {{ type }}){% endmacro %}
{% macro asapp_record_key(columns) %}md5({{ columns | join(" || ") }}){% endmacro %}
{% macro asapp_latest(relation, partition_by, order_by, columns) -%}
    select * from {{ relation }}
    qualify row_number() over (partition by {{ partition_by | join(', ') }} order by {{ order_by | join(', ') }}) = 1
{%- endmacro %}
{% macro asapp_raw_source(relation, columns) %}select * from {{ relation }}{% endmacro %}
{% macro relation_or_empty(relation, columns) %}select {{ columns.keys() | join(', ') }} from {{ relation }}{% endmacro %}
{% macro asapp_staged_versions(arrived, key_columns, columns, read, types) -%}
    select {% for c in columns %}{{ c if c in read else 'cast(null as text) as ' ~ c }}, {% endfor %}true as _asapp_staged
    from {{ this }} as this_model
    where this_model._asapp_record_key in (select {{ arrived }}._asapp_record_key from {{ arrived }})
{%- endmacro %}

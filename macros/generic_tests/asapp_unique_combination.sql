{#-
    The combination of columns is unique, a null being a value of its own (the dedup's partition treats
    nulls that way; a plain `unique` on a concatenation would not).
-#}
{% test asapp_unique_combination(model, columns) %}
    select
        {{ columns | join(', ') }},
        count(*) as n_records
    from {{ model }}
    group by {{ columns | join(', ') }}
    having count(*) > 1
{% endtest %}

{#
    How an incremental staging model meets what it has staged already: asapp_staged_versions (the versions staged
    of the keys that arrived, for the dedup to rank against) and the `asapp_latest` incremental strategy (delete the
    staged versions the new ones replace, insert the new ones). Both match a key on its hash and, on DuckDB, on
    its columns too: DuckDB then reads only the row groups whose ranges of those columns can hold an arriving key
    (its join filters meet the zone maps), where the hash alone makes it read every staged key twice per run. New
    records (a later time, a higher id) usually lie past what is staged: for them it costs next to nothing, however
    much history is staged. An arriving key with a null column (or a text column holding '<null>', which the hash
    takes for a null) is matched on its hash alone, as before: typed equality would miss it. Other engines keep
    the plain form (they have no zone maps to gain from).
#}

{#- asapp_key_matches(row, arrived, key_columns): the two conditions under which row (an alias) holds the key of a
    row of arrived, as DuckDB matches it: (1) its hash and key columns equal an arriving row's; (2) its hash equals
    that of an arriving row with a key column the hash reads as null. -#}
{% macro asapp_key_matches(row, arrived, key_columns) -%}
    {%- set matched = ['_asapp_record_key'] + key_columns -%}
    {%- set ours, theirs = [], [] -%}
    {%- for c in matched -%}
        {%- do ours.append(row ~ '.' ~ c) -%}
        {%- do theirs.append('arrived.' ~ c) -%}
    {%- endfor -%}
    {%- set has_null = [] -%}
    {%- for c in key_columns -%}
        {%- do has_null.append(asapp_key_part('arrived.' ~ c) ~ " = '<null>'") -%}
    {%- endfor -%}
    {{ return([
        '(' ~ ours | join(', ') ~ ') in (select ' ~ theirs | join(', ') ~ ' from ' ~ arrived ~ ' as arrived)',
        row ~ '._asapp_record_key in (select arrived._asapp_record_key from ' ~ arrived ~ ' as arrived where '
            ~ has_null | join(' or ') ~ ')',
    ]) }}
{%- endmacro %}

{#- asapp_staged_versions(arrived, key_columns, columns, read, types): `select` of the staged versions
    ({{ this }}) of the keys in arrived, with columns (the staged columns, in order) of which only those in read
    are read, and `true as _asapp_staged`. The others are nulls of their staged type (types: the feed's columns,
    name -> canonical type; the record key and the lineage columns have theirs): this select is unioned with the
    arriving rows, and a bare null would leave each engine to pick the union's type (Postgres drops numeric's
    precision and scale), which then differs from the staged table's and stops the run (on_schema_change='fail'). -#}
{% macro asapp_staged_versions(arrived, key_columns, columns, read, types) -%}
    {{ return(adapter.dispatch('asapp_staged_versions', 'asapp_elt')(arrived, key_columns, columns, read, types)) }}
{%- endmacro %}

{% macro asapp_staged_select(columns, read, types) -%}
    {%- set staged_types = {'_asapp_record_key': dbt.type_string()} -%}
    {%- for name, type in types.items() -%}
        {%- do staged_types.update({name: asapp_type(type)}) -%}
    {%- endfor -%}
    {%- do staged_types.update(asapp_lineage_columns()) -%}
    select
        {% for c in columns -%}
            {{ c if c in read else 'cast(null as ' ~ staged_types[c] ~ ') as ' ~ c }},
        {% endfor -%}
        true as _asapp_staged
    from {{ this }} as this_model
{%- endmacro %}

{% macro default__asapp_staged_versions(arrived, key_columns, columns, read, types) -%}
    {{ asapp_staged_select(columns, read, types) }}
    where this_model._asapp_record_key in (select {{ arrived }}._asapp_record_key from {{ arrived }})
{%- endmacro %}

{% macro duckdb__asapp_staged_versions(arrived, key_columns, columns, read, types) -%}
    {%- for condition in asapp_key_matches('this_model', arrived, key_columns) %}
    {{ asapp_staged_select(columns, read, types) }}
    where {{ condition }}
    {%- if not loop.last %}
    union all
    {%- endif %}
    {%- endfor %}
{%- endmacro %}

{#- The incremental strategy `asapp_latest`: dbt's delete+insert on _asapp_record_key. On DuckDB its delete
    matches as asapp_staged_versions does, with the key columns of the model's meta.unique_condition: by hash and
    columns, then by hash alone for the arriving keys with a null column. With incremental_predicates set, dbt's
    own delete+insert runs (it applies them). -#}
{% macro get_incremental_asapp_latest_sql(arg_dict) -%}
    {{ return(adapter.dispatch('asapp_latest_replace_sql', 'asapp_elt')(arg_dict)) }}
{%- endmacro %}

{% macro default__asapp_latest_replace_sql(arg_dict) -%}
    {{ return(get_incremental_delete_insert_sql(arg_dict)) }}
{%- endmacro %}

{% macro duckdb__asapp_latest_replace_sql(arg_dict) -%}
    {%- if arg_dict['incremental_predicates'] -%}
        {{ return(get_incremental_delete_insert_sql(arg_dict)) }}  {#- dbt's, which applies them -#}
    {%- endif -%}
    {%- set target = arg_dict['target_relation'] -%}
    {%- set source = arg_dict['temp_relation'] -%}
    {%- set key_columns = config.get('meta', {}).get('unique_condition') -%}
    {%- if not key_columns -%}
        {{ exceptions.raise_compiler_error("incremental_strategy 'asapp_latest' needs the model's meta.unique_condition") }}
    {%- endif -%}
    {%- set dest_cols_csv = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
    {% for condition in asapp_key_matches('this_model', source, key_columns) -%}
    delete from {{ target }} as this_model where {{ condition }};
    {% endfor %}
    insert into {{ target }} ({{ dest_cols_csv }})
    (
        select {{ dest_cols_csv }}
        from {{ source }}
    )
{%- endmacro %}

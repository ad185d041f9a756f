{#
    asapp_raw_source(relation, columns): an ASAPP raw feed table with exactly the documented columns, each of its
    documented type (columns: name -> canonical type), and the lineage columns (asapp_lineage_columns, generated in
    macros/asapp_lineage.sql from loaders/contract.py). The load lands documented columns
    typed, so their cast to it is a no-op; a raw column that holds text instead (a table loaded before raw
    columns were typed, or a column that was undocumented when it first arrived) is cast by asapp_cast. A missing
    column is null, a missing table gives no rows (see relation_or_empty).
#}
{% macro asapp_raw_source(relation, columns) -%}
    {%- set catalog = asapp_existing_columns(relation) -%}
    {%- set existing = catalog[1] -%}
    {%- set types = {} -%}
    {%- set expressions = {} -%}
    {%- for name, type in columns.items() -%}
        {%- do types.update({name: asapp_type(type)}) -%}
        {%- if name in existing and type != 'varchar' and existing[name].is_string() -%}
            {%- do expressions.update({name: asapp_cast(adapter.quote(name), type)}) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- do types.update(asapp_lineage_columns()) -%}
    {{ relation_or_empty(relation, types, expressions, catalog) }}
{%- endmacro %}

{#
    asapp_widen_lineage(): a pre-hook of the ASAPP staging models. A table staged before a lineage column took its
    contract type holds it narrower (_asapp_split as integer, where raw and the contract say bigint); its column is
    widened in place, so an incremental run (on_schema_change='fail') goes on instead of failing on the type.
    Only integer columns are widened: that change keeps every value.
#}
{% macro asapp_widen_lineage() -%}
    {%- if execute and is_incremental() -%}
        {%- set lineage = asapp_lineage_columns() -%}
        {%- for c in adapter.get_columns_in_relation(this) -%}
            {%- set name = c.name | lower -%}
            {%- if name in lineage and c.is_integer() and c.data_type | lower != lineage[name] | lower -%}
                {%- do run_query(asapp_alter_column_type(this, name, lineage[name])) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}

{% macro asapp_alter_column_type(relation, name, type) -%}
    {{ return(adapter.dispatch('asapp_alter_column_type', 'asapp_elt')(relation, name, type)) }}
{%- endmacro %}

{% macro default__asapp_alter_column_type(relation, name, type) -%}
    alter table {{ relation }} alter column {{ adapter.quote(name) }} set data type {{ type }}
{%- endmacro %}

{% macro postgres__asapp_alter_column_type(relation, name, type) -%}
    alter table {{ relation }} alter column {{ adapter.quote(name) }} type {{ type }}
{%- endmacro %}

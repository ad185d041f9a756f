{#
    asapp_register_raw(): an on-run-start hook (dbt_project.yml), a no-op but on Spark.

    dlt has no Spark destination: on Spark, raw data lands as parquet files through dlt's filesystem destination,
    one folder per table (<raw>/<dataset>/<table>/<load id>.<file id>.parquet; raw: asapp_spark_raw_url()). Before
    dbt reads them, each such folder becomes an external table <dataset>.<table> over its files, created again at
    every run with mergeSchema: a column that appeared in later files (dlt's schema evolution) is then a column of
    the table, null in the rows of earlier files, and files a load added since are read. Dropping an external table
    leaves its files. The schema of every source is created too, so a source never loaded is a missing relation
    (relation_or_empty), as on the other engines. dlt's own tables (_dlt_*) are not registered.
#}
{% macro asapp_register_raw() -%}
    {{ return(adapter.dispatch('asapp_register_raw', 'asapp_elt')()) }}
{%- endmacro %}

{% macro default__asapp_register_raw() -%}
{%- endmacro %}

{% macro spark__asapp_register_raw() -%}
    {%- if execute and target.type == 'spark' -%}
        {%- set root = asapp_spark_raw_url() -%}
        {%- set schemas = [] -%}
        {%- for source in graph.sources.values() if source.schema not in schemas -%}
            {%- do schemas.append(source.schema) -%}
        {%- endfor -%}
        {%- for schema in schemas -%}
            {%- do run_query('create database if not exists ' ~ schema) -%}
        {%- endfor -%}
        {#- binaryFile lists the files without reading them: their content is not selected. -#}
        {%- do run_query(
            "create or replace temporary view asapp_raw_files using binaryFile options (path '" ~ root
            ~ "', recursiveFileLookup 'true', pathGlobFilter '*.parquet')") -%}
        {%- set folder = "'([^/]+)/([^/]+)/[^/]+[.]parquet$'" -%}
        {%- set listed = run_query(
            "select distinct regexp_extract(path, " ~ folder ~ ", 1), regexp_extract(path, " ~ folder ~ ", 2) "
            ~ "from asapp_raw_files") -%}
        {%- do run_query('drop view asapp_raw_files') -%}
        {%- for dataset, name in listed.rows if dataset and name and not name.startswith('_dlt') -%}
            {%- set table = '`' ~ dataset ~ '`.`' ~ name ~ '`' -%}
            {%- do run_query('create database if not exists `' ~ dataset ~ '`') -%}
            {%- do run_query('drop table if exists ' ~ table) -%}
            {%- do run_query('create table ' ~ table ~ " using parquet options (mergeSchema 'true') location '"
                ~ root ~ '/' ~ dataset ~ '/' ~ name ~ "'") -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}

{#- asapp_spark_raw_url(): where dlt lands the raw parquet files: ELT_SPARK_RAW_URL, by default the folder raw in
    ELT_SPARK_WAREHOUSE (`elt` makes both absolute). Spark reads an s3:// bucket as s3a:// (hadoop-aws). -#}
{% macro asapp_spark_raw_url() -%}
    {%- set url = env_var('ELT_SPARK_RAW_URL', '') or env_var('ELT_SPARK_WAREHOUSE', 'warehouse/spark') ~ '/raw' -%}
    {{ return('s3a://' ~ url[5:] if url.startswith('s3://') else url.rstrip('/')) }}
{%- endmacro %}

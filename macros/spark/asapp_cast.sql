{#- Spark's spelling of asapp_type and asapp_cast (macros/asapp_cast.sql). dbt-spark runs with ANSI mode off, so a
    cast that fails is null; try_cast says so anyway. Spark reads a timestamp's offset (Z, +00:00, -05:00) and
    converts it to the session's zone, UTC (profiles.yml); one without an offset is taken as UTC. -#}
{% macro spark__asapp_type(type) -%}
    {%- set t = type | lower -%}
    {%- if t == 'varchar' -%} string
    {%- elif t == 'integer' -%} int
    {%- elif t.startswith('numeric') -%} decimal{{ t[7:] }}
    {%- else -%} {{ t }}
    {%- endif -%}
{%- endmacro %}

{% macro spark__asapp_cast(column, type) -%}
    {%- set t = type | lower -%}
    {%- set v = 'trim(cast(' ~ column ~ ' as string))' -%}
    {%- if t == 'varchar' -%}
        cast({{ column }} as string)
    {%- elif t == 'timestamp' -%}
        coalesce(try_cast({{ v }} as timestamp), try_cast(left({{ v }}, 19) as timestamp))
    {%- elif t == 'date' -%}
        try_cast(left({{ v }}, 10) as date)
    {%- elif t == 'boolean' -%}
        try_cast({{ v }} as boolean)
    {%- else -%}
        try_cast({{ v }} as {{ spark__asapp_type(t) }})
    {%- endif -%}
{%- endmacro %}

{#
    asapp_cast(column, type): cast a raw text value to its documented (canonical) type.
    A value that cannot be cast becomes null; it never fails the build (the asapp_cast_failures test counts them).
    Canonical types come from loaders/export_docs/model.py: bigint, integer, double, numeric(p,s), boolean,
    timestamp, date, varchar. Timestamps arrive as '2018-09-05 19:58:06', '2019-09-22T13:12:26.073000+00:00'
    and even '2018-09-05 19:58:06T00:01:16.203000+00:00': values with an offset are converted to UTC, values
    without one are taken as UTC, and the last shape keeps its first 19 characters.
#}
{% macro asapp_cast(column, type) -%}
    {{ return(adapter.dispatch('asapp_cast', 'asapp_elt')(column, type)) }}
{%- endmacro %}

{#
    asapp_type(type): the SQL type of a canonical type on this engine: the type asapp_cast returns.
#}
{% macro asapp_type(type) -%}
    {{ return(adapter.dispatch('asapp_type', 'asapp_elt')(type)) }}
{%- endmacro %}

{% macro default__asapp_type(type) -%}
    {%- set t = type | lower -%}
    {%- if t == 'varchar' -%} {{ dbt.type_string() }}
    {%- elif t == 'timestamp' -%} {{ dbt.type_timestamp() }}
    {%- elif t == 'bigint' -%} {{ dbt.type_bigint() }}
    {%- elif t == 'integer' -%} {{ dbt.type_int() }}
    {%- elif t == 'double' -%} {{ dbt.type_float() }}
    {%- else -%} {{ t }}
    {%- endif -%}
{%- endmacro %}

{% macro duckdb__asapp_type(type) -%}
    {{ type | lower }}
{%- endmacro %}

{% macro postgres__asapp_type(type) -%}
    {%- set t = type | lower -%}
    {%- if t == 'varchar' -%} text
    {%- elif t == 'double' -%} double precision
    {%- else -%} {{ t }}
    {%- endif -%}
{%- endmacro %}

{% macro default__asapp_cast(column, type) -%}
    {%- if type | lower == 'varchar' -%}
        cast({{ column }} as {{ asapp_type(type) }})
    {%- else -%}
        {{ dbt.safe_cast(column, asapp_type(type)) }}
    {%- endif -%}
{%- endmacro %}

{% macro duckdb__asapp_cast(column, type) -%}
    {%- set t = type | lower -%}
    {%- set v = 'cast(' ~ column ~ ' as varchar)' -%}
    {%- if t == 'varchar' -%}
        {{ v }}
    {%- elif t == 'timestamp' -%}
        coalesce(
            case when regexp_matches({{ v }}, '\d:\d\d(\.\d+)?\s*([zZ]|[+-]\d\d(:?\d\d)?)$')
                then timezone('UTC', try_cast({{ v }} as timestamptz)) end,
            try_cast({{ v }} as timestamp),
            try_strptime(left({{ v }}, 19), '%Y-%m-%d %H:%M:%S'),
            try_strptime(left({{ v }}, 19), '%Y-%m-%dT%H:%M:%S')
        )
    {%- elif t == 'date' -%}
        try_cast(left({{ v }}, 10) as date)
    {%- elif t == 'boolean' -%}
        try_cast({{ v }} as boolean)
    {%- else -%}
        try_cast({{ v }} as {{ t }})
    {%- endif -%}
{%- endmacro %}

{% macro postgres__asapp_cast(column, type) -%}
    {#- Postgres has no try_cast: every cast is guarded by the shape it accepts. -#}
    {%- set t = type | lower -%}
    {%- set v = 'btrim(cast(' ~ column ~ ' as text))' -%}
    {%- if t == 'varchar' -%}
        cast({{ column }} as text)
    {%- elif t == 'timestamp' -%}
        case
            when {{ v }} ~ '^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?\s*([zZ]|[+-]\d\d(:?\d\d)?)$'
                then cast({{ v }} as timestamptz) at time zone 'UTC'
            when {{ v }} ~ '^\d{4}-\d\d-\d\d([ T]\d\d:\d\d(:\d\d(\.\d+)?)?)?$'
                then cast({{ v }} as timestamp)
            when {{ v }} ~ '^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d'
                then cast(left({{ v }}, 19) as timestamp)
        end
    {%- elif t == 'date' -%}
        case when {{ v }} ~ '^\d{4}-\d\d-\d\d' then cast(left({{ v }}, 10) as date) end
    {%- elif t == 'boolean' -%}
        case lower({{ v }})
            when 'true' then true when 't' then true when '1' then true when 'yes' then true
            when 'false' then false when 'f' then false when '0' then false when 'no' then false
        end
    {%- elif t == 'bigint' or t == 'integer' -%}
        case when {{ v }} ~ '^[-+]?\d{1,18}(\.0*)?$'
            then cast(cast({{ v }} as numeric) as {{ 'bigint' if t == 'bigint' else 'integer' }}) end
    {%- else -%}
        case when {{ v }} ~ '^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$'
            then cast({{ v }} as {{ 'double precision' if t == 'double' else t }}) end
    {%- endif -%}
{%- endmacro %}

{#- Warehouses with try_cast / safe_cast: the same leniency, their own spelling. Not exercised here (no such
    engine on this machine); they follow each engine's documented functions. -#}
{% macro snowflake__asapp_cast(column, type) -%}
    {%- set t = type | lower -%}
    {%- set v = 'cast(' ~ column ~ ' as varchar)' -%}
    {%- if t == 'varchar' -%} {{ v }}
    {%- elif t == 'timestamp' -%}
        coalesce(
            convert_timezone('UTC', try_to_timestamp_tz({{ v }}))::timestamp_ntz,
            try_to_timestamp_ntz(left({{ v }}, 19))
        )
    {%- elif t == 'date' -%} try_to_date(left({{ v }}, 10))
    {%- elif t == 'boolean' -%} try_to_boolean({{ v }})
    {%- elif t == 'double' -%} try_to_double({{ v }})
    {%- elif t.startswith('numeric') -%} try_to_number({{ v }}, {{ t[8:-1] }})
    {%- else -%} try_to_number({{ v }})
    {%- endif -%}
{%- endmacro %}

{% macro bigquery__asapp_cast(column, type) -%}
    {%- set t = type | lower -%}
    {%- set v = 'cast(' ~ column ~ ' as string)' -%}
    {%- if t == 'varchar' -%} {{ v }}
    {%- elif t == 'timestamp' -%}
        coalesce(
            datetime(safe_cast({{ v }} as timestamp), 'UTC'),
            safe_cast(left({{ v }}, 19) as datetime)
        )
    {%- elif t == 'date' -%} safe_cast(left({{ v }}, 10) as date)
    {%- elif t == 'boolean' -%} safe_cast({{ v }} as bool)
    {%- elif t == 'double' -%} safe_cast({{ v }} as float64)
    {%- elif t.startswith('numeric') -%} safe_cast({{ v }} as numeric)
    {%- else -%} safe_cast({{ v }} as int64)
    {%- endif -%}
{%- endmacro %}

{% macro databricks__asapp_cast(column, type) -%}
    {%- set t = type | lower -%}
    {%- set v = 'cast(' ~ column ~ ' as string)' -%}
    {%- if t == 'varchar' -%} {{ v }}
    {%- elif t == 'timestamp' -%}
        coalesce(
            to_utc_timestamp(try_cast({{ v }} as timestamp), 'UTC'),
            try_cast(left({{ v }}, 19) as timestamp)
        )
    {%- elif t == 'date' -%} try_cast(left({{ v }}, 10) as date)
    {%- elif t == 'double' -%} try_cast({{ v }} as double)
    {%- elif t == 'varchar' -%} {{ v }}
    {%- else -%} try_cast({{ v }} as {{ t }})
    {%- endif -%}
{%- endmacro %}

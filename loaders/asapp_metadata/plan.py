"""The push plan: one set-based query that builds, in the warehouse, every mart row's item as sent (its JSON,
attributes included), its content hash and eventId, and its state against the push log.

- content_hash: sha256 of the item without its eventId, keys sorted, compact JSON (for printable ASCII values the
  bytes of Python's `json.dumps(item, sort_keys=True, separators=(",", ":"))`);
- event_id: `elt-` and the hash's first 40 hex digits, so the same content always has the same eventId;
- state: `new` (never pushed), `changed` (its content differs from its last outcome's), `owed` (the same content,
  whose last attempt was not acknowledged) or `settled` (acknowledged, or refused locally, with this content).

Only the hash function differs between engines; every value is cast to text, and JSON-quoted by `to_json`. On
Spark the plan runs in DuckDB, dlt's query engine over its filesystem destination (where the push log lands), over
the parquet files of the marts dbt-spark built (`mart`).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from typing import Any, TypeVar

import pyarrow as pa

from loaders import runtime
from loaders.asapp_metadata import settings

SETTLED = ("accepted", "already_persisted", "invalid")  # a last outcome after which the same content is not sent
ITEM_COLUMNS = ("event_id", *settings.KEYS, "content_hash", "wire")  # client.Item's fields
COLUMNS = ("state", "last_status", *ITEM_COLUMNS)
_SHA256 = {
    "duckdb": "sha256({})",
    "motherduck": "sha256({})",
    "postgres": "encode(sha256(convert_to({}, 'UTF8')), 'hex')",
    "spark": "sha256({})",  # run by DuckDB
}


T = TypeVar("T")


class PlanError(RuntimeError):
    """The warehouse cannot plan the push."""


def mart(engine: str, table: str) -> str:
    """The relation the plan reads a mart table from: the table itself; on Spark the parquet files of its managed
    table (spark.sql.warehouse.dir, profiles.yml), which DuckDB reads."""
    if engine != "spark":
        return f"marts.{table}"
    folder = str(runtime.spark_warehouse() / "tables" / "marts.db" / table).replace("'", "''")
    return f"read_parquet('{folder}/*.parquet')"


def _quoted(expression: str) -> str:
    return f"cast(to_json(cast({expression} as varchar)) as varchar)"


def _same_keys(left: str, right: str) -> str:
    return " and ".join(f"{left}.{k} = {right}.{k}" for k in settings.KEYS)


def sql(engine: str, log_table: str | None) -> str:
    """The plan over marts.customer_metadata and its attributes; log_table: the push log, None before the first
    push. Settled rows carry only their state and last status: nothing else of them is needed."""
    if engine not in _SHA256:
        raise PlanError(f"the push plans its items on {' or '.join(_SHA256)}; ELT_TARGET={engine} is not supported")
    keys = settings.KEYS
    members = {
        api: f"case when nullif(cast(m.{column} as varchar), '') is not null "
        f"then '\"{api}\":' || {_quoted(f'm.{column}')} end"
        for column, api in settings.FIELDS.items()
    }
    members["attributes"] = "case when a.attributes is not null then '\"attributes\":[' || a.attributes || ']' end"
    last = (
        ", ".join(f"cast(null as varchar) as {c}" for c in (*keys, "content_hash", "status")) + " where 1 = 0"
        if log_table is None
        else f"{', '.join(keys)}, content_hash, status from (select {', '.join(keys)}, content_hash, status, "
        f"row_number() over (partition by {', '.join(keys)} order by pushed_at desc) as rn from {log_table}) as l "
        "where rn = 1"
    )
    settled = ", ".join(f"'{s}'" for s in SETTLED)
    return f"""
with attributes as (
    select {", ".join(keys)},
        string_agg('{{"name":' || {_quoted("coalesce(attribute_name, '')")}
            || ',"value":' || {_quoted("coalesce(attribute_value, '')")} || '}}', ',' order by attribute_rank)
            as attributes
    from {mart(engine, settings.MART_ATTRIBUTES)} as attribute_rows
    where attribute_name is not null
    group by {", ".join(keys)}
),
items as (
    select {", ".join(f"m.{k}" for k in keys)},
        concat_ws(',', {", ".join(members[api] for api in sorted(members))}) as members
    from {mart(engine, settings.MART)} as m
    left join attributes as a on {_same_keys("a", "m")}
),
hashed as (
    select *, {_SHA256[engine].format("'{' || members || '}'")} as content_hash from items
),
last as (select {last}),
planned as (
    select h.*, 'elt-' || left(h.content_hash, {settings.EVENT_ID_HEX_DIGITS}) as event_id,
        l.status as last_status,
        case when l.content_hash is null then 'new'
             when l.content_hash <> h.content_hash then 'changed'
             when l.status in ({settled}) then 'settled'
             else 'owed' end as state
    from hashed as h
    left join last as l on {_same_keys("l", "h")}
)
select state, last_status,
    {", ".join(f"case when state <> 'settled' then {c} end as {c}" for c in ("event_id", *keys, "content_hash"))},
    case when state <> 'settled' then
        '{{"eventId":"' || event_id || '"' || case when members = '' then '' else ',' || members end || '}}'
    end as wire
from planned
"""


@contextmanager
def read(client: Any, query: str) -> Iterator[Iterator[pa.RecordBatch]]:
    """The plan's rows as Arrow record batches of at most BATCH_SIZE rows, read as they are needed: DuckDB's own
    Arrow reader; on Postgres a named (server-side) cursor, since psycopg2's default cursor holds the whole result."""
    native = client.native_connection
    if type(native).__module__.startswith("psycopg2"):
        with client.begin_transaction(), closing(native.cursor(name="asapp_push_plan")) as cursor:
            cursor.execute(query)
            yield _batches(cursor)
        return
    with client.execute_query(query) as cursor:
        native_cursor = cursor.native_cursor
        reader = (
            native_cursor.to_arrow_reader(settings.BATCH_SIZE)
            if hasattr(native_cursor, "to_arrow_reader")  # DuckDB 1.5; fetch_record_batch before it
            else native_cursor.fetch_record_batch(settings.BATCH_SIZE)
        )
        try:
            yield iter(reader)
        finally:  # an open reader keeps the database file open: dlt's next connection to it would wait forever
            reader.close()


def ahead(parts: Iterator[T]) -> Iterator[T]:
    """Each part is read (and checked) in a thread of its own while the one before is sent: read in line, the
    warehouse's ~3-5 ms and the check's ~3 ms a part paused the sending for as long."""
    with ThreadPoolExecutor(1, "asapp-plan") as pool:
        coming = pool.submit(next, parts, None)
        while (part := coming.result()) is not None:
            coming = pool.submit(next, parts, None)
            yield part


def _batches(cursor: Any) -> Iterator[pa.RecordBatch]:
    while rows := cursor.fetchmany(settings.BATCH_SIZE):
        columns = zip(*rows, strict=True)
        yield pa.RecordBatch.from_arrays([pa.array(c, pa.string()) for c in columns], names=list(COLUMNS))

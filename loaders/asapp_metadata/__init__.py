"""Reverse ETL: push the customer_metadata mart to ASAPP's many-customer-metadata API.

The warehouse plans (plan.py): one query builds every mart row's item as sent, its content hash and eventId, and
whether it is new, changed, owed (its last attempt was not acknowledged) or settled. Python sends: one loop reads
the plan in Arrow batches, checks each item against the spec's item schema (schema.py), and hands batches of up to
1,000 items to at most 4 requests in flight (client.py: paced to 100 requests/s, retried on 429 and 5xx, every
answer turned into one outcome per item). Every outcome lands in asapp_metadata.asapp_metadata_push_log, which the
next plan reads: an acknowledged item is not sent again while its content is unchanged, any other is.

Why not dlt's @dlt.destination: it retries a failed batch about once a second with no back-off, leaves a package
pending after a terminal error (re-sending it next run) and leaves idempotency to the caller.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from dlt.common.configuration import resolve_configuration

from loaders import runtime
from loaders.asapp_metadata import plan, schema, settings
from loaders.asapp_metadata.client import ACKNOWLEDGED, MetadataClient, Outcome, PushError
from loaders.run_lock import locked

log = logging.getLogger(__name__)

PIPELINE = "asapp_metadata"
LOG_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("external_conversation_id", pa.string()),
        ("external_customer_id", pa.string()),
        ("content_hash", pa.string()),
        ("run_id", pa.string()),
        ("batch_id", pa.string()),
        ("http_status", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("pushed_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass
class PushStats:
    rows: int = 0
    unchanged: int = 0  # acknowledged before, with the same content
    invalid: int = 0  # refused by the item schema: not sent
    sent: int = 0
    accepted: int = 0  # acknowledged (accepted or already persisted)
    failed: int = 0  # sent, not acknowledged: sent again by the next push
    rejected: int = 0  # of failed: refused by the API
    unknown: int = 0  # of failed: the answer did not say
    batches: int = 0
    to_send: int = 0  # valid new, changed or owed rows (in a dry run, what would be sent)
    dry_run_items: list[dict[str, Any]] = field(default_factory=list)  # the first few
    errors: list[str] = field(default_factory=list)  # a sample of reasons, for the summary


class _Log:
    """Push log rows not yet handed to dlt, as Arrow tables: a batch's rows cost no Python object each."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.parts: list[pa.Table] = []
        self.rows = 0

    def add(self, items: pa.Table, batch_id: str | None, outcomes: list[Outcome], at: datetime) -> None:
        """items: rows of the plan (plan.ITEM_COLUMNS), with their outcomes in order."""
        rows = items.num_rows
        if outcomes.count(outcomes[0]) == rows:  # one outcome for the batch (a list of one object: quick to count)
            values = [[value] * rows for value in outcomes[0]]
        else:
            values = [list(column) for column in zip(*outcomes, strict=True)]
        status, http_status, error = values
        same = {
            name: pa.repeat(pa.scalar(v, LOG_SCHEMA.field(name).type), rows)
            for name, v in (("run_id", self.run_id), ("batch_id", batch_id), ("pushed_at", at))
        }
        columns = {
            **{name: items[name] for name in LOG_SCHEMA.names[:4]},
            **same,
            "http_status": pa.array(http_status, pa.int64()),
            "status": pa.array(status, pa.string()),
            "error": pa.array(error, pa.string()),
        }
        self.parts.append(pa.table([columns[name] for name in LOG_SCHEMA.names], schema=LOG_SCHEMA))
        self.rows += rows

    def __len__(self) -> int:
        return self.rows

    def drain(self) -> pa.Table:
        table = pa.concat_tables([LOG_SCHEMA.empty_table(), *self.parts])
        self.parts, self.rows = [], 0
        return table


@dataclass
class _Run:
    stats: PushStats
    log: _Log
    on_progress: Callable[[int, int], None] | None
    dry_run: bool
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    stop: threading.Event = field(default_factory=threading.Event)
    failure: list[BaseException] = field(default_factory=list)

    def note(self, items: pa.Table, errors: list[str]) -> None:
        """A sample of the reasons, for the summary: the log has them all."""
        keys = zip(
            items["external_conversation_id"].to_pylist(), items["external_customer_id"].to_pylist(), strict=True
        )
        for (conversation, customer), error in zip(keys, errors, strict=True):
            if error and len(self.stats.errors) < 10:
                self.stats.errors.append(f"{conversation}/{customer}: {error}")

    def record(self, batch: pa.Table, outcomes: list[Outcome]) -> None:
        stats = self.stats
        stats.batches += 1
        self.log.add(batch, f"{self.log.run_id}-{stats.batches}", outcomes, datetime.now(UTC))
        same = outcomes.count(outcomes[0]) == len(outcomes)
        counts = Counter({outcomes[0].status: len(outcomes)} if same else (o.status for o in outcomes))
        acknowledged = sum(counts[status] for status in ACKNOWLEDGED)
        stats.sent += batch.num_rows
        stats.accepted += acknowledged
        stats.failed += batch.num_rows - acknowledged
        stats.rejected += counts["rejected"]
        stats.unknown += counts["unknown"]
        if acknowledged < batch.num_rows and len(stats.errors) < 10:
            self.note(batch, [o.error if o.status not in ACKNOWLEDGED else "" for o in outcomes])


def _probe(pipeline: Any) -> tuple[int, str | None]:
    """The mart's row count, and the push log's name once it exists (not before the first push)."""
    engine = runtime.target()
    with pipeline.sql_client() as client:
        try:
            [(count,)] = client.execute_sql(f"select count(*) from {plan.mart(engine, settings.MART)}")
            client.execute_sql(f"select 1 from {plan.mart(engine, settings.MART_ATTRIBUTES)} where 1 = 0")
        except Exception as e:
            raise PushError(f"cannot read marts.{settings.MART}: run `elt build` first ({type(e).__name__})") from e
        table = client.make_qualified_table_name(settings.LOG_TABLE)
        try:
            client.execute_sql(f"select 1 from {table} where 1 = 0")
        except Exception:
            return int(count), None
    return int(count), table


@locked(PIPELINE, "elt push")
def push(dry_run: bool = False, on_progress: Callable[[int, int], None] | None = None) -> PushStats:
    """Push the new, changed and owed customer_metadata rows; log every outcome. on_progress(rows checked,
    mart rows). The first Ctrl-C sends no further batch; those in flight are answered and logged, then
    KeyboardInterrupt is raised; a second Ctrl-C stops at once."""
    pipeline = runtime.pipeline(PIPELINE, settings.LOG_DATASET)
    rows, log_table = _probe(pipeline)
    query = plan.sql(runtime.target(), log_table)
    run = _Run(PushStats(rows=rows), _Log(uuid.uuid4().hex), on_progress, dry_run)
    if dry_run:
        with pipeline.sql_client() as client, plan.read(client, query) as batches:
            for _ in _batches(run, plan.ahead(map(_check, batches))):
                pass
        return run.stats
    with runtime.frozen_heap(), _ctrl_c_stops(run.stop):
        # dlt pulls the log parts from _sending, so its own setup runs before the first request, and the log is
        # written whatever stops the push: _sending ends normally and the error is raised here
        pipeline.run(
            _sending(run, pipeline, query),
            table_name=settings.LOG_TABLE,
            write_disposition="append",
            loader_file_format="parquet",  # as dicts, dlt's normalizer and INSERT ... VALUES took ~4.5 s/20,000
        )
    if run.failure:
        raise run.failure[0]
    if run.stop.is_set():
        raise KeyboardInterrupt
    return run.stats


def _sending(run: _Run, pipeline: Any, query: str) -> Iterator[pa.Table]:
    """The one loop: batches go to the pool as they are read, at most CONCURRENT_REQUESTS in flight, and are
    recorded in the order they were sent; the log goes to dlt in parts as it grows."""
    client: MetadataClient | None = None  # made on the first batch: with nothing to send, no API settings needed
    in_flight: deque[tuple[pa.Table, Future[list[Outcome]]]] = deque()
    try:
        with (
            ThreadPoolExecutor(settings.CONCURRENT_REQUESTS, "asapp-push") as pool,
            pipeline.sql_client() as sql_client,
            plan.read(sql_client, query) as planned,
        ):
            for batch in _batches(run, plan.ahead(map(_check, planned))):
                if run.stop.is_set():
                    break
                if batch.num_rows:
                    client = client or MetadataClient(_api())
                    ids, wires = batch["event_id"].to_pylist(), batch["wire"].to_pylist()
                    in_flight.append((batch, pool.submit(client.send, ids, wires)))
                if len(in_flight) == settings.CONCURRENT_REQUESTS:
                    sent, answer = in_flight.popleft()
                    run.record(sent, answer.result())
                if len(run.log) >= settings.LOG_PART_ROWS:
                    yield run.log.drain()
            while in_flight:
                sent, answer = in_flight.popleft()
                run.record(sent, answer.result())
    except Exception as e:  # a refused credential, the warehouse: the batches in flight are still logged
        run.failure.append(e)
    except KeyboardInterrupt as e:  # raised by on_progress, or a second Ctrl-C
        run.failure.append(e)
    for sent, answer in in_flight:
        if answer.exception() is None:
            run.record(sent, answer.result())
    yield run.log.drain()


@dataclass
class _Part:
    """A part of the plan, checked."""

    rows: int
    unchanged: int  # settled rows, acknowledged before
    settled_invalid: int  # settled rows, refused locally before
    valid: pa.Table  # the items to send (plan.ITEM_COLUMNS)
    refused: pa.Table  # the items the item schema refuses, with their reasons
    reasons: list[str]


def _check(record: pa.RecordBatch) -> _Part:
    """Count a part's settled rows and check its items against the spec's item schema: the whole part at once (one
    call into jsonschema-rs), each item only when one of them is refused. It touches no state: it runs a part ahead,
    in the thread that reads the plan."""
    settled = pc.equal(record["state"], "settled")
    settled_invalid = int(pc.sum(pc.and_(settled, pc.equal(record["last_status"], "invalid"))).as_py() or 0)
    unchanged = int(pc.sum(settled).as_py() or 0) - settled_invalid
    items = pa.Table.from_batches([record.filter(pc.invert(settled))]).select(plan.ITEM_COLUMNS)
    wires = items["wire"].to_pylist()
    try:
        if schema.items_check().is_valid(orjson.loads("[" + ",".join(wires) + "]")):
            return _Part(record.num_rows, unchanged, settled_invalid, items, items.slice(0, 0), [])
    except orjson.JSONDecodeError:
        pass
    values = [_json(wire) for wire in wires]
    ok = [schema.item_check().is_valid(value) for value in values]
    reasons = ["; ".join(schema.reasons(value)) for value, good in zip(values, ok, strict=True) if not good]
    keep = pa.array(ok, pa.bool_())
    return _Part(
        record.num_rows, unchanged, settled_invalid, items.filter(keep), items.filter(pc.invert(keep)), reasons
    )


def _json(wire: str) -> Any:
    try:
        return orjson.loads(wire)
    except orjson.JSONDecodeError:  # the item schema refuses it, as "not of type object"
        return None


def _batches(run: _Run, parts: Iterator[_Part]) -> Iterator[pa.Table]:
    """The valid items to send in batches of BATCH_SIZE (only the last may be short); settled rows counted,
    refused ones logged with their reasons. An empty batch after each part lets the caller hand the log on even
    when no item is to be sent (a mart of refused rows)."""
    stats, checked = run.stats, 0
    pending: list[pa.Table] = []
    for part in parts:
        stats.unchanged += part.unchanged
        stats.invalid += part.settled_invalid + part.refused.num_rows
        stats.to_send += part.valid.num_rows
        if part.reasons:
            run.note(part.refused, part.reasons)
            if not run.dry_run:
                outcomes = [Outcome("invalid", None, reason) for reason in part.reasons]
                run.log.add(part.refused, None, outcomes, run.started)
        if run.dry_run and len(stats.dry_run_items) < settings.DRY_RUN_SAMPLE:
            wires = part.valid["wire"][: settings.DRY_RUN_SAMPLE - len(stats.dry_run_items)].to_pylist()
            stats.dry_run_items += [orjson.loads(wire) for wire in wires]
        pending.append(part.valid)
        while sum(table.num_rows for table in pending) >= settings.BATCH_SIZE:
            table = pa.concat_tables(pending)
            yield table.slice(0, settings.BATCH_SIZE)
            pending = [table.slice(settings.BATCH_SIZE)]
        checked += part.rows
        if run.on_progress:
            run.on_progress(checked, stats.rows)
        yield part.valid.slice(0, 0)
    if rest := sum(table.num_rows for table in pending):
        yield pa.concat_tables(pending).slice(0, rest)


def _api() -> settings.AsappApiConfiguration:
    """The API's settings, resolved by dlt; a missing one is dlt's ConfigFieldMissingException, which the CLI
    words as the settings to set."""
    return resolve_configuration(settings.AsappApiConfiguration(), sections=("asapp_api",))


@contextmanager
def _ctrl_c_stops(stop: threading.Event) -> Iterator[None]:
    """While in the block, a first Ctrl-C sets `stop`, a second raises KeyboardInterrupt. Outside the main thread
    (where Python takes no signals), Ctrl-C is left as it is."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning("interrupted: no further batch is sent; the answers to those in flight are awaited and logged")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

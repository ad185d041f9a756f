"""The load jobs behind `elt load`: build the source, finish any pending package, run, report."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loaders import contract, runtime
from loaders.asapp_sftp import FeedStats, LoadStats, asapp_sftp
from loaders.asapp_sftp.settings import PARTITIONS_TABLE
from loaders.export_docs import load_export_docs
from loaders.export_docs.diff import Change, diff, is_breaking
from loaders.export_docs.model import ExportDocs, ExportDocsError
from loaders.run_lock import locked

if TYPE_CHECKING:
    from loaders.apsis import ApsisStats

log = logging.getLogger(__name__)

ASAPP_PIPELINE = "asapp_sftp"
ASAPP_DATASET = contract.RAW_SCHEMA


RowKey = Callable[[str], Sequence[str] | None]  # table -> columns unique per row (None: not checked)


def finish_pending(pipeline: Any, row_key: RowKey | None = None) -> None:
    """A package extracted by an interrupted run is loaded before anything new is read (nothing lost).

    dlt's append loads are at least once: a process killed after a job's insert committed but before the job was
    marked done runs that job again. With row_key (the columns unique per row of each table), the rows of the
    packages finished here are then made unique again, so every row lands exactly once."""
    if not pipeline.has_pending_data:
        return
    load_ids = [*pipeline.list_extracted_load_packages(), *pipeline.list_normalized_load_packages()]
    log.warning("a previous run left data that was extracted but not loaded: loading it first")
    pipeline.normalize()
    pipeline.load()
    if row_key and load_ids:
        dedupe_loads(pipeline, load_ids, row_key)


def dedupe_loads(pipeline: Any, load_ids: list[str], row_key: RowKey) -> None:
    """Delete the second and later copies of rows (same row_key) that the packages load_ids inserted."""
    engine = runtime.target()
    row_id = {"duckdb": "rowid", "motherduck": "rowid", "postgres": "ctid"}.get(engine)
    if row_id is None:
        log.warning("cannot check %s for rows loaded twice after an interruption on %s", load_ids, engine)
        return
    ids = ", ".join(f"'{i}'" for i in load_ids)
    with pipeline.sql_client() as client:
        for table in pipeline.default_schema.data_tables():
            columns = table.get("columns", {})
            key = [c for c in row_key(table["name"]) or () if c in columns]
            if not key or "_dlt_load_id" not in columns:
                continue
            name = client.make_qualified_table_name(table["name"])
            try:
                client.execute_sql(
                    f"delete from {name} where _dlt_load_id in ({ids}) and {row_id} not in ("
                    f"select min({row_id}) from {name} where _dlt_load_id in ({ids}) "
                    f"group by {', '.join(key)})"
                )
            except Exception as e:  # a table the interrupted packages never created
                log.debug("no duplicate check for %s: %s", table["name"], e)


def asapp_row_key(table: str) -> Sequence[str]:
    """A raw feed row is the line of a file of a partition; a reject too; a partition load is its load time."""
    if table == "_rejects":
        return ("partition", "file", "line")
    if table == PARTITIONS_TABLE:
        return ("feed", "partition", "loaded_at")
    return (contract.VERSION.name, contract.PARTITION_AT.name, contract.FILE.name, contract.LINE.name)


APSIS_ROW_KEYS = {
    "profiles": ("export_id", "profile_key"),
    "profile_attributes": ("export_id", "profile_key", "section_id", "attribute_id"),
    "profile_tags": ("export_id", "profile_key", "section_id", "tag_id"),
    "events": ("export_id", "profile_key", "section_id", "event_index"),
    "exports": ("export_id",),
}


@cache
def _read_export_docs(path: Path, mtime_ns: int) -> ExportDocs:
    return load_export_docs(path)


def project_export_docs() -> ExportDocs:
    """The project's export_docs.yaml, parsed once per process (again only if the file changed)."""
    path = runtime.project_dir() / "export_docs.yaml"
    try:
        mtime_ns = path.stat().st_mtime_ns
    except FileNotFoundError:
        mtime_ns = 0  # load_export_docs says it is missing
    return _read_export_docs(path, mtime_ns)


def raw_type(column: Any) -> str:
    """The canonical type (loaders/export_docs/model.py) of a raw column as dlt's schema holds it."""
    data_type = column.get("data_type")
    if data_type == "bigint":
        return "integer" if column.get("precision") == 32 else "bigint"
    if data_type == "decimal" and column.get("precision") is not None:
        return f"numeric({column['precision']},{column.get('scale') or 0})"
    return {"double": "double", "bool": "boolean", "timestamp": "timestamp", "date": "date"}.get(data_type, "varchar")


class ColumnTypes:
    """feed -> {column: canonical type} the load casts each value to: the type the raw table already has for the
    column (a raw column never changes type: one created as text stays text), else the type documented in the
    project's export_docs.yaml (read on the first .get()); any other column is text."""

    def __init__(self, pipeline: Any) -> None:
        self._pipeline = pipeline
        self._documented: dict[str, dict[str, str]] | None = None

    def get(self, feed: str) -> dict[str, str] | None:
        if self._documented is None:
            self._documented = {f.name: {c.name: c.type for c in f.columns} for f in project_export_docs()}
        types = dict(self._documented.get(feed) or {})
        schema = self._pipeline.default_schema if self._pipeline.default_schema_name else None
        if schema is not None and feed in schema.tables:
            for name, column in schema.tables[feed].get("columns", {}).items():
                if column.get("data_type") and not name.startswith("_"):
                    types[name] = raw_type(column)
        return types or None

    def version(self, feed: str) -> str | None:
        """The feed's version as export_docs.yaml documents it (staging takes its rows only), None when undocumented."""
        feed_docs = project_export_docs().feeds.get(feed)
        return feed_docs.version if feed_docs else None


class SchemaDriftError(RuntimeError):
    """The server's export_docs.yaml differs from the project's (with --strict)."""


def check_export_docs(stats: LoadStats, strict: bool) -> list[Change]:
    """Diff the server's export_docs.yaml (when it has one) against the project's; warn, or fail when strict.

    The server's file is read as untrusted input (read_untrusted): one that cannot be read, or is invalid or hostile,
    is a warning and the load goes on with the project's file (an error with strict). It is kept beside the DuckDB
    file either way, for `elt schema-diff` or for ASAPP."""
    from loaders.export_docs.untrusted import read_untrusted

    if stats.export_docs_problem and strict:  # found, but not downloaded (larger than untrusted.MAX_BYTES)
        raise SchemaDriftError(f"the server's {stats.export_docs_problem}")
    if stats.export_docs is None:
        return []
    kept = runtime.duckdb_path().parent / "export_docs.server.yaml"
    project = project_export_docs()
    changes: list[Change] = []
    problem = ""
    try:
        changes = diff(project, read_untrusted(stats.export_docs))
    except ExportDocsError as e:
        problem = str(e)
    if problem:  # raised or logged here, not in the except clause: the CLI shows this message, not the inner one
        try:
            shutil.copyfile(stats.export_docs, kept)
        except OSError:
            kept_note = ""  # a file that cannot be read cannot be kept either
        else:
            kept_note = f" (kept as {kept})"
        stats.export_docs.unlink(missing_ok=True)
        message = f"the server's export_docs.yaml cannot be read{kept_note}: {problem}"
        if strict:
            raise SchemaDriftError(message)
        log.warning("%s; the load goes on with the project's export_docs.yaml", message)
        return []
    if changes:
        shutil.copyfile(stats.export_docs, kept)
        summary = "; ".join(f"{c.feed}: {c.kind} {c.detail}" for c in changes[:10])
        more = f" (and {len(changes) - 10} more)" if len(changes) > 10 else ""
        message = (
            f"the server's export_docs.yaml differs from the project's in {len(changes)} way(s)"
            f"{' (breaking)' if is_breaking(changes) else ''}: {summary}{more}. Review with "
            f"`elt schema-diff export_docs.yaml {kept}`, then copy it over export_docs.yaml and run `elt generate`."
        )
        if strict:
            raise SchemaDriftError(message)
        log.warning("%s", message)
    stats.export_docs.unlink(missing_ok=True)
    return changes


def _feeds_state(pipeline: Any) -> dict[str, Any]:
    """The asapp_sftp source's state per feed (loaded, waiting, max_dt), as the last run left it."""
    feeds: dict[str, Any] = pipeline.state.get("sources", {}).get("asapp_sftp", {}).get("feeds", {})
    return feeds


def _raw_feed_tables(pipeline: Any) -> list[str]:
    """The feed tables of asapp_raw known to dlt's schema (not _rejects, not dlt's own)."""
    if not pipeline.default_schema_name:
        return []
    return [
        t["name"]
        for t in pipeline.default_schema.data_tables()
        if not t["name"].startswith("_") and "_asapp_partition_at" in t.get("columns", {})
    ]


class History:
    """What the raw tables hold, asked by the source per feed (see asapp_sftp's `history`): the destination is the
    truth of what loaded, since dlt's local state can lag it when a process is killed between committing a load
    package and saving that state. Read once per feed and run, and only for the feeds that are listed."""

    def __init__(self, pipeline: Any) -> None:
        self._pipeline = pipeline
        self._feeds_state = _feeds_state(pipeline)
        self._tables = set(_raw_feed_tables(pipeline))
        self._landed: dict[tuple[str, bool], set[tuple[str, datetime]]] = {}
        self._fingerprints: dict[str, dict[str, str]] | None = None

    def landed(self, feed: str, whole: bool) -> set[tuple[str, datetime]]:
        """{(version, partition time)} in the feed's raw table: every dt (whole), or from the last loaded dt
        minus a generous margin over the lookback on. The windows of every feed are read at the first call, on one
        connection (a run with nothing new asks for all of them)."""
        if not self._landed:
            self._landed = {(f, False): set() for f in self._tables}
            self._query_landed(sorted(self._tables), whole=False)
        if (feed, whole) not in self._landed:
            self._query_landed([feed], whole)
        return self._landed.get((feed, whole), set())

    def _query_landed(self, feeds: list[str], whole: bool) -> None:
        with self._pipeline.sql_client() as client:
            for feed in feeds:
                if feed not in self._tables:
                    continue
                max_dt = self._feeds_state.get(feed, {}).get("max_dt")
                where = ""
                if max_dt and not whole:
                    with contextlib.suppress(ValueError):  # a state an older version wrote: read the whole table
                        where = f" where _asapp_partition_at >= '{date.fromisoformat(max_dt) - timedelta(days=31)}'"
                try:
                    with client.execute_query(
                        f"select distinct _asapp_version, _asapp_partition_at "
                        f"from {client.make_qualified_table_name(feed)}" + where
                    ) as cursor:
                        self._landed[feed, whole] = {(str(v), at.replace(tzinfo=None)) for v, at in cursor.fetchall()}
                except Exception:  # in the schema but not created yet (nothing of it was ever loaded)
                    self._landed[feed, whole] = set()

    def fingerprints(self, feed: str) -> dict[str, str]:
        """partition key -> fingerprint of its last load (asapp_raw._partitions), for a rescan."""
        if self._fingerprints is None:
            self._fingerprints = {}
            table = PARTITIONS_TABLE
            schema = self._pipeline.default_schema if self._pipeline.default_schema_name else None
            if schema is not None and table in schema.tables:
                with self._pipeline.sql_client() as client:
                    try:
                        with client.execute_query(
                            f"select feed, partition, fingerprint, loaded_at "
                            f"from {client.make_qualified_table_name(table)} order by loaded_at"
                        ) as cursor:
                            for name, key, fp, _ in cursor.fetchall():
                                self._fingerprints.setdefault(name, {})[key] = fp
                    except Exception:  # in the schema but not created yet
                        pass
        return self._fingerprints.get(feed, {})


@locked(ASAPP_PIPELINE, "elt load asapp")
def load_asapp(
    feeds: Sequence[str] | None = None,
    since: str | None = None,
    strict: bool = False,
    on_progress: Callable[[str, FeedStats], None] | None = None,
    max_bad_lines: int | None = None,
    rescan: bool = False,
) -> LoadStats:
    """SFTP feeds -> asapp_raw.<feed>. Returns the run's counts.

    With strict, a server export_docs.yaml that differs from the project's stops the run before anything loads.
    With rescan, every dt of the feeds is listed: late partitions and partitions re-exported since their load are
    loaded (a run also rescans a feed by itself every SOURCES__ASAPP_SFTP__RESCAN_HOURS).
    """
    pipeline = runtime.pipeline(ASAPP_PIPELINE, ASAPP_DATASET)
    finish_pending(pipeline, row_key=asapp_row_key)
    stats = LoadStats(on_progress=on_progress)
    options: dict[str, Any] = {"feeds": list(feeds) if feeds else None, "since": since, "stats": stats}
    if max_bad_lines is not None:  # else the configured (or default) value
        options["max_bad_lines"] = max_bad_lines
    if rescan:
        options["rescan"] = True
    options["column_types"] = ColumnTypes(pipeline)
    with runtime.frozen_heap():
        _run_asapp(pipeline, options, stats, strict)
    return stats


def _run_asapp(pipeline: Any, options: dict[str, Any], stats: LoadStats, strict: bool) -> None:
    """The source, run again while a feed has more ready partitions than one run takes (max_partitions)."""
    first = True
    while first or any(s.more for s in stats.feeds.values()):
        # a long backfill goes in chunks of max_partitions per feed, each committed before the next is read
        for s in stats.feeds.values():
            s.more = False
        # read again for each chunk: the chunk before it is committed, and dlt's state forgets old partitions
        source = asapp_sftp(**options, history=History(pipeline))
        if first:
            stats.schema_changes = check_export_docs(stats, strict)
            first = False
        elif stats.export_docs is not None:
            stats.export_docs.unlink(missing_ok=True)  # checked on the first chunk already
        info = pipeline.run(source, loader_file_format="parquet")
        log.info("%s", info)


APSIS_PIPELINE = "apsis"
APSIS_DATASET = contract.APSIS_RAW_SCHEMA


@locked(APSIS_PIPELINE, "elt load apsis")
def load_apsis(start_at: str | None = None, end_at: str | None = None) -> ApsisStats:
    """APSIS One export -> apsis_raw. Returns the run's counts."""
    from loaders.apsis import ApsisStats, apsis  # not imported by `elt load asapp` (~0.1 s of start-up)

    pipeline = runtime.pipeline(APSIS_PIPELINE, APSIS_DATASET)
    finish_pending(pipeline, row_key=APSIS_ROW_KEYS.get)
    stats = ApsisStats()
    info = pipeline.run(apsis(start_at=start_at, end_at=end_at, stats=stats), loader_file_format="parquet")
    log.info("%s", info)
    return stats


@dataclass(frozen=True)
class FeedStatus:
    feed: str
    rows: int
    latest_partition: datetime | None
    last_loaded_at: datetime | None
    waiting: int
    sync_time: str
    fresh: bool | None  # None: never loaded
    rescanned_at: str | None = None  # the last full listing of the feed's dt folders
    not_loaded: int = 0  # complete or waiting partitions that listing found and did not load (see last_rescan)
    restated: int = 0  # partitions that listing loaded again, re-exported since their load


def asapp_status() -> list[FeedStatus]:
    """What is loaded per feed: rows, latest partition, last load, partitions waiting, freshness vs sync_time."""
    docs = project_export_docs()
    pipeline = runtime.pipeline(ASAPP_PIPELINE, ASAPP_DATASET)
    state = _feeds_state(pipeline)
    loaded = set(_raw_feed_tables(pipeline))
    now = datetime.now(UTC).replace(tzinfo=None)
    result = []
    with pipeline.sql_client() as client:
        for feed in sorted(set(docs.feeds) | loaded):
            sync = docs.feeds[feed].sync_time if feed in docs.feeds else "?"
            rescan = state.get(feed, {}).get("last_rescan") or {}
            rescanned_at: str | None = rescan.get("at")
            not_loaded, restated = int(rescan.get("not_loaded_count", 0)), int(rescan.get("restated_count", 0))
            if feed not in loaded:
                waiting = len(state.get(feed, {}).get("waiting", {}))
                result.append(FeedStatus(feed, 0, None, None, waiting, sync, None, rescanned_at, not_loaded, restated))
                continue
            table = client.make_qualified_table_name(feed)
            with client.execute_query(
                f"select count(*), max(_asapp_partition_at), max(_asapp_loaded_at) from {table}"
            ) as cursor:
                rows, latest, last_loaded = cursor.fetchone()
            # fresh while its latest partition is younger than the source's warn_after
            limit = contract.FRESHNESS[contract.cadence(sync)].warn_after
            fresh = latest is not None and now - latest.replace(tzinfo=None) <= limit
            waiting = len(state.get(feed, {}).get("waiting", {}))
            result.append(
                FeedStatus(
                    feed, int(rows), latest, last_loaded, waiting, sync, fresh, rescanned_at, not_loaded, restated
                )
            )
    return result


def staging_counts(feeds: Sequence[str]) -> dict[str, tuple[int, int]]:
    """feed -> (raw rows, staged rows): what dedup removed, for the run summary."""
    pipeline = runtime.pipeline(ASAPP_PIPELINE, ASAPP_DATASET)
    counts = {}
    with pipeline.sql_client() as client:
        for feed in feeds:
            try:
                with client.execute_query(
                    f"select (select count(*) from {client.make_qualified_table_name(feed)}), "
                    f"(select count(*) from {contract.STAGING_SCHEMA}.stg_asapp__{feed})"
                ) as cursor:
                    raw, staged = cursor.fetchone()
            except Exception:  # a feed without a staging model (not in export_docs.yaml)
                continue
            counts[feed] = (int(raw), int(staged))
    return counts

"""What the raw ASAPP tables and dlt's state hold: the partitions loaded, for the source to skip and to rescan."""

from __future__ import annotations

import contextlib
from datetime import date, datetime, timedelta
from typing import Any

from loaders.asapp_sftp.settings import PARTITIONS_TABLE


def feeds_state(pipeline: Any) -> dict[str, Any]:
    """The asapp_sftp source's state per feed (loaded, waiting, max_dt), as the last run left it."""
    feeds: dict[str, Any] = pipeline.state.get("sources", {}).get("asapp_sftp", {}).get("feeds", {})
    return feeds


def raw_feed_tables(pipeline: Any) -> list[str]:
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
        self._feeds_state = feeds_state(pipeline)
        self._tables = set(raw_feed_tables(pipeline))
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
        feeds = [f for f in feeds if f in self._tables]
        if not feeds:
            return  # no connection opened for nothing (a first run opened one per feed)
        with self._pipeline.sql_client() as client:
            for feed in feeds:
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

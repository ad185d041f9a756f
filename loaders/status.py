"""`elt status` and the run summary's staging counts: what the warehouse holds per feed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from loaders import contract, runtime
from loaders.contract import ASAPP_PIPELINE, RAW_SCHEMA
from loaders.export_docs.project import project_export_docs
from loaders.history import feeds_state, raw_feed_tables


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
    pipeline = runtime.pipeline(ASAPP_PIPELINE, RAW_SCHEMA)
    state = feeds_state(pipeline)
    loaded = set(raw_feed_tables(pipeline))
    now = datetime.now(UTC).replace(tzinfo=None)
    result = []
    with pipeline.sql_client() as client:
        for feed in sorted(set(docs.feeds) | loaded):
            feed_state = state.get(feed, {})
            rescan = feed_state.get("last_rescan") or {}
            status = FeedStatus(  # as for a feed never loaded
                feed=feed,
                rows=0,
                latest_partition=None,
                last_loaded_at=None,
                waiting=len(feed_state.get("waiting", {})),
                sync_time=docs.feeds[feed].sync_time if feed in docs.feeds else "?",
                fresh=None,
                rescanned_at=rescan.get("at"),
                not_loaded=int(rescan.get("not_loaded_count", 0)),
                restated=int(rescan.get("restated_count", 0)),
            )
            if feed in loaded:
                with client.execute_query(
                    f"select count(*), max({contract.PARTITION_AT.name}), max({contract.LOADED_AT.name}) "
                    f"from {client.make_qualified_table_name(feed)}"
                ) as cursor:
                    rows, latest, last_loaded = cursor.fetchone()
                # fresh while its latest partition is younger than the source's warn_after
                limit = contract.FRESHNESS[contract.cadence(status.sync_time)].warn_after
                fresh = latest is not None and now - latest.replace(tzinfo=None) <= limit
                status = replace(
                    status, rows=int(rows), latest_partition=latest, last_loaded_at=last_loaded, fresh=fresh
                )
            result.append(status)
    return result


def staging_counts(feeds: Sequence[str]) -> dict[str, tuple[int, int]]:
    """feed -> (raw rows, staged rows): what dedup removed, for the run summary."""
    pipeline = runtime.pipeline(ASAPP_PIPELINE, RAW_SCHEMA)
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

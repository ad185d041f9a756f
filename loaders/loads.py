"""The load jobs behind `elt load`: build the source, finish any pending package, run, report."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from loaders import contract, runtime
from loaders.asapp_sftp import FeedStats, LoadStats, asapp_sftp
from loaders.asapp_sftp.transports import choose, open_transport
from loaders.column_types import ColumnTypes
from loaders.contract import APSIS_PIPELINE, ASAPP_PIPELINE
from loaders.history import History
from loaders.recovery import APSIS_ROW_KEYS, asapp_row_key, finish_pending
from loaders.run_lock import locked
from loaders.schema_drift import check_export_docs

if TYPE_CHECKING:
    from loaders.apsis import ApsisStats

log = logging.getLogger(__name__)

ASAPP_DATASET = contract.RAW_SCHEMA
APSIS_DATASET = contract.APSIS_RAW_SCHEMA


@locked(ASAPP_PIPELINE, "elt load asapp")
def load_asapp(
    feeds: Sequence[str] | None = None,
    since: str | None = None,
    strict: bool = False,
    on_progress: Callable[[str, FeedStats], None] | None = None,
    max_bad_lines: int | None = None,
    rescan: bool = False,
    transport: str | None = None,
) -> LoadStats:
    """ASAPP feeds -> asapp_raw.<feed>, through `transport` (sftp, file-exporter, mirror; default: the one
    configured, see transports.choose). Returns the run's counts.

    With strict, a server export_docs.yaml that differs from the project's stops the run before anything loads.
    With rescan, every dt of the feeds is listed: late partitions and partitions re-exported since their load are
    loaded (a run also rescans a feed by itself every SOURCES__ASAPP_SFTP__RESCAN_HOURS).
    """
    name = choose(transport)  # before anything else: several transports configured is one line asking for --from
    pipeline = runtime.pipeline(ASAPP_PIPELINE, ASAPP_DATASET)
    finish_pending(pipeline, row_key=asapp_row_key)
    stats = LoadStats(on_progress=on_progress, source=name)
    options: dict[str, Any] = {"feeds": list(feeds) if feeds else None, "since": since, "stats": stats}
    if max_bad_lines is not None:  # else the configured (or default) value
        options["max_bad_lines"] = max_bad_lines
    if rescan:
        options["rescan"] = True
    options["column_types"] = ColumnTypes(pipeline)
    with runtime.frozen_heap():
        _run_asapp(pipeline, options, stats, strict, name)
    return stats


def _run_asapp(pipeline: Any, options: dict[str, Any], stats: LoadStats, strict: bool, transport: str) -> None:
    """The source, run again while a feed has more ready partitions than one run takes (max_partitions)."""
    first = True
    while first or any(s.more for s in stats.feeds.values()):
        # a long backfill goes in chunks of max_partitions per feed, each committed before the next is read
        for s in stats.feeds.values():
            s.more = False
        # read again for each chunk: the chunk before it is committed, and dlt's state forgets old partitions
        source = asapp_sftp(**options, transport=open_transport(transport), history=History(pipeline))
        if first:
            stats.schema_changes = check_export_docs(stats, strict)
            first = False
        elif stats.export_docs is not None:
            stats.export_docs.unlink(missing_ok=True)  # checked on the first chunk already
        info = pipeline.run(source, loader_file_format="parquet")
        log.info("%s", info)


@locked(APSIS_PIPELINE, "elt load apsis")
def load_apsis(start_at: str | None = None, end_at: str | None = None) -> ApsisStats:
    """APSIS One export -> apsis_raw. Returns the run's counts."""
    from loaders.apsis import ApsisStats, apsis  # not imported by `elt load asapp`: less start-up

    pipeline = runtime.pipeline(APSIS_PIPELINE, APSIS_DATASET)
    finish_pending(pipeline, row_key=APSIS_ROW_KEYS.get)
    stats = ApsisStats()
    info = pipeline.run(apsis(start_at=start_at, end_at=end_at, stats=stats), loader_file_format="parquet")
    log.info("%s", info)
    return stats

"""The load jobs behind `elt load`: build the source, finish any pending package, run, report."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from loaders import runtime
from loaders.asapp_sftp import LoadStats, asapp_sftp

log = logging.getLogger(__name__)

ASAPP_PIPELINE = "asapp_sftp"
ASAPP_DATASET = "asapp_raw"


def finish_pending(pipeline: object) -> None:
    """A package extracted by an interrupted run is loaded before anything new is read (nothing lost)."""
    if getattr(pipeline, "has_pending_data", False):
        log.warning("a previous run left data that was extracted but not loaded: loading it first")
        pipeline.normalize()  # type: ignore[attr-defined]
        pipeline.load()  # type: ignore[attr-defined]


def load_asapp(feeds: Sequence[str] | None = None, since: str | None = None) -> LoadStats:
    """SFTP feeds -> asapp_raw.<feed>. Returns the run's counts."""
    pipeline = runtime.pipeline(ASAPP_PIPELINE, ASAPP_DATASET)
    finish_pending(pipeline)
    stats = LoadStats()
    source = asapp_sftp(feeds=list(feeds) if feeds else None, since=since, stats=stats)
    info = pipeline.run(source, loader_file_format="parquet")
    log.info("%s", info)
    return stats

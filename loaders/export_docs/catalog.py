"""The feed catalog: one row per ASAPP feed of export_docs.yaml (cadence, sync time, version, unique condition,
ordering key, PII and deprecated columns), written by `elt generate` to ``seeds/asapp_feed_catalog.csv``.

`dbt build` loads it as ``seeds.asapp_feed_catalog``, so what ASAPP documents about a feed can be joined in SQL
(e.g. the hourly feeds, or every feed with PII); `elt status` reads the file for its cadence and PII columns.
A CSV has no room for the "generated" line of the other generated files: seeds/_seeds.yml says so instead, and
`elt generate --check` compares the file like the others.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from loaders.export_docs.model import ExportDocs, Feed

CATALOG_PATH = Path("seeds/asapp_feed_catalog.csv")
COLUMNS = (
    "feed",
    "cadence",
    "sync_time",
    "feed_version",
    "unique_condition",
    "ordering_key",
    "pii_columns",
    "deprecated_columns",
    "is_deprecated",
)
LIST_SEPARATOR = " "  # column names are identifiers: a space separates them in one CSV field


@dataclass(frozen=True)
class CatalogFeed:
    feed: str
    cadence: str  # hourly or daily
    sync_time: str
    feed_version: str
    unique_condition: tuple[str, ...]
    ordering_key: str
    pii_columns: tuple[str, ...]
    deprecated_columns: tuple[str, ...]
    is_deprecated: bool


def _row(feed: Feed) -> list[str]:
    return [
        feed.name,
        feed.cadence,
        feed.sync_time,
        feed.version,
        LIST_SEPARATOR.join(feed.unique_key),
        feed.ordering_key,
        LIST_SEPARATOR.join(c.name for c in feed.columns if c.pii),
        LIST_SEPARATOR.join(c.name for c in feed.columns if c.deprecated),
        "true" if feed.deprecated else "false",
    ]


def catalog_csv(docs: ExportDocs) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for feed in sorted(docs, key=lambda f: f.name):
        writer.writerow(_row(feed))
    return buffer.getvalue()


def read_catalog(project_dir: Path) -> dict[str, CatalogFeed]:
    """feed -> its catalog row, from the project's seed file ({} when it was never generated)."""
    path = project_dir / CATALOG_PATH
    if not path.exists():
        return {}
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))

    def names(value: str) -> tuple[str, ...]:
        return tuple(value.split(LIST_SEPARATOR)) if value else ()

    return {
        r["feed"]: CatalogFeed(
            feed=r["feed"],
            cadence=r["cadence"],
            sync_time=r["sync_time"],
            feed_version=r["feed_version"],
            unique_condition=names(r["unique_condition"]),
            ordering_key=r["ordering_key"],
            pii_columns=names(r["pii_columns"]),
            deprecated_columns=names(r["deprecated_columns"]),
            is_deprecated=r["is_deprecated"] == "true",
        )
        for r in rows
    }

"""The facts the loaders, the generated dbt layer and the macros share, defined here once.

Python imports them; `elt generate` renders them into dbt (``macros/asapp_lineage.sql``, the sources' freshness,
the staging models' order), and `elt generate --check` fails when a rendered copy no longer matches. Change a fact
here, never in a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from dlt.common.schema.typing import TColumnSchema, TDataType

# Schemas (dlt datasets and dbt schemas) of the warehouse.
RAW_SCHEMA = "asapp_raw"
APSIS_RAW_SCHEMA = "apsis_raw"
STAGING_SCHEMA = "staging"
MARTS_SCHEMA = "marts"

# dlt pipelines (their state folders, dlt's CLI, the run locks).
ASAPP_PIPELINE = "asapp_sftp"
APSIS_PIPELINE = "apsis"


@dataclass(frozen=True)
class LineageColumn:
    """A column that says where a raw ASAPP row came from, in the type every engine holds it in."""

    name: str
    data_type: TDataType  # dlt's data type; timestamps are UTC without a zone, like the export's own once staged
    doc: str
    staged: bool = True  # carried into the staging model

    @property
    def sql_type(self) -> str:
        """Its type in DuckDB SQL."""
        return "varchar" if self.data_type == "text" else self.data_type

    @property
    def dbt_type(self) -> str:
        """dbt's cross-database macro for its type."""
        return f"dbt.type_{'string' if self.data_type == 'text' else self.data_type}()"

    @property
    def hint(self) -> TColumnSchema:
        """The dlt column hint of the raw table."""
        if self.data_type == "timestamp":
            return {"data_type": self.data_type, "timezone": False}
        return {"data_type": self.data_type}


FEED = LineageColumn("_asapp_feed", "text", "Feed the row was exported in.")
VERSION = LineageColumn("_asapp_version", "text", "Feed version (the `version=` folder) of the export.")
PARTITION_AT = LineageColumn(
    "_asapp_partition_at", "timestamp", "Partition time of the export (`dt=`, `hr=`, `mi=` folders), UTC."
)
FILE = LineageColumn("_asapp_file", "text", "Export file the row was read from.")
SPLIT = LineageColumn(
    "_asapp_split", "bigint", "Split number of the export file (null when the partition is a single file)."
)
LINE = LineageColumn("_asapp_line", "bigint", "Line number of the row in its (decompressed) export file.")
LOADED_AT = LineageColumn("_asapp_loaded_at", "timestamp", "When the loader read the row (UTC).")
SOURCE = LineageColumn(
    "_asapp_source",
    "text",
    "Transport that delivered the row: sftp, file-exporter or mirror (null: loaded over SFTP by an older version).",
    staged=False,
)
UNTYPED = LineageColumn(
    "_asapp_untyped",
    "text",
    "Values that did not cast to their column's type, as a JSON object {column: the value as sent}.",
    staged=False,
)
EXTRA = LineageColumn(
    "_asapp_extra",
    "text",
    "Keys set aside (a lineage name, a second key for one column), as a JSON object {key: the value as sent}.",
    staged=False,
)
DLT_LOAD_ID = LineageColumn("_dlt_load_id", "text", "dlt load id of the load that landed the row.")
RECORD_KEY = "_asapp_record_key"
RECORD_KEY_DOC = "Hash of the feed's unique condition (null-safe): the merge key of this model."

# What the loader writes beside a feed's own columns, in this order (dlt adds _dlt_load_id).
RAW_LINEAGE = (FEED, VERSION, PARTITION_AT, FILE, SPLIT, LINE, LOADED_AT, SOURCE, UNTYPED, EXTRA)
# What a staging model carries after the record key, in this order.
STAGED_LINEAGE = (*(c for c in RAW_LINEAGE if c.staged), DLT_LOAD_ID)

# The insertion order, after the feed's ordering key: the later partition, then, within one partition, its later
# load (a restated partition, loaded again, supersedes its earlier load), then split, file and line.
INSERTION_ORDER = (
    f"{PARTITION_AT.name} desc",
    f"{LOADED_AT.name} desc",
    f"{SPLIT.name} desc nulls last",
    f"{FILE.name} desc",
    f"{LINE.name} desc",
)
INSERTION_COLUMNS = tuple(o.split()[0] for o in INSERTION_ORDER)

Cadence = Literal["hourly", "daily"]


def cadence(sync_time: str) -> Cadence:
    """A feed's cadence from its sync time in export_docs.yaml (`1h`, `24h`, `1d`): hourly when counted in hours."""
    return "hourly" if sync_time.strip().lower().endswith("h") else "daily"


@dataclass(frozen=True)
class Freshness:
    """How long after its last load a delivered feed warns, and errors."""

    warn_after_hours: int
    error_after_hours: int

    @property
    def warn_after(self) -> timedelta:
        return timedelta(hours=self.warn_after_hours)

    def dbt(self) -> dict[str, Any]:
        """The source freshness block of dbt."""
        return {
            "warn_after": {"count": self.warn_after_hours, "period": "hour"},
            "error_after": {"count": self.error_after_hours, "period": "hour"},
        }


# An hourly feed is late after a few hours, a daily one after a day and a half.
FRESHNESS: dict[Cadence, Freshness] = {"hourly": Freshness(3, 12), "daily": Freshness(36, 72)}

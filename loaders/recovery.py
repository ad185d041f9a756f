"""Crash repair: a package an interrupted run extracted is loaded first, and the rows a re-run load job inserted
twice are removed, so every row lands exactly once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from loaders import contract, runtime
from loaders.asapp_sftp.settings import PARTITIONS_TABLE

log = logging.getLogger(__name__)

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
    if engine == "spark":  # dlt's filesystem destination: a job run again rewrites its own file, nothing doubles
        return
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


# A profile's rows repeat in each part of an export split beyond the 75/25 limits (export_part); a reject is its
# item and what was wrong with it (two bad values of one item differ in their text).
APSIS_ROW_KEYS = {
    "profiles": ("export_id", "export_part", "profile_key"),
    "profile_attributes": ("export_id", "export_part", "profile_key", "section_id", "attribute_id"),
    "profile_tags": ("export_id", "export_part", "profile_key", "section_id", "tag_id"),
    "events": ("export_id", "export_part", "profile_key", "section_id", "event_index"),
    "exports": ("export_id",),
    "_rejects": ("export_id", "export_part", "profile_key", "section_id", "item", "error", "raw_text"),
}

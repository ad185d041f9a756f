"""Loads into Postgres on dlt's fast path: parquet files copied by the ADBC driver, every value landed as sent, no
library warning on the console, and an empty Arrow table loads too."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import dlt
import pyarrow as pa
import pytest

from loaders import runtime
from loaders.contract import ASAPP_PIPELINE
from loaders.sandbox.exports import write_partition
from tests.python.helpers import Warehouse, elt, query

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("warehouse", ["postgres"], indirect=True)
def test_elt_load_asapp_copies_parquet_and_prints_no_library_warning(exports: Path, warehouse: Warehouse) -> None:
    write_partition(
        exports,
        "rep_convos",
        T0,
        [
            {
                "issue_id": 1,
                "rep_id": "r1",
                "issue_assigned_ts": "2026-11-01T10:00:00.250000+00:00",
                "cume_cross_talk_seconds": "12.34567",
                "is_ghost_customer": True,
                "handle_time_seconds": 1.5,
                "queue_id": 7,
                "not_documented": "kept as text",
            },
            {"issue_id": 2, "rep_id": "r2", "cume_cross_talk_seconds": None, "is_ghost_customer": False},
        ],
    )
    result = elt("load", "asapp")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    console = result.stdout + result.stderr
    assert "WARNING" not in console.upper() and "adbc" not in console.lower(), console[-2000:]

    trace = dlt.attach(ASAPP_PIPELINE, pipelines_dir=str(runtime.pipelines_dir())).last_trace
    jobs = [j for p in trace.last_load_info.load_packages for j in p.jobs["completed_jobs"]]
    formats = {j.job_file_info.file_format for j in jobs if j.job_file_info.table_name == "rep_convos"}
    assert formats == {"parquet"}  # not the INSERT fallback dlt takes without the driver

    rows = query(
        warehouse,
        "select issue_id, rep_id, issue_assigned_ts, cume_cross_talk_seconds, is_ghost_customer, "
        "handle_time_seconds, queue_id, not_documented from asapp_raw.rep_convos order by issue_id",
    )
    assert rows == [
        (1, "r1", datetime(2026, 11, 1, 10, 0, 0, 250000), Decimal("12.34567"), True, 1.5, 7, "kept as text"),
        (2, "r2", None, None, False, None, None, None),
    ]


@pytest.mark.parametrize("warehouse", ["postgres"], indirect=True)
def test_an_empty_arrow_table_loads(warehouse: Warehouse) -> None:
    """dlt writes an empty Arrow table as a parquet file of no rows, which dlt's copy job alone cannot load."""
    empty = pa.table({"id": pa.array([], pa.int64()), "note": pa.array([], pa.string())})
    pipeline = runtime.pipeline("empty_check", "empty_check")
    pipeline.run(empty, table_name="nothing", loader_file_format="parquet")
    pipeline.run(empty.append_column("more", pa.array([], pa.bool_())), table_name="nothing")
    assert query(warehouse, "select count(*) from empty_check.nothing") == [(0,)]
    full = pa.table({"id": [1, 2], "note": ["a", None]})
    pipeline.run(full, table_name="nothing", loader_file_format="parquet")
    assert query(warehouse, "select id, note from empty_check.nothing order by id") == [(1, "a"), (2, None)]

"""A smoke run of the benchmark harness at tiny sizes, so it keeps working (benchmarks are not tests: nothing
here is timed; `make bench` measures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.run import main


@pytest.mark.slow
def test_harness_runs_and_writes_its_report(tmp_path: Path, warehouse: object) -> None:
    report = main(
        [
            "--size-mb",
            "3",
            "--repeat",
            "1",
            "--load-pairs",
            "1",
            "--history-days",
            "2",
            "--naive-rows",
            "200",
            "--apsis-profiles",
            "800",
            "--push-rows",
            "1200",
            "--push-large-rows",
            "2500",
            "--no-spark",  # Spark's start and builds: tested by test_spark.py, measured by `make bench`
            "--out",
            str(tmp_path / "out"),
            "--work",
            str(tmp_path / "work"),
        ]
    )
    names = [r.name for r in report.rows]
    for expected in (
        "limit: download + read",
        "elt load asapp",
        "naive dlt dicts (extrapolated from a sample)",
        "run with nothing new after that history",
        "dbt incremental, 1% new rows, 3 staging models (model time)",
    ):
        assert expected in names
    assert all(r.seconds > 0 for r in report.rows)
    assert any(r.name == "first load of 96 historical partitions" for r in report.rows)  # 2 days x 24 h x 2 feeds
    assert any(r.name == "push, 1200 rows in 2 batches" for r in report.rows)  # the emulator in its own process
    large = {r.name: r for r in report.rows if r.name in ("push, 2500 rows", "the same, nothing changed")}
    assert len(large) == 2 and all(r.peak_rss_mb for r in large.values())
    # Postgres (a private server): the load against its own limit (download + read + COPY), then dbt there
    for expected in (
        "Postgres limit: download + read + COPY",
        "elt load asapp, Postgres",
        "dbt full refresh on Postgres, 3 staging models (model time)",
        "dbt incremental on Postgres, 1% new rows, 3 staging models (model time)",
    ):
        assert expected in names
    pg_load = next(r for r in report.rows if r.name == "elt load asapp, Postgres")
    assert pg_load.vs_limit and pg_load.rows_per_s
    assert len(report.checks) == 7
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| elt load asapp |" in md and "| target | measured | met |" in md
    assert (tmp_path / "out" / "results.png").stat().st_size > 5_000
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(data["rows"]) == len(report.rows)

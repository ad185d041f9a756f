"""The Postgres rows of `make bench`: `elt load asapp` and dbt with ELT_TARGET=postgres on a private server, and
their limit, OpenSSH `sftp` + DuckDB `read_json` + `COPY` of the same rows (psql's `\\copy`)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb

from bench.measure import Run, run
from bench.trees import FEEDS, START, TreeInfo, new_partitions
from loaders.sandbox.postgres import Postgres, PostgresServer

# DuckDB's types of read_json's columns -> Postgres; anything else goes as text
PG_TYPES = {
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "DOUBLE": "double precision",
    "BOOLEAN": "boolean",
    "TIMESTAMP": "timestamp",
    "DATE": "date",
    "VARCHAR": "text",
}


def copy_seconds(limit_db: Path, work: Path, pg: Postgres, database: str) -> float:
    """The limit's last step: the rows DuckDB parsed (table t of limit_db) into a new Postgres table of the same
    column types, written as CSV by DuckDB and loaded by psql's `\\copy`. Seconds, both steps."""
    pg.create_database(database)
    with duckdb.connect(str(limit_db)) as con:
        columns = con.execute(
            "select column_name, data_type from information_schema.columns where table_name = 't' "
            "order by ordinal_position"
        ).fetchall()
    ddl = ", ".join(f'"{name}" {PG_TYPES.get(str(kind), "text")}' for name, kind in columns)
    con_pg = pg.connect(database)
    try:
        with con_pg.cursor() as cur:
            cur.execute(f"create table t ({ddl})")
        con_pg.commit()
    finally:
        con_pg.close()
    csv = work / "limit.csv"
    os.sync()  # as before every measured command (bench.measure.run)
    started = time.monotonic()
    with duckdb.connect(str(limit_db)) as con:
        con.execute(f"copy t to '{csv}' (format csv, header)")
    psql = ["psql", "-q", "-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user, "-d", database, "-v", "ON_ERROR_STOP=1"]
    subprocess.run([*psql, "-c", f"\\copy t from '{csv}' with (format csv, header)"], check=True)
    seconds = time.monotonic() - started
    csv.unlink()
    return seconds


def measure(
    tree: TreeInfo,
    work: Path,
    repeat: int,
    limit: Callable[[], tuple[float, float]],
    env: Callable[[str], dict[str, str]],
    elt: str,
    project: Path,
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], list[tuple[str, str, bool]]]:
    """The Postgres rows of the report (bench.run.Row's fields) and its target. limit() runs the download and read
    of the limit path (leaving the rows in work/limit.duckdb); env(name) is the environment of an `elt` run in
    work/name."""
    mb = tree.bytes_uncompressed / 1e6
    server = PostgresServer()
    pg = server.start()
    try:
        limits: list[float] = []
        runs: list[Run] = []
        for i in range(repeat):
            log(f"limit on Postgres: OpenSSH sftp + DuckDB read_json + psql \\copy ({i + 1}/{repeat})")
            download, read = limit()
            limits.append(download + read + copy_seconds(work / "limit.duckdb", work, pg, f"limit_{i}"))
            log(f"elt load asapp on Postgres ({i + 1}/{repeat})")
            pg.create_database(f"elt_{i}")
            loaded = {**env("pg"), **pg.env(f"elt_{i}")}  # a new pipelines folder and database each time
            runs.append(run([elt, "load", "asapp"], loaded, cwd=project))
        ratios = [r.seconds / lim for r, lim in zip(runs, limits, strict=True)]
        ratio = statistics.median(ratios)
        limit_s = statistics.median(limits)
        load = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
        rows = [
            _row("Postgres limit: download + read + COPY", limit_s, mb_per_s=mb / limit_s, vs_limit=1.0),
            _row(
                "elt load asapp, Postgres",
                load.seconds,
                peak_rss_mb=load.peak_rss / 1e6,
                mb_per_s=mb / load.seconds,
                rows_per_s=tree.rows / load.seconds,
                vs_limit=ratio,
                note=f"vs its limit: median of the {len(ratios)} pairs run in turns "
                f"({', '.join(f'{x:.2f}' for x in ratios)})",
            ),
        ]
        rows[0]["rows_per_s"] = tree.rows / limit_s
        checks = [("elt load asapp on Postgres within 1.5x of its limit", f"{ratio:.2f}x", ratio <= 1.5)]
        rows += _dbt_rows(tree, loaded, repeat, elt, project, log)  # on the last load's database
    finally:
        server.stop()
    return rows, checks


def _row(name: str, seconds: float, **fields: Any) -> dict[str, Any]:
    return {"name": name, "seconds": seconds, **fields}


def _model_seconds(target: Path) -> float:
    results = json.loads((target / "run_results.json").read_text())["results"]
    return sum(r["execution_time"] for r in results if r["unique_id"].startswith("model."))


def _dbt_rows(
    tree: TreeInfo, env: dict[str, str], repeat: int, elt: str, project: Path, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """dbt on the loaded Postgres database: a full refresh of the tree's staging models, then 1% new rows in each
    feed loaded and an incremental run, `repeat` times. The partitions added are removed again."""
    models = [f"stg_asapp__{feed}" for feed in FEEDS]
    new_rows = max(1, tree.rows // len(FEEDS) // 100)
    target = Path(env["DBT_TARGET_PATH"])
    fulls: list[tuple[float, Run]] = []
    incrs: list[tuple[float, Run]] = []
    added: list[Path] = []
    try:
        for i in range(repeat):
            log(f"dbt full refresh on Postgres ({i + 1}/{repeat})")
            full = run([elt, "build", "--select", *models, "--full-refresh"], env, cwd=project)
            fulls.append((_model_seconds(target), full))
            at = START + timedelta(days=2, hours=i)  # after the hours the DuckDB runs add (days=1)
            added += new_partitions(tree.root, at, 2 * 10**9 + i * new_rows, new_rows)
            run([elt, "load", "asapp"], env, cwd=project)
            log(f"dbt incremental run on Postgres over 1% new rows ({i + 1}/{repeat})")
            incr = run([elt, "build", "--select", *models], env, cwd=project)
            incrs.append((_model_seconds(target), incr))
    finally:
        for folder in added:
            shutil.rmtree(folder.parents[1], ignore_errors=True)  # its dt= folder: the tree is as it was
    full_s, full = sorted(fulls, key=lambda m: m[0])[len(fulls) // 2]
    incr_s, incr = sorted(incrs, key=lambda m: m[0])[len(incrs) // 2]
    shares = [i / f for (f, _), (i, _) in zip(fulls, incrs, strict=True)]
    return [
        _row(
            f"dbt full refresh on Postgres, {len(models)} staging models (model time)",
            full_s,
            peak_rss_mb=full.peak_rss / 1e6,
            note=f"wall {full.seconds:.1f} s with dbt start-up",
        ),
        _row(
            f"dbt incremental on Postgres, 1% new rows, {len(models)} staging models (model time)",
            incr_s,
            peak_rss_mb=incr.peak_rss / 1e6,
            note=f"wall {incr.seconds:.1f} s with dbt start-up; of the full refresh before it: "
            f"{', '.join(f'{x:.1%}' for x in shares)}",
        ),
    ]

"""The Spark rows of `make bench`: `elt load asapp` with ELT_TARGET=spark (dlt's parquet files), beside the SFTP
limit, and a dbt build of the tree's staging models in dbt-spark's session (a rebuild: the only incremental run
parquet tables allow, README "Scaling out")."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.measure import run
from bench.trees import FEEDS, TreeInfo


def measure(
    tree: TreeInfo,
    limit_s: float,
    env: dict[str, str],
    elt: str,
    project: Path,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """The Spark rows of the report (bench.run.Row's fields); env: an `elt` run's environment in a folder of its
    own, with ELT_TARGET=spark and ELT_SPARK_WAREHOUSE there. One run each: Spark's start alone takes 10-60 s."""
    mb = tree.bytes_uncompressed / 1e6
    log("elt load asapp on Spark (parquet through dlt's filesystem destination)")
    load = run([elt, "load", "asapp"], env, cwd=project)
    models = [f"stg_asapp__{feed}" for feed in FEEDS]
    log(f"dbt build of {len(models)} staging models on Spark")
    build = run([elt, "build", "--select", *models], env, cwd=project)
    results = json.loads((Path(env["DBT_TARGET_PATH"]) / "run_results.json").read_text())["results"]
    model_s = sum(r["execution_time"] for r in results if r["unique_id"].startswith("model."))
    return [
        {
            "name": "elt load asapp, Spark (parquet)",
            "seconds": load.seconds,
            "peak_rss_mb": load.peak_rss / 1e6,
            "mb_per_s": mb / load.seconds,
            "rows_per_s": tree.rows / load.seconds,
            "vs_limit": load.seconds / limit_s,
            "note": "one run; vs the SFTP limit (download + DuckDB read)",
        },
        {
            "name": f"dbt build on Spark, {len(models)} staging models (model time)",
            "seconds": model_s,
            "peak_rss_mb": build.peak_rss / 1e6,
            "note": f"one run, a rebuild from all of raw; wall {build.seconds:.1f} s with Spark's and dbt's start-up",
        },
    ]

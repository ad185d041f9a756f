"""`elt demo` end to end in a subprocess, as a user runs it (sandbox SFTP server, load, build, docs)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from loaders.sandbox.exports import DEMO_FEEDS
from tests.python.helpers import PROJECT, DuckDbWarehouse, Warehouse, elt, query


def test_demo_runs_the_whole_flow(tmp_path: Path, warehouse: Warehouse) -> None:
    result = elt("demo", "--days", "1", "--workdir", str(tmp_path / "demo"), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dbt build passed" in result.stdout
    assert "elt push" in result.stdout  # the curated rows were pushed to the ASAPP API emulator
    db = DuckDbWarehouse(tmp_path / "demo" / "asapp.duckdb")
    for feed in DEMO_FEEDS:
        ((raw,),) = query(db, f"select count(*) from asapp_raw.{feed}")
        ((staged,),) = query(db, f"select count(*) from staging.stg_asapp__{feed}")
        assert 0 < staged < raw, feed  # every demo feed re-exports records: staging removed duplicates
        assert feed in result.stdout
    assert (Path(str(tmp_path / "target")) / "index.html").exists()  # docs site generated (DBT_TARGET_PATH)
    the_printed_hints_work_as_printed(result.stdout)
    ((accepted,),) = query(db, "select count(*) from asapp_metadata.asapp_metadata_push_log where status = 'accepted'")
    ((invalid,),) = query(db, "select count(*) from asapp_metadata.asapp_metadata_push_log where status = 'invalid'")
    assert accepted > 0 and invalid > 0  # the sandbox's guest ids break the API's pattern and are not sent
    # the newest utterances partition has no _SUCCESS yet: reported, not loaded
    assert query(
        db, "select count(*) from asapp_raw.utterances where _asapp_partition_at = timestamp '2026-11-01 23:00:00'"
    ) == [(0,)]


def the_printed_hints_work_as_printed(stdout: str) -> None:
    """The demo's closing lines name commands of the venv (it has no `duckdb` command line): run each as printed."""
    query = re.search(r"query it: (.+)$", stdout, flags=re.M)
    assert query, stdout[-2000:]
    rows = subprocess.run(shlex.split(query.group(1)), cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert rows.returncode == 0, rows.stdout + rows.stderr
    assert "final_intent_code" in rows.stdout and "5 row(s)" in rows.stdout
    dlt = re.search(r"dlt's view of a load: (.+)$", stdout, flags=re.M)
    assert dlt, stdout[-2000:]
    info = subprocess.run(shlex.split(dlt.group(1)), cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "Found pipeline asapp_sftp" in info.stdout + info.stderr, info.stdout + info.stderr
    docs = re.search(r"docs site: (\S+) \(one file: open it in a browser\)", stdout)
    assert docs and (PROJECT / docs.group(1)).stat().st_size > 100_000  # static_index.html: the site in one file

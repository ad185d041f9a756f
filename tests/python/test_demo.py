"""`elt demo` end to end in a subprocess, as a user runs it (sandbox transport, load, build, docs, push), through
each of the three transports."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from loaders.sandbox.exports import DEMO_FEEDS
from tests.python.helpers import PROJECT, DuckDbWarehouse, Warehouse, elt, query

NEWEST_UTTERANCES = "_asapp_partition_at = timestamp '2026-11-01 23:00:00'"  # the demo tree's one without _SUCCESS


@pytest.mark.parametrize("transport", ["sftp", "file-exporter", "mirror"])
def test_demo_runs_the_whole_flow(tmp_path: Path, warehouse: Warehouse, transport: str) -> None:
    result = elt("demo", "--days", "1", "--workdir", str(tmp_path / "demo"), "--from", transport, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dbt build passed" in result.stdout
    assert "elt push" in result.stdout  # the curated rows were pushed to the ASAPP API emulator
    db = DuckDbWarehouse(tmp_path / "demo" / "asapp.duckdb")
    printed = printed_feeds(result.stdout)
    assert f"the ASAPP feeds through {transport}" in " ".join(result.stdout.split())  # the table's title
    for feed in DEMO_FEEDS:
        # every row came through the transport asked for (the sandbox serves the same tree through all three)
        assert query(db, f"select distinct _asapp_source from asapp_raw.{feed}") == [(transport,)], feed
        ((raw,),) = query(db, f"select count(*) from asapp_raw.{feed}")
        ((staged,),) = query(db, f"select count(*) from staging.stg_asapp__{feed}")
        assert 0 < staged < raw, feed  # every demo feed re-exports records: staging removed duplicates
        assert printed[feed][2:] == [raw, staged, raw - staged], feed  # the summary shows the warehouse's counts
    assert (Path(str(tmp_path / "target")) / "index.html").exists()  # docs site generated (DBT_TARGET_PATH)
    the_printed_hints_work_as_printed(result.stdout)
    ((accepted,),) = query(db, "select count(*) from asapp_metadata.asapp_metadata_push_log where status = 'accepted'")
    ((invalid,),) = query(db, "select count(*) from asapp_metadata.asapp_metadata_push_log where status = 'invalid'")
    assert accepted > 0 and invalid > 0  # the sandbox's guest ids break the API's pattern and are not sent
    ((newest,),) = query(db, f"select count(*) from asapp_raw.utterances where {NEWEST_UTTERANCES}")
    if transport == "file-exporter":
        # the API documents no _SUCCESS: a day's partitions are complete once its daily refresh has passed
        assert newest > 0 and printed["utterances"][1] == 0
    else:
        # the newest utterances partition has no _SUCCESS yet: reported as waiting, not loaded
        assert newest == 0 and printed["utterances"][1] == 1


def printed_feeds(stdout: str) -> dict[str, list[int]]:
    """The demo table's rows by feed: partitions loaded, waiting for _SUCCESS, raw, staged, duplicates removed."""
    rows: dict[str, list[int]] = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) == 6 and cells[0] in DEMO_FEEDS:
            rows[cells[0]] = [int(cell) for cell in cells[1:]]
    assert sorted(rows) == sorted(DEMO_FEEDS), stdout[:3000]
    return rows


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

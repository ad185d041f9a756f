"""A load killed at any point (SIGKILL during download, extract, normalize or load) and re-run: every row lands
exactly once and no partition is skipped. The repair of rows a re-run load job inserted twice is checked on both
engines, for the ASAPP and the APSIS raw tables."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from loaders import runtime
from loaders.loads import APSIS_DATASET, APSIS_PIPELINE, ASAPP_DATASET, ASAPP_PIPELINE, load_apsis, load_asapp
from loaders.recovery import APSIS_ROW_KEYS, asapp_row_key, dedupe_loads
from loaders.sandbox.apsis_emulator import SECTION, ApsisEmulator
from loaders.sandbox.exports import write_partition
from tests.python.helpers import ELT, PROJECT, Warehouse, query


def _tree(root: Path) -> int:
    """Enough partitions and rows that a load takes a few seconds."""
    total = 0
    for feed in ("utterances", "convos_metrics"):
        for h in range(36):
            at = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=h)
            rows = [{"issue_id": h * 10_000 + i, "text": "x" * 200, "n": i} for i in range(3_000)]
            write_partition(root, feed, at, rows, splits=2 if h % 3 == 0 else 1, gz=h % 2 == 1)
            total += len(rows)
    return total


def kill_at(args: list[str], env: dict[str, str], delays: tuple[float, ...]) -> int:
    """Start the command once per delay and SIGKILL it after that long if still running; how many were killed."""
    kills = 0
    for delay in delays:
        proc = subprocess.Popen(args, cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    return kills


@pytest.mark.slow
def test_sigkill_at_any_point_then_rerun_loads_everything_exactly_once(
    exports: Path, warehouse: Warehouse, tmp_path: Path
) -> None:
    expected = _tree(exports)
    temp = tmp_path / "temp"  # where the runs download partitions to
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    # kill the load at staggered moments: while listing and downloading, extracting, normalizing and loading
    kills = kill_at([ELT, "load", "asapp"], env, (0.8, 1.6, 2.4, 3.2, 4.5, 6.0))
    assert kills >= 3, "the load finished too fast to be interrupted: make the tree bigger"
    final = subprocess.run([ELT, "load", "asapp"], cwd=PROJECT, env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert list(temp.iterdir()) == [], "downloads of the killed runs were left behind"
    for feed in ("utterances", "convos_metrics"):
        ((rows, distinct),) = query(
            warehouse,
            f"select count(*), count(distinct _asapp_file || ':' || _asapp_partition_at || ':' || "
            f"_asapp_line) from asapp_raw.{feed}",
        )
        assert rows == distinct, f"{feed}: duplicated rows after kills"
        assert rows == expected // 2, f"{feed}: {rows} rows, expected {expected // 2}"


T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def _load_ids(warehouse: Warehouse, table: str) -> list[str]:
    return [i for (i,) in query(warehouse, f"select distinct _dlt_load_id from {table}")]


def _duplicate_rows_of(warehouse: Warehouse, table: str, load_id: str) -> None:
    """What a load job that dlt ran again after a kill leaves behind: its rows a second time, same load id."""
    warehouse.execute_many(f"insert into {table} select * from {table} where _dlt_load_id = '{load_id}'", [])


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_rows_a_rerun_load_job_inserted_twice_are_removed(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, "convos_intents", T0, [{"issue_id": i} for i in range(3)])
    load_asapp()
    (earlier,) = _load_ids(warehouse, "asapp_raw.convos_intents")
    _duplicate_rows_of(warehouse, "asapp_raw.convos_intents", earlier)  # an older load: not ours to repair
    write_partition(exports, "convos_intents", T0.replace(hour=11), [{"issue_id": i} for i in range(3, 8)])
    load_asapp()
    (latest,) = set(_load_ids(warehouse, "asapp_raw.convos_intents")) - {earlier}
    _duplicate_rows_of(warehouse, "asapp_raw.convos_intents", latest)
    assert query(warehouse, "select count(*) from asapp_raw.convos_intents") == [(16,)]

    dedupe_loads(runtime.pipeline(ASAPP_PIPELINE, ASAPP_DATASET), [latest], asapp_row_key)
    counts = query(
        warehouse,
        "select _dlt_load_id, count(*), count(distinct issue_id) from asapp_raw.convos_intents group by 1",
    )
    assert sorted(counts, key=lambda r: r[0] != latest) == [(latest, 5, 5), (earlier, 6, 3)]


# Profiles the export's documentation does not allow: each is a row of apsis_raw._rejects (two of one profile).
BAD_PROFILES = {
    "p-list": [1, 2],
    "p-sections": {"sections": ["not", "an", "object"]},
    "p-events": {"sections": {SECTION: {"events": ["not an object", {"createdAt": True}]}}},
}


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_apsis_rows_a_rerun_load_job_inserted_twice_are_removed(
    warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ApsisEmulator(tmp_path / "apsis", profiles=40, polls_until_ready=1) as api:
        for k, v in {**api.env(), "SOURCES__APSIS__POLL_INITIAL_INTERVAL": "0.01"}.items():
            monkeypatch.setenv(k, v)
        api.state.inject_profiles = BAD_PROFILES  # rows of _rejects to repeat too
        load_apsis(start_at="2026-11-01", end_at="2026-11-02")
    tables = [f"apsis_raw.{t}" for t in APSIS_ROW_KEYS]
    before = {t: query(warehouse, f"select count(*) from {t}")[0][0] for t in tables}
    assert all(before.values()), before  # every table has rows to repeat
    (load_id,) = _load_ids(warehouse, "apsis_raw.events")
    for t in tables:
        _duplicate_rows_of(warehouse, t, load_id)
    dedupe_loads(runtime.pipeline(APSIS_PIPELINE, APSIS_DATASET), [load_id], APSIS_ROW_KEYS.get)
    # back to the rows loaded once: the keys are unique per row (nothing legitimate was removed)
    assert {t: query(warehouse, f"select count(*) from {t}")[0][0] for t in tables} == before


@pytest.mark.slow
def test_apsis_load_killed_at_any_point_then_rerun_loads_each_export_exactly_once(
    warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ApsisEmulator(tmp_path / "apsis", profiles=15_000, events_per_profile=4, polls_until_ready=1) as api:
        for k, v in {**api.env(), "SOURCES__APSIS__POLL_INITIAL_INTERVAL": "0.01"}.items():
            monkeypatch.setenv(k, v)
        api.state.inject_profiles = BAD_PROFILES  # rejects land exactly once too
        temp = tmp_path / "temp"  # where the runs download exports to
        temp.mkdir()
        env = {**os.environ, "TMPDIR": str(temp)}
        args = [ELT, "load", "apsis", "--start-at", "2026-11-01", "--end-at", "2026-11-02"]
        kills = kill_at(args, env, (1.5, 2.5, 3.5, 4.5, 6.0, 8.0))
        assert kills >= 3, "the load finished too fast to be interrupted: make the export bigger"
        final = subprocess.run(args, cwd=PROJECT, env=env, capture_output=True, text=True)
        assert final.returncode == 0, final.stderr
        assert list(temp.iterdir()) == [], "downloads of the killed runs were left behind"
    exports = query(
        warehouse,
        "select export_id, profiles_rows, profile_attributes_rows, profile_tags_rows, events_rows "
        "from apsis_raw.exports",
    )
    assert exports and len({e for e, *_ in exports}) == len(exports), "an export recorded twice"
    for table, key in APSIS_ROW_KEYS.items():
        ((rows, distinct),) = query(
            warehouse, f"select count(*), count(distinct ({', '.join(key)})) from apsis_raw.{table}"
        )
        assert rows == distinct, f"{table}: duplicated rows after kills"
    for column, table in (("profiles_rows", "profiles"), ("events_rows", "events")):
        landed = dict(query(warehouse, f"select export_id, count(*) from apsis_raw.{table} group by 1"))
        index = ["profiles_rows", "profile_attributes_rows", "profile_tags_rows", "events_rows"].index(column) + 1
        # every recorded export is whole, and no rows landed without their export's record
        assert landed == {e[0]: e[index] for e in exports if e[index]}, table

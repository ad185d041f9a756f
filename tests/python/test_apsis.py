"""The APSIS source against the emulator over real HTTP: every poll status of the documentation, token refresh,
gzip and plain bodies, window splitting, limits, incremental runs, flat memory on a large export, and dbt.
test_apsis_hostile.py has the hostile cases (token scope, split requests, caps, bad values, smaller windows)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from loaders import runtime
from loaders.apsis.client import find_poll_url
from loaders.apsis.request import ApsisRequestError, ExportRequest, validate
from loaders.loads import load_apsis
from loaders.sandbox.apsis_emulator import ATTRIBUTES, ApsisEmulator
from tests.python.helpers import ELT, PROJECT, DuckDbWarehouse, Warehouse, apsis_api, elt, query, scalar


@pytest.fixture
def emulator(tmp_path: Path, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApsisEmulator]:
    with apsis_api(tmp_path / "apsis", monkeypatch, polls_until_ready=2) as emu:
        yield emu


def test_happy_path_lands_all_tables_and_builds(emulator: ApsisEmulator, warehouse: Warehouse) -> None:
    stats = load_apsis(start_at="2026-11-01T00:00:00Z", end_at="2026-11-08T00:00:00Z")
    assert stats.exports == 1
    statuses = [s for s, _ in emulator.state.polls]
    assert statuses == [404, 404, 200]  # polled while "processing", then streamed
    assert all(enc == "gzip" for _, enc in emulator.state.polls)
    assert scalar(warehouse, "select count(*) from apsis_raw.profiles") == 40
    assert scalar(warehouse, "select count(*) from apsis_raw.profile_attributes") == 40 * len(ATTRIBUTES)
    assert scalar(warehouse, "select count(*) from apsis_raw.profile_tags") > 0
    assert scalar(warehouse, "select count(*) from apsis_raw.profile_attributes where value is null") == 0
    assert query(
        warehouse,
        "select value, value_type from apsis_raw.profile_attributes "
        "where attribute_id = 'opted_in' and profile_key = 'profile-0000001'",
    ) == [("true", "boolean")]
    ((start, end, n_profiles),) = query(warehouse, "select start_at, end_at, profiles_rows from apsis_raw.exports")
    assert (start, end, n_profiles) == (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 8, tzinfo=UTC), 40)
    # sourceEventTime 0 means unknown, not 1970
    assert scalar(warehouse, "select count(*) from apsis_raw.events where source_event_time is null") > 0
    assert scalar(warehouse, "select count(*) from apsis_raw.events where year(source_event_time) = 1970") == 0
    assert {
        t
        for (t,) in query(
            warehouse, "select table_name from information_schema.tables where table_schema = 'apsis_raw'"
        )
    } >= {"sections", "attributes", "tags", "event_types"}
    # everything requested: all attributes, tags and event types found through the reference endpoints, those
    # customer_metadata reads first
    assert emulator.state.requests[0]["attributes"] == [
        "customer_id",
        "email",
        "phone",
        "zip",
        *(a for a, _, _ in ATTRIBUTES if a not in ("customer_id", "email", "phone", "zip")),
    ]

    assert runtime.run_dbt(["build", "--select", "staging.apsis", "--indirect-selection", "cautious"])
    raw_events = scalar(warehouse, "select count(*) from apsis_raw.events")
    staged = scalar(warehouse, "select count(*) from staging.stg_apsis__events")
    assert 0 < staged < raw_events  # retries removed
    assert scalar(warehouse, "select count(*) from staging.stg_apsis__events where event_name is null") == 0
    # the earliest received copy of a retried event is kept
    assert query(
        warehouse,
        "select created_at from staging.stg_apsis__events where correlation_id = 'c-0-0-2026-11-01T00:00:00Z'",
    ) == [(datetime(2026, 11, 1),)]
    assert scalar(warehouse, "select count(*) from staging.stg_apsis__attributes where attribute_name is null") == 0
    assert scalar(warehouse, "select count(*) from staging.stg_apsis__profiles") == 40


@pytest.mark.parametrize("status", [410, 503])
def test_gone_or_failed_export_is_requested_again(emulator: ApsisEmulator, warehouse: Warehouse, status: int) -> None:
    emulator.state.inject_poll = [404, status]
    load_apsis(start_at="2026-11-01", end_at="2026-11-02")
    assert len(emulator.state.requests) == 2
    assert scalar(warehouse, "select count(*) from apsis_raw.profiles") == 40  # loaded once


def test_repeated_processing_failure_ends_with_a_clear_error(
    emulator: ApsisEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__APSIS__MIN_WINDOW_HOURS", "24")  # the day is not halved
    emulator.state.inject_poll = [503, 503, 503]
    result = elt("load", "apsis", "--start-at", "2026-11-01", "--end-at", "2026-11-02")
    assert result.returncode == 1
    stderr = " ".join(result.stderr.split())  # as one line, however the console wrapped it
    assert "could not produce the export of 2026-11-01T00:00:00Z .. 2026-11-02T00:00:00Z after 3 requests" in stderr
    assert "Traceback" not in result.stderr
    assert len(emulator.state.requests) == 3


def test_a_failed_download_leaves_no_temporary_file(
    emulator: ApsisEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the export is downloaded to
    emulator.state.inject_poll = [404, 400]  # the poll fails once the file has been created
    with pytest.raises(Exception, match="polling the export answered HTTP 400"):
        load_apsis(start_at="2026-11-01", end_at="2026-11-02")
    assert [s for s, _ in emulator.state.polls] == [404, 400]
    assert list(temp.glob("apsis-export-*")) == []


def test_429_backs_off_on_polls_and_requests(emulator: ApsisEmulator, warehouse: Warehouse) -> None:
    emulator.state.inject_request = [429]
    emulator.state.inject_poll = [429, 429]
    load_apsis(start_at="2026-11-01", end_at="2026-11-02")
    assert [s for s, _ in emulator.state.polls][:2] == [429, 429]
    assert len(emulator.state.requests) == 1  # the 429'd request was retried, not duplicated
    assert scalar(warehouse, "select count(*) from apsis_raw.profiles") == 40


def test_token_is_refreshed_once_on_401(emulator: ApsisEmulator, warehouse: Warehouse) -> None:
    emulator.state.revoke_on_poll = 2
    load_apsis(start_at="2026-11-01", end_at="2026-11-02")
    assert emulator.state.token_requests == 2
    assert scalar(warehouse, "select count(*) from apsis_raw.profiles") == 40


def test_wrong_credentials_are_one_clear_error(emulator: ApsisEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCES__APSIS__CLIENT_SECRET", "not-the-secret")
    result = elt("load", "apsis", "--start-at", "2026-11-01")
    assert result.returncode == 1 and "refused the client credentials" in result.stderr
    assert "not-the-secret" not in result.stdout + result.stderr


@pytest.mark.parametrize(("gzip", "wrap"), [(False, False), (True, True), (False, True)])
def test_plain_gzip_and_wrapped_exports(
    emulator: ApsisEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, gzip: bool, wrap: bool
) -> None:
    monkeypatch.setenv("SOURCES__APSIS__GZIP", str(gzip).lower())
    emulator.state.wrap_profiles = wrap
    load_apsis(start_at="2026-11-01", end_at="2026-11-02")
    assert {enc for _, enc in emulator.state.polls} == {"gzip" if gzip else "identity"}
    assert scalar(warehouse, "select count(*) from apsis_raw.profiles") == 40
    assert scalar(warehouse, "select count(*) from apsis_raw.profiles where profile_key = 'metadata'") == 0


def test_long_windows_are_split_into_three_month_exports(emulator: ApsisEmulator, warehouse: Warehouse) -> None:
    stats = load_apsis(start_at="2026-01-01", end_at="2026-08-15")
    assert [(r["start_at"], r["end_at"]) for r in emulator.state.requests] == [
        ("2026-01-01T00:00:00Z", "2026-04-01T00:00:00Z"),
        ("2026-04-01T00:00:00Z", "2026-07-01T00:00:00Z"),
        ("2026-07-01T00:00:00Z", "2026-08-15T00:00:00Z"),
    ]
    assert stats.exports == 3
    assert scalar(warehouse, "select count(*) from apsis_raw.exports") == 3


def test_end_at_defaults_to_a_week_after_start_at(emulator: ApsisEmulator) -> None:
    load_apsis(start_at="2026-11-01")
    assert emulator.state.requests[0]["end_at"] == "2026-11-08T00:00:00Z"


def test_incremental_run_starts_at_last_end_minus_overlap(emulator: ApsisEmulator, warehouse: Warehouse) -> None:
    load_apsis(start_at="2026-11-01", end_at="2026-11-02")
    load_apsis()  # next run: from the last end_at minus the 6 h overlap, to now
    second = emulator.state.requests[1]
    assert second["start_at"] == "2026-11-01T18:00:00Z"
    assert scalar(warehouse, "select count(*) from apsis_raw.exports") == 2


def test_configured_lists_beyond_the_limits_are_split(emulator: ApsisEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """76 attributes and 26 tags configured: two exports within the limits, nothing dropped."""
    monkeypatch.setenv("SOURCES__APSIS__ATTRIBUTES", ",".join(f"a{i}" for i in range(76)))
    monkeypatch.setenv("SOURCES__APSIS__TAGS", ",".join(f"t{i}" for i in range(26)))
    load_apsis(start_at="2026-11-01", end_at="2026-11-02")
    assert [(len(r["attributes"]), len(r["tags"])) for r in emulator.state.requests] == [(75, 25), (1, 1)]


def test_request_rules() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ApsisRequestError, match="at least one attribute or tag"):
        validate(ExportRequest((), (), ("e",), start, None))
    with pytest.raises(ApsisRequestError, match="start_at is mandatory"):
        validate(ExportRequest(("a",), (), ("e",), None, None))
    with pytest.raises(ApsisRequestError, match="longer than 3 months"):
        validate(ExportRequest(("a",), (), ("e",), start, datetime(2026, 4, 2, tzinfo=UTC)))
    validate(ExportRequest(("a",), (), ("e",), start, datetime(2026, 4, 1, tzinfo=UTC)))


@pytest.mark.parametrize(
    ("body", "url"),
    [
        ({"poll_url": "http://127.0.0.1/a"}, "http://127.0.0.1/a"),
        ({"file_download_url_v2": "https://x.example/b", "id": 1}, "https://x.example/b"),
        ({"result": {"link": "see https://x.example/c for the file"}}, "https://x.example/c"),
    ],
)
def test_poll_url_is_found_in_the_response(body: object, url: str) -> None:
    assert find_poll_url(body) == url


def test_poll_url_under_another_name(emulator: ApsisEmulator, warehouse: Warehouse) -> None:
    emulator.state.poll_field = ""  # the URL only appears inside a message
    load_apsis(start_at="2026-11-01", end_at="2026-11-02")
    assert scalar(warehouse, "select count(*) from apsis_raw.profiles") == 40


def _peak_rss(args: list[str], env: dict[str, str]) -> int:
    proc = subprocess.Popen(args, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    handle = psutil.Process(proc.pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, handle.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate(timeout=900)
    done.set()
    sampler.join()
    assert proc.returncode == 0, err
    return peak


@pytest.mark.slow
def test_large_export_is_parsed_with_flat_memory(emulator: ApsisEmulator, warehouse: Warehouse, tmp_path: Path) -> None:
    """Peak RSS of `elt load apsis` on a ~15 MB and a ~320 MB export differ by far less than the file size.

    The parse itself is flat (ijson, one profile at a time, 50k-row Arrow batches); what remains is DuckDB's
    insert, bounded by ELT_DUCKDB_MEMORY_LIMIT: set to 256MB here, so the bound below tells a flat load (at most
    DuckDB's share more) from one that grows with the export (+320 MB or more)."""
    peaks, sizes = [], []
    for profiles in (3_000, 65_000):
        emulator.state.profiles = profiles
        emulator.state.events_per_profile = 24
        env = {
            **os.environ,
            "ELT_DUCKDB_PATH": str(tmp_path / f"rss{profiles}.duckdb"),
            "ELT_PIPELINES_DIR": str(tmp_path / f"pipes{profiles}"),
            "ELT_DUCKDB_MEMORY_LIMIT": "256MB",
        }
        peaks.append(_peak_rss([ELT, "load", "apsis", "--start-at", "2026-11-01", "--end-at", "2026-11-02"], env))
        newest = max(emulator.state.exports.values(), key=lambda e: e.created)
        sizes.append(newest.path.stat().st_size)  # uncompressed JSON (it travels gzip)
        assert (
            scalar(DuckDbWarehouse(Path(env["ELT_DUCKDB_PATH"])), "select profiles_rows from apsis_raw.exports")
            == profiles
        )
    assert sizes[1] > 200_000_000 and sizes[0] < 15_000_000, sizes
    assert peaks[1] - peaks[0] < 200_000_000, (peaks, sizes)


def test_202_means_not_ready_yet(emulator: ApsisEmulator, warehouse: Warehouse) -> None:
    emulator.state.inject_poll = [202, 202]
    load_apsis(start_at="2026-11-01", end_at="2026-11-02")
    assert [s for s, _ in emulator.state.polls][:2] == [202, 202]
    assert len(emulator.state.requests) == 1
    assert scalar(warehouse, "select count(*) from apsis_raw.profiles") == 40


def test_expired_poll_url_answers_410_and_ends_in_a_clear_error(
    emulator: ApsisEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__APSIS__MIN_WINDOW_HOURS", "24")
    emulator.state.export_ttl = -1.0  # every poll URL has already expired (valid for 1 day in production)
    result = elt("load", "apsis", "--start-at", "2026-11-01", "--end-at", "2026-11-02")
    assert result.returncode == 1 and "could not produce the export of 2026-11-01" in " ".join(result.stderr.split())
    assert {s for s, _ in emulator.state.polls} == {410}
    assert len(emulator.state.requests) == 3

"""The File Exporter API transport against its emulator on 127.0.0.1 (requests checked against ASAPP's OpenAPI
spec by openapi-core): the presigned URL fetched without the API's headers, an expired URL asked for again, 429
and 5xx retried, 401 one clear error naming the settings, and the completeness rule for partitions without
_SUCCESS (the API documents none: a day is complete once the 02:00 UTC refresh after it has passed)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
import requests

from loaders.asapp_sftp import complete_through
from loaders.asapp_sftp.transports.file_exporter import API
from loaders.loads import load_asapp
from loaders.sandbox.exports import write_partition
from tests.python.helpers import Warehouse, elt, query, scalar
from tests.python.transports import Served, serve

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
FEED = "convos_intents"


@pytest.fixture
def api(
    request: pytest.FixtureRequest, tmp_path: Path, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Served]:
    yield from serve(request, tmp_path / "exports", "file-exporter", monkeypatch)


def rows(start: int, n: int) -> list[dict[str, object]]:
    return [{"issue_id": i, "final_intent_code": f"I{i}"} for i in range(start, start + n)]


def test_the_emulator_refuses_a_request_the_spec_does_not_allow(api: Served) -> None:
    assert api.emulator is not None
    state = api.emulator.state
    headers = {"asapp-api-id": state.api_id, "asapp-api-secret": state.api_secret}
    url = api.emulator.server.base_url + API
    assert requests.post(url + "listfeedversions", json={}, headers=headers, timeout=10).status_code == 400  # no feed
    assert requests.post(url + "listfeeds", json={}, timeout=10).status_code == 401  # no credentials
    state.invalid_requests.clear()  # the fixture checks that the loader's requests are all valid


def test_the_presigned_url_is_fetched_without_the_api_headers(api: Served, warehouse: Warehouse) -> None:
    assert api.emulator is not None
    write_partition(api.root, FEED, T0, rows(1, 3), splits=2)
    load_asapp()
    assert scalar(warehouse, f"select count(*) from asapp_raw.{FEED}") == 3
    seen = api.emulator.state.download_headers
    assert len(seen) == 2  # one download per file
    assert all("asapp-api-id" not in h and "asapp-api-secret" not in h for h in seen)
    assert not any(api.emulator.state.api_secret in value for h in seen for value in h.values())


def test_an_expired_url_a_429_and_5xx_are_retried_and_the_load_completes(api: Served, warehouse: Warehouse) -> None:
    assert api.emulator is not None
    write_partition(api.root, FEED, T0, rows(1, 2))
    write_partition(api.root, FEED, T0.replace(hour=11), rows(5, 2))
    api.emulator.state.retry_after = "0"
    # the first answers: 429, 503, 500, then the listing goes on; a download then finds its URL expired
    api.emulator.state.inject = [429, 503, 500, "expire"]
    stats = load_asapp()
    assert stats.feeds[FEED].partitions_loaded == 2 and not stats.feeds[FEED].failed
    assert scalar(warehouse, f"select count(*) from asapp_raw.{FEED}") == 4
    assert api.emulator.state.calls.count("getfeedfile") == 3  # one asked for again after its URL expired


def test_a_server_that_stays_in_error_stops_the_run_clearly(
    api: Served, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert api.emulator is not None
    write_partition(api.root, FEED, T0, rows(1, 2))
    monkeypatch.setenv("SOURCES__ASAPP_FILE_EXPORTER__RETRY_ATTEMPTS", "2")
    api.emulator.state.inject = [500, 500, 500]
    result = elt("load", "asapp")
    assert result.returncode == 1
    assert "HTTP 500" in result.stderr and "2 attempts" in result.stderr and "Traceback" not in result.stderr
    assert load_asapp().feeds[FEED].partitions_loaded == 1  # the next run loads it


def test_401_is_one_clear_error_naming_the_settings(api: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    write_partition(api.root, FEED, T0, rows(1, 2))
    monkeypatch.setenv("SOURCES__ASAPP_FILE_EXPORTER__API_SECRET", "wrong-secret-123")
    result = elt("load", "asapp")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "401" in lines[0], lines
    assert "SOURCES__ASAPP_FILE_EXPORTER__API_ID and __API_SECRET" in lines[0], lines
    assert "wrong-secret-123" not in result.stdout + result.stderr


def test_credentials_fall_back_to_the_asapp_api_settings(
    api: Served, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert api.emulator is not None
    write_partition(api.root, FEED, T0, rows(1, 2))
    monkeypatch.delenv("SOURCES__ASAPP_FILE_EXPORTER__API_ID")
    monkeypatch.delenv("SOURCES__ASAPP_FILE_EXPORTER__API_SECRET")
    missing = elt("load", "asapp")
    assert missing.returncode == 1 and "SOURCES__ASAPP_FILE_EXPORTER__API_ID" in missing.stderr
    monkeypatch.setenv("ASAPP_API__API_ID", api.emulator.state.api_id)
    monkeypatch.setenv("ASAPP_API__API_SECRET", api.emulator.state.api_secret)
    assert load_asapp().feeds[FEED].partitions_loaded == 1


def test_the_daily_refresh_rule() -> None:
    refresh = time(2, 0)
    assert complete_through(None, datetime(2026, 12, 6, 12, 0, tzinfo=UTC)) is None  # _SUCCESS only
    # a day is complete once the refresh of 02:00 UTC the day after it has passed
    assert complete_through(refresh, datetime(2026, 12, 6, 1, 59, tzinfo=UTC)).isoformat() == "2026-12-04"
    assert complete_through(refresh, datetime(2026, 12, 6, 2, 0, tzinfo=UTC)).isoformat() == "2026-12-05"


def test_without_success_flags_a_day_loads_once_its_refresh_has_passed(api: Served, warehouse: Warehouse) -> None:
    assert api.emulator is not None
    api.emulator.state.list_success = False  # as the API documents it: no flag
    now = datetime.now(UTC)
    old = (now - timedelta(days=3)).replace(hour=10, minute=0, second=0, microsecond=0)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    write_partition(api.root, FEED, old, rows(1, 2))
    write_partition(api.root, FEED, today, rows(5, 2))  # its refresh is tomorrow at 02:00
    stats = load_asapp()
    assert stats.feeds[FEED].partitions_loaded == 1
    assert stats.feeds[FEED].waiting == [f"version=1/format=jsonl/dt={today:%Y-%m-%d}/hr=00/mi=00"]
    assert query(warehouse, f"select count(*) from asapp_raw.{FEED}") == [(2,)]
    # the flag appearing later (ASAPP starts listing it) changes the fingerprint: a rescan loads the day again
    api.emulator.state.list_success = True
    assert load_asapp(rescan=True).feeds[FEED].restated == [f"version=1/format=jsonl/dt={old:%Y-%m-%d}/hr=10/mi=00"]


def test_urls_that_keep_expiring_stop_the_run_clearly(api: Served, warehouse: Warehouse) -> None:
    assert api.emulator is not None
    write_partition(api.root, FEED, T0, rows(1, 2))
    api.emulator.state.url_ttl = -1  # every presigned URL has expired when it is fetched
    result = elt("load", "asapp")
    assert result.returncode == 1
    assert "presigned URLs in a row answered 403" in result.stderr and "Traceback" not in result.stderr
    assert api.emulator.state.calls.count("getfeedfile") == 3
    api.emulator.state.url_ttl = 300
    assert load_asapp().feeds[FEED].partitions_loaded == 1  # nothing was committed: the next run loads it

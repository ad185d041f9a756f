"""Every answer of the API accounted for: results matched by eventId or by position, unreadable answers, batches
too large or refused whole, redirects, and across runs no acknowledged item sent twice and none lost."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

import pytest

from loaders.asapp_metadata import push, settings
from loaders.sandbox.asapp_api_emulator import AsappApiEmulator
from loaders.sandbox.http_server import LocalServer
from tests.python.helpers import Warehouse, query
from tests.python.test_push import LOG, sent, write_mart


@pytest.fixture
def api(warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> Iterator[AsappApiEmulator]:
    with AsappApiEmulator() as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        yield emu


def statuses(warehouse: Warehouse) -> dict[str, int]:
    return dict(query(warehouse, f"select status, count(*) from {LOG} group by 1"))


def last_ids(api: AsappApiEmulator, since: int) -> list[str]:
    return [i for _, _, ids in api.state.received[since:] for i in ids]


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_results_with_ids_the_service_computed_are_matched_by_position(
    api: AsappApiEmulator, warehouse: Warehouse
) -> None:
    write_mart(warehouse, 20)
    api.state.answer_style = "uuid"  # as the spec's example: result ids differ from the submitted ones
    api.state.reject_customers = {"c7"}
    stats = push()
    assert (stats.accepted, stats.rejected, stats.unknown) == (19, 1, 0)
    assert query(warehouse, f"select external_customer_id, status from {LOG} where status <> 'accepted'") == [
        ("c7", "rejected")
    ]
    api.state.reject_customers = set()
    again = push()
    assert sent(api) == [20, 1]  # the accepted items are not delivered again
    assert (again.accepted, again.unchanged) == (1, 19)


@pytest.mark.parametrize("style", ["echo", "uuid"])
def test_results_that_leave_items_out_never_count_them_accepted(
    api: AsappApiEmulator, warehouse: Warehouse, style: str
) -> None:
    write_mart(warehouse, 10)
    api.state.answer_style = style
    api.state.inject = ["short"]  # a 200 whose results name 9 of the 10 items
    stats = push()
    if style == "echo":  # the 9 named are matched by their ids; the one left out is owed
        assert (stats.accepted, stats.unknown) == (9, 1)
    else:  # 9 results for 10 items, with ids of the service's own: none can be told apart
        assert (stats.accepted, stats.unknown) == (0, 10)
    before = len(api.state.received)
    again = push()
    assert len(last_ids(api, before)) == stats.unknown and again.accepted == stats.unknown


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_an_html_200_is_not_an_acknowledgement(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 30)
    api.state.inject = ["html"]  # a proxy's page, with status 200
    stats = push()
    assert (stats.sent, stats.accepted, stats.unknown) == (30, 0, 30)
    assert query(warehouse, f"select distinct status, http_status, error from {LOG}") == [
        ("unknown", 200, "the answer does not account for the items")
    ]
    again = push()
    assert sent(api) == [30, 30] and again.accepted == 30
    assert push().sent == 0


def test_a_batch_too_large_is_sent_in_halves(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 1000)
    api.state.max_items = 300
    stats = push()
    answers = [(n, s) for (_, s, _), n in zip(api.state.received, sent(api), strict=True)]
    assert sorted(answers) == [(250, 200)] * 4 + [(500, 413)] * 2 + [(1000, 413)]
    assert (stats.sent, stats.accepted, stats.batches) == (1000, 1000, 1)
    assert len(api.state.persisted) == 1000 and statuses(warehouse) == {"accepted": 1000}


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_a_batch_refused_whole_is_split_until_the_bad_items_are_named(
    api: AsappApiEmulator, warehouse: Warehouse
) -> None:
    write_mart(warehouse, 1000)
    api.state.poison_customers = {"c3", "c700"}  # the API refuses any batch holding one, naming no item
    stats = push()
    assert (stats.accepted, stats.rejected) == (998, 2)
    refused = query(warehouse, f"select external_customer_id, http_status, error from {LOG} where status <> 'accepted'")
    assert sorted(refused) == [(c, 400, "FAIL_BAD_PARAMS: bad request") for c in ("c3", "c700")]
    assert len(api.state.persisted) == 998 and len(api.state.received) < 60  # halves: ~2 log2(1000) requests


def test_a_400_refusing_the_whole_batch_is_split(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 8)
    api.state.inject = [400]  # once: the halves go through
    stats = push()
    assert [(s, n) for (_, s, ids), n in zip(api.state.received, sent(api), strict=True)] == [
        (400, 8),
        (200, 4),
        (200, 4),
    ]
    assert stats.accepted == 8


def test_429_honours_retry_after(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 5)
    api.state.inject = [429]
    api.state.retry_after = "2"  # the default first wait is 1 s
    stats = push()
    (first, _, _), (second, _, _) = api.state.received
    assert 2.0 <= second - first < 2.9 and stats.accepted == 5


class Trap(BaseHTTPRequestHandler):
    """Another host: records every request it gets (its headers and body), answers 200."""

    seen: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.lock:
            self.seen.append((dict(self.headers.items()), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_a_redirect_to_another_host_gets_no_secret_and_no_data(
    api: AsappApiEmulator, warehouse: Warehouse, caplog: pytest.LogCaptureFixture
) -> None:
    Trap.seen = []
    trap = LocalServer(Trap)
    trap.start()
    try:
        write_mart(warehouse, 10)
        api.state.inject = ["redirect"]
        api.state.redirect_to = trap.base_url  # 127.0.0.1, another port: another origin
        with caplog.at_level(logging.DEBUG):
            stats = push()
    finally:
        trap.stop()
    assert Trap.seen == []  # neither the asapp-api-* headers nor the customers' data went there
    assert [s for _, s, _ in api.state.received] == [307]
    port = trap.base_url.rsplit(":", 1)[1]
    assert query(warehouse, f"select distinct status, http_status, error from {LOG}") == [
        ("failed", 307, f"HTTP 307: a redirect to 127.0.0.1:{port}, not followed")
    ]
    assert stats.failed == 10
    assert api.state.api_secret not in caplog.text
    assert push().accepted == 10  # owed: sent again by the next push


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_across_three_runs_no_item_is_sent_twice_once_acknowledged_and_none_is_lost(
    api: AsappApiEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one request at a time, so each injected answer meets a known batch
    monkeypatch.setattr(settings, "CONCURRENT_REQUESTS", 1)
    write_mart(warehouse, 6000)
    api.state.retry_after = "0"
    api.state.inject = [
        *(429, 503, "html"),  # batch 1: retried twice, then an unreadable 200
        *(500, 500, 500, 500),  # batch 2: only ever 5xx
        *(429, 429, 429, 429),  # batch 3: only ever 429
    ]
    api.state.reject_customers = {f"c{i}" for i in range(0, 6000, 500)}  # 12 rejected where a batch is read
    first = push()
    after_first = dict(query(warehouse, f"select event_id, status from {LOG}"))
    unacknowledged = {e for e, s in after_first.items() if s != "accepted"}
    assert first.sent == 6000 and first.unknown == 1000
    assert dict(query(warehouse, f"select http_status, count(*) from {LOG} where status = 'failed' group by 1")) == {
        500: 1000,
        429: 1000,
    }
    assert 0 < first.rejected <= 12 and first.accepted == 3000 - first.rejected
    assert set(api.state.acknowledged) == {e for e, s in after_first.items() if s == "accepted"}

    api.state.reject_customers = set()
    before = len(api.state.received)
    second = push()
    resent = last_ids(api, before)
    assert sorted(resent) == sorted(unacknowledged)  # each owed item once, no acknowledged one
    owed = len(unacknowledged)
    assert (second.sent, second.accepted, second.unchanged) == (owed, owed, 6000 - owed)

    before = len(api.state.received)
    third = push()
    assert (third.sent, third.unchanged) == (0, 6000) and len(api.state.received) == before
    assert len(api.state.acknowledged) == 6000 and set(api.state.acknowledged.values()) == {1}

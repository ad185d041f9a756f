"""`elt push` against the ASAPP metadata API emulator over real HTTP (which validates every request against
ASAPP's OpenAPI spec): batching, partial success, change detection, back-off, local validation, dry run, Ctrl-C.
What each kind of answer becomes is in test_push_answers.py."""

from __future__ import annotations

import bisect
import itertools
import signal
import threading
import time
from collections.abc import Iterator

import orjson
import pytest
import requests

from loaders.asapp_metadata import _Log, push, settings
from loaders.asapp_metadata.client import PushError, RateLimiter
from loaders.sandbox.asapp_api_emulator import AsappApiEmulator
from tests.python.helpers import Warehouse, elt, query

LOG = "asapp_metadata.asapp_metadata_push_log"


def write_mart(db: Warehouse, n: int, bad: dict[int, dict[str, str]] | None = None, status: str = "known") -> None:
    """The two mart tables `elt build` produces, with n rows (row i overridden by bad[i])."""
    db.execute_many("create schema if not exists marts", [])
    for table in ("customer_metadata", "customer_metadata_attributes"):
        db.execute_many(f"drop table if exists marts.{table}", [])
    db.execute_many(
        """create table marts.customer_metadata (external_conversation_id varchar,
        external_customer_id varchar, status varchar, phone_number varchar, email_address varchar,
        user_id varchar, address_country varchar, address_state varchar, address_zipcode varchar)""",
        [],
    )
    db.execute_many(
        """create table marts.customer_metadata_attributes (external_conversation_id
        varchar, external_customer_id varchar, attribute_name varchar, attribute_value varchar,
        attribute_rank bigint)""",
        [],
    )
    rows = []
    for i in range(n):
        row = {
            "c": f"conv-{i}",
            "u": f"c{i}",
            "status": status,
            "phone": f"+1555{i:07d}",
            "email": f"c{i}@example.com",
            **(bad or {}).get(i, {}),
        }
        rows.append((row["c"], row["u"], row["status"], row["phone"], row["email"], f"user{i}", "SE", None, "11122"))
    db.execute_many("insert into marts.customer_metadata values (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute_many(
        "insert into marts.customer_metadata_attributes values (?, ?, ?, ?, ?)",
        [(f"conv-{i}", f"c{i}", "tier", "gold", 1) for i in range(min(n, 10))],
    )


@pytest.fixture
def api(warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> Iterator[AsappApiEmulator]:
    emu = AsappApiEmulator()
    emu.start()
    for k, v in emu.env().items():
        monkeypatch.setenv(k, v)
    yield emu
    emu.stop()


def sent(api: AsappApiEmulator) -> list[int]:
    return [len(ids) for _, _, ids in api.state.received]


def ctrl_c_once_received(api: AsappApiEmulator, requests: int) -> None:
    """SIGINT to this (the main) thread, as Ctrl-C, once the API has received `requests` requests."""
    main = threading.get_ident()

    def ctrl_c() -> None:
        deadline = time.monotonic() + 30
        while len(api.state.received) < requests and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=ctrl_c, daemon=True).start()


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_batches_of_1000_and_everything_logged(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 2500)
    stats = push()
    assert sorted(sent(api)) == [500, 1000, 1000]  # sent concurrently: any order
    assert (stats.sent, stats.accepted, stats.failed, stats.batches) == (2500, 2500, 0, 3)
    assert len(api.state.persisted) == 2500
    assert query(warehouse, f"select status, count(*), count(distinct batch_id) from {LOG} group by 1") == [
        ("accepted", 2500, 3)
    ]
    # every log row has dlt's row id, as the rows written as dicts had (a push log created by those keeps it
    # NOT NULL), and the time it was answered, with its zone
    assert query(warehouse, f"select count(distinct _dlt_id), count(pushed_at) from {LOG}") == [(2500, 2500)]
    with_attributes = [i["attributes"] for i in api.state.persisted.values() if "attributes" in i]
    assert with_attributes and all(a == [{"name": "tier", "value": "gold"}] for a in with_attributes)


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_a_mart_larger_than_a_log_part_is_streamed_whole_and_once(
    api: AsappApiEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small log parts: the log goes to dlt in three parts while the plan is read (on Postgres, a server-side cursor)
    monkeypatch.setattr(settings, "LOG_PART_ROWS", 2000)
    write_mart(warehouse, 5500)
    extra = [
        (f"conv-{i}", f"c{i}", name, value, rank)
        for i in (1500, 2999, 5499)
        for name, value, rank in (("plan", "basic", 2), ("region", "north", 1))
    ]
    warehouse.execute_many("insert into marts.customer_metadata_attributes values (?, ?, ?, ?, ?)", extra)
    progress: list[tuple[int, int]] = []
    stats = push(on_progress=lambda done, total: progress.append((done, total)))
    assert sorted(sent(api)) == [500] + [1000] * 5  # full batches but the last (sent concurrently: any order)
    assert (stats.rows, stats.sent, stats.accepted, stats.batches) == (5500, 5500, 5500, 6)
    assert query(warehouse, f"select count(*), count(distinct external_conversation_id) from {LOG}") == [(5500, 5500)]
    persisted = {(i["externalConversationId"]): i for i in api.state.persisted.values()}
    assert len(persisted) == 5500
    for i in (1500, 2999, 5499):  # a key's attributes stay with it, in rank order
        assert [a["name"] for a in persisted[f"conv-{i}"]["attributes"]] == ["region", "plan"]
    assert persisted["conv-3"]["attributes"] == [{"name": "tier", "value": "gold"}]
    assert "attributes" not in persisted["conv-4000"]
    assert progress[-1] == (5500, 5500) and progress == sorted(progress) and len(progress) > 3
    again = push()
    assert (again.sent, again.unchanged) == (0, 5500)  # each row met its last outcome across the parts


def test_batches_stay_full_among_invalid_rows(
    api: AsappApiEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "LOG_PART_ROWS", 2000)
    write_mart(warehouse, 5000, bad={i: {"u": f"bad id {i}"} for i in range(0, 5000, 2)})
    stats = push()
    # every other row is invalid: the log is handed on while a batch is being filled, and every batch but the
    # last is full
    assert sorted(sent(api)) == [500, 1000, 1000]
    assert (stats.invalid, stats.sent, stats.accepted) == (2500, 2500, 2500)
    assert query(warehouse, f"select status, count(*) from {LOG} group by 1 order by 1") == [
        ("accepted", 2500),
        ("invalid", 2500),
    ]
    assert len(stats.errors) < 20  # a sample of the reasons, not one per row


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_mart_of_invalid_rows_is_logged_in_parts(
    api: AsappApiEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, dry_run: bool
) -> None:
    monkeypatch.setattr(settings, "LOG_PART_ROWS", 1000)
    write_mart(warehouse, 5000, bad={i: {"u": f"bad id {i}"} for i in range(5000)})
    held: list[int] = []  # instrumentation: how many log rows were held each time they were handed on
    drain = _Log.drain
    monkeypatch.setattr(_Log, "drain", lambda self: (held.append(len(self)), drain(self))[1])
    stats = push(dry_run=dry_run)
    assert stats.invalid == 5000 and api.state.received == []
    if dry_run:  # counted and reported, never logged
        assert held == []
    else:  # no row is to be sent, yet the log never holds more than a part: memory does not grow with the mart
        assert sum(held) == 5000 and max(held) == 1000
        assert query(warehouse, f"select status, count(*) from {LOG} group by 1") == [("invalid", 5000)]


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_partial_success_is_recorded_and_retried_next_run(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 20)
    api.state.reject_customers = {"c7"}
    stats = push()
    assert (stats.accepted, stats.failed) == (19, 1)
    assert query(
        warehouse, f"select external_customer_id, status, http_status, error from {LOG} where status <> 'accepted'"
    ) == [("c7", "rejected", 200, "FAIL_BAD_PARAMS: ERROR: customer is unknown")]
    api.state.reject_customers = set()
    stats = push()
    assert sent(api) == [20, 1]  # only the failed item again
    assert (stats.sent, stats.accepted, stats.unchanged) == (1, 1, 19)


def test_unchanged_rows_are_not_sent_again_changed_ones_are(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 30)
    push()
    assert push().sent == 0
    assert sent(api) == [30]
    write_mart(warehouse, 30, bad={3: {"status": "vip"}})
    stats = push()
    assert sent(api) == [30, 1] and stats.unchanged == 29
    changed = api.state.received[-1][2][0]
    assert api.state.persisted[changed]["status"] == "vip"


def test_event_id_is_deterministic(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 3)
    push()
    first = set(api.state.received[0][2])
    api.state.received.clear()
    warehouse.execute_many(f"delete from {LOG}", [])  # forget what was sent: the same items get the same eventIds
    push()
    assert set(api.state.received[0][2]) == first


def test_429_is_retried_after_1_2_and_4_seconds(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 5)
    api.state.inject = [429, 429, 429]
    stats = push()
    times = [t for t, _, _ in api.state.received]
    assert [s for _, s, _ in api.state.received] == [429, 429, 429, 200]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0 and gaps[2] >= 4.0
    assert stats.accepted == 5


def test_5xx_is_retried_after_250_500_1000_ms_then_recorded(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 5)
    api.state.inject = [500, 503, 502, 500]
    stats = push()
    times = [t for t, _, _ in api.state.received]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 4  # first try and three retries, then it gives up
    assert gaps[0] >= 0.25 and gaps[1] >= 0.5 and gaps[2] >= 1.0
    assert stats.failed == 5
    assert query(warehouse, f"select distinct status, http_status from {LOG}") == [("failed", 500)]
    assert push().accepted == 5  # retried on the next run


def test_other_4xx_are_not_retried(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 5)
    api.state.inject = [422]
    stats = push()
    assert len(api.state.received) == 1 and stats.failed == 5


def test_409_means_already_persisted(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 4)
    api.state.inject = [409]
    stats = push()
    assert stats.accepted == 4
    assert query(warehouse, f"select distinct status from {LOG}") == [("already_persisted",)]
    assert push().sent == 0


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_invalid_items_are_rejected_locally_with_reasons(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    # c3's email has an "@" (all Python's jsonschema asks of an email) but no valid domain: the API's schema check
    # (jsonschema-rs, as the emulator's) refuses it, and with it the whole batch, had it been sent
    bad = {1: {"u": "guest #1"}, 2: {"phone": "call me", "email": "nope"}, 3: {"email": "Z.@-.-_/_"}}
    write_mart(warehouse, 5, bad=bad)
    stats = push()
    assert stats.invalid == 3 and stats.sent == 2
    assert api.state.invalid_requests == []  # nothing the spec refuses ever reached the API
    reasons = dict(query(warehouse, f"select external_customer_id, error from {LOG} where status = 'invalid'"))
    assert reasons["guest #1"].startswith("externalCustomerId: does not match")
    assert "phoneNumber: does not match" in reasons["c2"] and "emailAddress: is not a valid email" in reasons["c2"]
    assert reasons["c3"] == "emailAddress: is not a valid email"
    assert push().sent == 0  # still invalid: not sent, not logged again
    assert query(warehouse, f"select count(*) from {LOG} where status = 'invalid'") == [(3,)]


def test_dry_run_sends_nothing(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 12, bad={0: {"u": "bad id"}})
    result = elt("push", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert api.state.received == []
    assert "externalConversationId" in result.stdout and "11" in result.stdout
    assert query(
        warehouse, "select count(*) from information_schema.tables where table_name = 'asapp_metadata_push_log'"
    ) == [(0,)]


def test_wrong_credentials_stop_with_a_clear_error_and_no_secret(
    api: AsappApiEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mart(warehouse, 2)
    monkeypatch.setenv("ASAPP_API__API_SECRET", "s3cr3t-value-that-must-not-leak")
    result = elt("push")
    assert result.returncode == 1
    assert "refused the credentials" in result.stderr
    assert "s3cr3t-value-that-must-not-leak" not in result.stdout + result.stderr


def test_refused_batch_stops_the_push_and_batches_in_flight_are_logged(
    api: AsappApiEmulator, warehouse: Warehouse
) -> None:
    write_mart(warehouse, 8000)
    api.state.inject = [401]  # the first request the API handles
    with pytest.raises(PushError, match="refused the credentials"):
        push()
    answered = [(status, ids) for _, status, ids in api.state.received]
    assert len(answered) < 8  # no batch was sent after the refusal was seen
    accepted = {i for status, ids in answered if status == 200 for i in ids}
    assert accepted and len(api.state.persisted) == len(accepted)
    logged = query(warehouse, f"select status, event_id from {LOG}")
    assert {e for s, e in logged if s == "accepted"} == accepted  # what the API took is known
    assert push().accepted == 8000 - len(accepted)  # the next push sends the rest


def test_batches_are_built_while_earlier_ones_are_in_flight(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 5000)  # five batches, well under a chunk of log rows
    checked: list[tuple[int, float]] = []
    push(on_progress=lambda done, total: checked.append((done, time.monotonic())))
    first_request = min(t for t, _, _ in api.state.received)
    # the first batch went out as soon as it was built, not once the whole mart was
    assert first_request < next(t for done, t in checked if done == 5000)
    assert sent(api) == [1000] * 5


def test_interrupted_while_building_what_was_sent_is_logged(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 8000)

    def interrupt(done: int, total: int) -> None:
        if done == 6000:  # Ctrl-C while the next batch is built, with earlier ones in flight
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        push(on_progress=interrupt)
    accepted = {i for _, status, ids in api.state.received if status == 200 for i in ids}
    assert accepted and len(accepted) < 8000 and len(api.state.persisted) == len(accepted)
    logged = query(warehouse, f"select event_id from {LOG} where status = 'accepted'")
    assert {e for (e,) in logged} == accepted  # every batch sent was answered and logged before the stop
    again = push()
    assert (again.sent, again.unchanged) == (8000 - len(accepted), len(accepted))


def test_ctrl_c_while_batches_are_in_flight_waits_for_their_answers_and_logs_them(
    api: AsappApiEmulator, warehouse: Warehouse
) -> None:
    write_mart(warehouse, 2000)
    api.state.answer_delay = 0.5  # a slow API: both batches are sent, neither answered yet
    ctrl_c_once_received(api, 2)
    with pytest.raises(KeyboardInterrupt):
        push()
    assert [status for _, status, _ in api.state.received] == [200, 200]
    logged = query(warehouse, f"select status, count(*) from {LOG} group by 1")
    assert logged == [("accepted", 2000)]  # the answers that came after Ctrl-C are known
    assert push().sent == 0


def test_ctrl_c_in_the_middle_of_a_push_stops_it_and_every_batch_sent_is_logged(
    api: AsappApiEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a log part per batch: dlt writes one while others are sent, so Ctrl-C may come while dlt's code runs
    monkeypatch.setattr(settings, "LOG_PART_ROWS", 1000)
    write_mart(warehouse, 12000)
    api.state.answer_delay = 0.2
    ctrl_c_once_received(api, 5)
    with pytest.raises(KeyboardInterrupt):
        push()
    received = {i for _, _, ids in api.state.received for i in ids}
    assert 5000 <= len(received) < 12000  # stopped: no batch built after Ctrl-C was sent
    assert {e for (e,) in query(warehouse, f"select event_id from {LOG}")} == received  # each one logged
    assert push().sent == 12000 - len(received)


def test_missing_mart_is_a_clear_error(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    result = elt("push")
    assert result.returncode == 1 and "run `elt build` first" in result.stderr


def test_missing_api_setting_names_it_and_sends_nothing(
    api: AsappApiEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mart(warehouse, 3)
    monkeypatch.delenv("ASAPP_API__API_SECRET")
    result = elt("push")
    assert result.returncode == 1
    said = result.stdout + result.stderr
    assert "missing setting(s) api_secret" in said and "ASAPP_API__API_SECRET" in said
    assert api.state.received == []


def test_rate_limiter_spaces_requests() -> None:
    limiter = RateLimiter(100.0)
    started = time.monotonic()
    for _ in range(51):
        limiter.wait()
    assert time.monotonic() - started >= 0.49  # 50 intervals of 10 ms


class Clock:
    """Time that passes only when the limiter sleeps or the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def sends(limiter: RateLimiter, clock: Clock, stalls: dict[int, float], n: int) -> list[float]:
    """The times of n requests through the limiter; before request i the sender stalls for stalls[i] seconds."""
    times = []
    for i in range(n):
        clock.now += stalls.get(i, 0.0)
        limiter.wait()
        times.append(clock.now)
    return times


def test_rate_limiter_catches_up_after_a_stall() -> None:
    clock = Clock()
    limiter = RateLimiter(100.0, clock=lambda: clock.now, sleep=clock.sleep)
    times = sends(limiter, clock, {3: 0.05}, 10)
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    # request 3 comes 40 ms after its slot: it and the next four go at once, on the slots missed; then the
    # schedule goes on as planned
    assert gaps == [0.01, 0.01, 0.05, 0.0, 0.0, 0.0, 0.0, 0.01, 0.01]
    assert times[-1] - times[0] == pytest.approx(0.09)  # 10 requests in 90 ms: the stall cost nothing


def test_rate_limiter_never_exceeds_the_limit_in_any_second() -> None:
    clock = Clock()
    limiter = RateLimiter(100.0, catch_up=5.0, clock=lambda: clock.now, sleep=clock.sleep)
    times = sends(limiter, clock, {0: 0.0, 50: 2.0, 180: 0.7}, 400)
    busiest = max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))
    assert busiest == 100  # a long catch-up would have sent ~250 within a second without the window
    assert times == sorted(times)


def test_batch_with_every_item_refused_is_recorded_as_rejected(api: AsappApiEmulator, warehouse: Warehouse) -> None:
    write_mart(warehouse, 3)
    api.state.reject_customers = {"c0", "c1", "c2"}
    stats = push()
    assert [s for _, s, _ in api.state.received] == [400]
    assert stats.failed == 3
    assert query(warehouse, f"select distinct status, http_status from {LOG}") == [("rejected", 400)]


def test_the_emulator_refuses_what_breaks_the_spec_after_requests_that_did_not() -> None:
    # the emulator skips openapi-core for requests shaped like one it passed; the body is still checked whole
    item = {"externalConversationId": "conv-1", "externalCustomerId": "c1", "eventId": "e-1", "status": "known"}
    with AsappApiEmulator() as api:
        env = api.env()
        url = env["ASAPP_API__BASE_URL"] + settings.ENDPOINT
        headers = {"asapp-api-id": env["ASAPP_API__API_ID"], "asapp-api-secret": env["ASAPP_API__API_SECRET"]}
        session = requests.Session()
        good = session.post(url, json={"items": [item]}, headers=headers)
        bad_item = session.post(url, json={"items": [item, {**item, "phoneNumber": "call me"}]}, headers=headers)
        bad_type = session.post(
            url, data=orjson.dumps({"items": [item]}), headers={**headers, "Content-Type": "text/plain"}
        )
        again = session.post(url, json={"items": [item]}, headers=headers)
    assert [r.status_code for r in (good, bad_item, bad_type, again)] == [200, 400, 400, 200]
    assert "items/1/phoneNumber" in bad_item.json()["results"][0]["error"]
    assert len(api.state.invalid_requests) == 2

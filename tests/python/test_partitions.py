"""Partitions the way a real export server gets them wrong or late, against a real OpenSSH sshd: folder names
outside the layout or the calendar, partitions dated in the future, partitions appearing late or re-exported
(restated) after their load, versions export_docs.yaml does not document. Each has a defined outcome, and a run
after it exits cleanly and loads the next good partition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from loaders import runtime
from loaders.loads import load_asapp
from loaders.sandbox.exports import partition_dir, write_partition
from tests.python.helpers import Warehouse, elt, query, scalar

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
FEED = "convos_intents"


def intents(*rows: tuple[int, str], instance: str = "2026-11-01 10:00:00") -> list[dict[str, object]]:
    return [
        {"issue_id": i, "final_intent_code": code, "instance_ts": instance, "company_name": "acme"} for i, code in rows
    ]


def raw_codes(db: Warehouse) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for issue, code in query(db, f"select issue_id, final_intent_code from asapp_raw.{FEED} order by _asapp_loaded_at"):
        found.setdefault(int(issue), []).append(code)
    return found


def staged(db: Warehouse) -> dict[int, str]:
    return {int(i): c for i, c in query(db, f"select issue_id, final_intent_code from staging.stg_asapp__{FEED}")}


def decoy(exports: Path, dt_name: str, hr: str = "hr=10", mi: str = "mi=00") -> Path:
    """A complete partition under folder names of the caller's choosing."""
    folder = exports / FEED / "version=1" / "format=jsonl" / dt_name / hr / mi
    folder.mkdir(parents=True)
    (folder / f"{FEED}.jsonl").write_text('{"issue_id": 666, "final_intent_code": "DECOY"}\n')
    (folder / "_SUCCESS").write_bytes(b"")
    return folder


ARABIC_DT = "dt=\u0662\u0660\u0662\u0666-\u0661\u0661-\u0660\u0661"  # 2026-11-01 in Arabic-Indic digits
BAD_NAMES = [
    ("dt=2024-02-30", "hr=10", "mi=00"),  # no such day
    ("dt=2026-11-01", "hr=24", "mi=00"),  # no such hour
    ("dt=2026-11-01", "hr=10", "mi=60"),  # no such minute
    (ARABIC_DT, "hr=10", "mi=00"),  # Arabic-Indic digits (\d matches them)
    ("dt=2026-11-01\n", "hr=10", "mi=00"),  # `$` matches before a trailing newline
    ("dt=2026-11-01", "hr=1\u0660", "mi=00"),
]


def test_names_outside_the_calendar_are_reported_and_never_block(exports: Path, warehouse: Warehouse) -> None:
    # the real partition of 10:00 is not complete yet; folders that look like it are
    real = write_partition(exports, FEED, T0, intents((1, "REAL")), success=False)
    for names in BAD_NAMES:
        if names[0] == "dt=2026-11-01":
            folder = real.parent.parent / names[1] / names[2]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{FEED}.jsonl").write_text('{"issue_id": 666, "final_intent_code": "DECOY"}\n')
            (folder / "_SUCCESS").write_bytes(b"")
        else:
            decoy(exports, *names)
    # a file where a folder belongs, and a folder where a data file belongs
    (exports / FEED / "version=1" / "format=jsonl" / "dt=2026-11-02").write_text("not a folder")
    write_partition(exports, FEED, T0.replace(hour=9), intents((2, "NINE")))
    (partition_dir(exports, FEED, T0.replace(hour=9)) / f"{FEED}.jsonl.01").mkdir()

    stats = load_asapp()
    assert any("dt=2024-02-30" in name for name in stats.ignored)
    assert any(name.endswith("/hr=24") for name in stats.ignored)
    assert any(name.endswith("/mi=60") for name in stats.ignored)
    assert any(name.endswith(f"/{FEED}.jsonl.01") for name in stats.ignored)
    assert any(name.endswith("/dt=2026-11-02") for name in stats.ignored)
    for _ in range(2):  # and again: nothing of it sticks in the state
        result = elt("load", "asapp")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "outside ASAPP's layout were ignored" in result.stdout
        assert "'dt=2026-11-01\\n'" in result.stdout + result.stderr  # shown escaped, by name
        assert repr(ARABIC_DT) in result.stdout + result.stderr
    assert raw_codes(warehouse) == {2: ["NINE"]}  # no decoy row, and the real 10:00 is still waiting

    (real / "_SUCCESS").write_bytes(b"")  # the real partition completes: the decoys never marked it loaded
    stats = load_asapp()
    assert stats.feeds[FEED].partitions_loaded == 1
    assert raw_codes(warehouse) == {1: ["REAL"], 2: ["NINE"]}


def test_a_partition_dated_ahead_is_held_back_and_moves_nothing(exports: Path, warehouse: Warehouse) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    write_partition(exports, FEED, now - timedelta(hours=5), intents((1, "A")))
    write_partition(exports, FEED, now + timedelta(days=400), intents((2, "FUTURE")))
    stats = load_asapp()
    assert stats.feeds[FEED].partitions_loaded == 1
    assert stats.feeds[FEED].held == [f"version=1/format=jsonl/dt={now + timedelta(days=400):%Y-%m-%d/hr=%H}/mi=00"]
    # the listing still starts where the loaded partitions are: an hour that arrives late still loads
    write_partition(exports, FEED, now - timedelta(hours=6), intents((3, "LATE")))
    stats = load_asapp()
    assert stats.feeds[FEED].partitions_loaded == 1
    assert len(stats.feeds[FEED].held) == 1
    assert raw_codes(warehouse) == {1: ["A"], 3: ["LATE"]}
    result = elt("load", "asapp")
    assert result.returncode == 0, result.stderr
    assert "held back" in result.stdout


def test_a_late_partition_is_loaded_by_a_rescan(
    exports: Path, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    for day in (1, 2, 3, 4, 5):
        write_partition(exports, FEED, T0.replace(day=day), intents((day, f"D{day}")))
    stats = load_asapp()
    assert stats.feeds[FEED].rescanned  # the first listing is whole
    write_partition(exports, FEED, T0.replace(day=1, hour=12), intents((100, "LATE")))  # behind the window
    stats = load_asapp()
    assert not stats.feeds[FEED].rescanned
    assert stats.feeds[FEED].partitions_loaded == 0  # a plain run's listing stays bounded by the window

    result = elt("load", "asapp", "--rescan")
    assert result.returncode == 0, result.stderr
    assert scalar(warehouse, f"select count(*) from asapp_raw.{FEED} where issue_id = 100") == 1
    result = elt("load", "asapp", "--rescan")  # nothing changed since: nothing is read again
    assert result.returncode == 0, result.stderr
    assert scalar(warehouse, f"select count(*) from asapp_raw.{FEED}") == 6

    # a plain run rescans by itself once the last rescan is older than RESCAN_HOURS
    write_partition(exports, FEED, T0.replace(day=2, hour=12), intents((200, "LATER")))
    assert load_asapp().feeds[FEED].partitions_loaded == 0
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__RESCAN_HOURS", "0")
    stats = load_asapp()
    assert stats.feeds[FEED].rescanned and stats.feeds[FEED].partitions_loaded == 1
    assert scalar(warehouse, f"select count(*) from asapp_raw.{FEED} where issue_id = 200") == 1

    status = elt("status")
    assert status.returncode == 0, status.stderr
    assert "rescanned" in status.stdout


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_a_restated_partition_supersedes_its_earlier_load(exports: Path, warehouse: Warehouse) -> None:
    first = write_partition(exports, FEED, T0, intents((1, "OLD"), (2, "KEPT")))
    write_partition(exports, FEED, T0.replace(hour=11), intents((3, "OTHER")))
    load_asapp()
    assert runtime.run_dbt(["build", "--select", f"stg_asapp__{FEED}"])
    assert staged(warehouse) == {1: "OLD", 2: "KEPT", 3: "OTHER"}

    # ASAPP re-exports the 10:00 partition: issue 1 restated with the same ordering key, issue 2 absent
    for f in first.iterdir():
        f.unlink()
    write_partition(exports, FEED, T0, intents((1, "RESTATED"), (4, "NEW")))
    stats = load_asapp()  # a plain run passes a loaded partition by
    assert stats.feeds[FEED].partitions_loaded == 0
    stats = load_asapp(rescan=True)
    assert stats.feeds[FEED].restated == ["version=1/format=jsonl/dt=2026-11-01/hr=10/mi=00"]
    assert raw_codes(warehouse)[1] == ["OLD", "RESTATED"]  # raw keeps every version, with its lineage
    assert load_asapp(rescan=True).feeds[FEED].partitions_loaded == 0  # loaded once

    assert runtime.run_dbt(["build", "--select", f"stg_asapp__{FEED}"])  # incremental
    incremental = staged(warehouse)
    assert incremental == {1: "RESTATED", 2: "KEPT", 3: "OTHER", 4: "NEW"}
    assert runtime.run_dbt(["build", "--select", f"stg_asapp__{FEED}", "--full-refresh"])
    assert staged(warehouse) == incremental

    restated = query(warehouse, "select partition, restated from asapp_raw._partitions where restated")
    assert restated == [("version=1/format=jsonl/dt=2026-11-01/hr=10/mi=00", True)]


def test_state_of_an_older_version_with_invalid_dates_does_not_block(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, FEED, T0, intents((1, "A")))
    load_asapp()
    # what an older version could leave in the state: a waiting partition with a day that does not exist
    import dlt

    pipeline = dlt.attach("asapp_sftp", pipelines_dir=str(runtime.pipelines_dir()))
    with pipeline.managed_state(extract_state=True) as state:
        feed_state = state["sources"]["asapp_sftp"]["feeds"][FEED]
        feed_state["waiting"]["version=1/format=jsonl/dt=2024-02-30/hr=10/mi=00"] = "2026-11-01T00:00:00+00:00"
    write_partition(exports, FEED, T0.replace(hour=11), intents((2, "B")))
    stats = load_asapp()
    assert stats.feeds[FEED].partitions_loaded == 1
    assert raw_codes(warehouse) == {1: ["A"], 2: ["B"]}


def test_a_version_export_docs_does_not_document_stays_in_raw(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, FEED, T0, intents((1, "V1")))
    write_partition(exports, FEED, T0.replace(hour=11), intents((1, "V2"), (2, "V2 ONLY")), version="2")
    result = elt("load", "asapp")
    assert result.returncode == 0, result.stderr
    assert "partitions of version 2 loaded" in " ".join(result.stdout.split())
    assert query(warehouse, f"select _asapp_version, count(*) from asapp_raw.{FEED} group by 1 order by 1") == [
        ("1", 1),
        ("2", 2),
    ]
    assert runtime.run_dbt(["build", "--select", f"stg_asapp__{FEED}"])
    assert staged(warehouse) == {1: "V1"}  # staged under the documented version's schema only


def test_a_rejected_line_does_not_send_the_next_partition_to_rejects(exports: Path, warehouse: Warehouse) -> None:
    bad = write_partition(exports, FEED, T0, intents((1, "A")))
    with (bad / f"{FEED}.jsonl").open("a") as f:
        f.write("{not json\n")
    write_partition(exports, FEED, T0.replace(hour=11), intents((2, "B"), (3, "C")))
    stats = load_asapp()
    assert stats.feeds[FEED].rejected == 1
    assert raw_codes(warehouse) == {1: ["A"], 2: ["B"], 3: ["C"]}
    assert scalar(warehouse, "select count(*) from asapp_raw._rejects") == 1


def test_status_reports_what_the_last_rescan_did_not_load(exports: Path, warehouse: Warehouse) -> None:
    from loaders.status import asapp_status

    write_partition(exports, FEED, T0, intents((1, "A")))
    write_partition(exports, FEED, T0.replace(hour=11), intents((2, "B")), success=False)
    write_partition(exports, FEED, T0.replace(year=2099), intents((3, "C")))
    load_asapp(rescan=True)
    status = next(s for s in asapp_status() if s.feed == FEED)
    assert status.rescanned_at is not None
    assert (status.not_loaded, status.restated, status.waiting) == (2, 0, 1)  # one waiting, one held back
    result = elt("status")
    assert result.returncode == 0, result.stderr
    assert "not loaded: what it found and did not load" in " ".join(result.stdout.split())


def test_a_server_export_docs_over_the_cap_is_not_downloaded(exports: Path, warehouse: Warehouse) -> None:
    from loaders.export_docs.untrusted import MAX_BYTES

    (exports / "export_docs.yaml").write_bytes(b"#" * (MAX_BYTES + 1))
    write_partition(exports, FEED, T0, intents((1, "A")))
    result = elt("load", "asapp", "--strict")
    assert result.returncode == 1
    assert f"larger than {MAX_BYTES} bytes" in " ".join((result.stdout + result.stderr).split())
    assert scalar(warehouse, "select count(*) from information_schema.tables where table_name = 'convos_intents'") == 0
    result = elt("load", "asapp")  # without --strict: a warning, and the feeds load
    assert result.returncode == 0, result.stderr
    assert f"larger than {MAX_BYTES} bytes" in " ".join((result.stdout + result.stderr).split())
    assert raw_codes(warehouse) == {1: ["A"]}

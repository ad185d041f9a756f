"""dbt on data loaded over SFTP: the newest version of each record wins (ordering key, then partition time,
split, line), incremental runs equal a full refresh, typing is lenient, missing tables/columns don't break."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loaders import runtime
from loaders.loads import load_asapp
from loaders.sandbox.exports import write_partition
from tests.python.helpers import Warehouse, elt, query, scalar

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def intent(issue: int, code: str, instance: str, **extra: object) -> dict[str, object]:
    return {"issue_id": issue, "final_intent_code": code, "instance_ts": instance, "company_name": "acme", **extra}


def staged_intents(db: Path) -> dict[int, str]:
    return dict(query(db, "select issue_id, final_intent_code from staging.stg_asapp__convos_intents"))


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_newest_version_wins_and_incremental_equals_full_refresh(exports: Path, warehouse: Warehouse) -> None:
    write_partition(
        exports,
        "convos_intents",
        T0,
        [
            intent(1, "A", "2026-11-01 10:00:00"),
            intent(2, "X", "2026-11-01 11:00:00"),
            intent(3, "P0", "2026-11-01 10:00:00"),
        ],
    )
    write_partition(
        exports,
        "convos_intents",
        T0.replace(hour=11),
        [
            intent(1, "B", "2026-11-01 10:00:00"),  # tie on the ordering key: the later partition wins
            intent(2, "Y", "2026-11-01 10:00:00"),  # older ordering key in a newer partition: X stays
            intent(3, "P1", "2026-11-01 10:00:00"),
            intent(3, "P2", "2026-11-01T10:00:00.000000+00:00"),  # same time, later line of the same file wins
        ],
        splits=1,
    )
    load_asapp()
    assert runtime.run_dbt(["build", "--select", "stg_asapp__convos_intents+"])
    assert staged_intents(warehouse) == {1: "B", 2: "X", 3: "P2"}

    # Next hour: an older version of issue 1 arrives late, issue 4 is new. The incremental run must still
    # keep B (it compares with what is already staged), and equal a full refresh.
    write_partition(
        exports,
        "convos_intents",
        T0.replace(hour=12),
        [
            intent(1, "C", "2026-11-01 09:00:00"),
            intent(4, "N", "2026-11-01 12:00:00"),
        ],
        splits=2,
        gz=True,
    )
    load_asapp()
    assert runtime.run_dbt(["build", "--select", "stg_asapp__convos_intents"])
    # every column but _asapp_loaded_at (a full refresh re-reads rows loaded at different times)
    columns = ", ".join(
        f"{c}"
        for c in [
            "issue_id",
            "final_intent_code",
            "customer_id",
            "instance_ts",
            "first_utterance_ts",
            "_asapp_record_key",
            "_asapp_partition_at",
            "_asapp_file",
            "_asapp_split",
            "_asapp_line",
            "_dlt_load_id",
        ]
    )
    incremental = query(warehouse, f"select {columns} from staging.stg_asapp__convos_intents order by issue_id")
    assert staged_intents(warehouse) == {1: "B", 2: "X", 3: "P2", 4: "N"}
    assert runtime.run_dbt(["build", "--select", "stg_asapp__convos_intents", "--full-refresh"])
    full = query(warehouse, f"select {columns} from staging.stg_asapp__convos_intents order by issue_id")
    assert incremental == full


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_incremental_replaces_staged_versions_whatever_their_key_holds(exports: Path, warehouse: Warehouse) -> None:
    """A newer version replaces the staged one in an incremental run when the key's columns are set, when one is
    null, and when a text column holds '<null>' (the hash reads it as null): the staged versions are matched on
    the key's columns as well as its hash on DuckDB, and on the hash alone for a key with a null."""
    feed, model = "issue_entity_genagent", "staging.stg_asapp__issue_entity_genagent"  # key: company_marker, issue_id

    def row(marker: str | None, issue: int, version: str) -> dict[str, object]:
        return {"company_marker": marker, "issue_id": issue, "company_name": version}

    write_partition(
        exports, feed, T0, [row("m", 1, "a1"), row(None, 2, "b1"), row("<null>", 3, "c1"), row("m", 4, "d1")]
    )
    load_asapp()
    assert runtime.run_dbt(["build", "--select", f"stg_asapp__{feed}"])
    write_partition(
        exports,
        feed,
        T0.replace(hour=11),
        [row("m", 1, "a2"), row(None, 2, "b2"), row(None, 3, "c2"), row("m", 5, "e1")],
    )
    load_asapp()
    # dbt build also runs the model's unique test on (company_marker, issue_id)
    assert runtime.run_dbt(["build", "--select", f"stg_asapp__{feed}"])
    listed = f"select issue_id, company_marker, company_name, _asapp_record_key, _asapp_partition_at from {model}"
    incremental = sorted(query(warehouse, listed))
    expected = [(1, "m", "a2"), (2, None, "b2"), (3, None, "c2"), (4, "m", "d1"), (5, "m", "e1")]
    assert [(r[0], r[1], r[2]) for r in incremental] == expected
    # older versions (an earlier partition) arriving late lose to the staged ones, null in the key or not
    write_partition(exports, feed, T0.replace(hour=9), [row("m", 1, "a0"), row(None, 2, "b0"), row("<null>", 3, "c0")])
    load_asapp()
    assert runtime.run_dbt(["build", "--select", f"stg_asapp__{feed}"])
    incremental = sorted(query(warehouse, listed))
    assert [(r[0], r[1], r[2]) for r in incremental] == expected
    assert runtime.run_dbt(["build", "--select", f"stg_asapp__{feed}", "--full-refresh"])
    assert sorted(query(warehouse, listed)) == incremental


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_feed_without_ordering_key_uses_insertion_order(exports: Path, warehouse: Warehouse) -> None:
    base = {"issue_id": 7, "customer_id": 1}
    write_partition(exports, "convos_metrics", T0, [{**base, "total_handle_time": 1.0}])
    write_partition(
        exports,
        "convos_metrics",
        T0.replace(hour=11),
        [{**base, "total_handle_time": 2.0}, {"issue_id": 8, "total_handle_time": 5.0}],
        splits=2,
    )
    write_partition(exports, "convos_metrics", T0.replace(hour=11, minute=15), [{**base, "total_handle_time": 3.0}])
    load_asapp()
    assert runtime.run_dbt(["build", "--select", "stg_asapp__convos_metrics"])
    assert dict(query(warehouse, "select issue_id, total_handle_time from staging.stg_asapp__convos_metrics")) == {
        7: 3.0,
        8: 5.0,
    }


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_types_are_cast_leniently(exports: Path, warehouse: Warehouse) -> None:
    write_partition(
        exports,
        "convos_metrics",
        T0,
        [
            {"issue_id": 1, "first_utterance_ts": "2018-09-05 19:58:06", "assisted": True, "total_handle_time": 1.5},
            {"issue_id": 2, "first_utterance_ts": "2019-09-22T13:12:26.073000+00:00", "assisted": "false"},
            {"issue_id": 3, "first_utterance_ts": "2019-09-22T13:12:26.073000-05:00", "total_handle_time": "2.5"},
            {"issue_id": 4, "first_utterance_ts": "2018-09-05 19:58:06T00:01:16.203000+00:00"},
            {"issue_id": 5, "first_utterance_ts": "not a time", "total_handle_time": "n/a", "customer_id": "abc"},
        ],
    )
    load_asapp()
    # bad values warn (asapp_cast_failures) but never fail the build
    assert runtime.run_dbt(["build", "--select", "stg_asapp__convos_metrics", "source:asapp.convos_metrics"])
    results = json.loads((warehouse.parent / "target" / "run_results.json").read_text())["results"]
    (cast_test,) = [r for r in results if "asapp_cast_failures" in r["unique_id"]]
    assert cast_test["status"] == "warn"
    assert cast_test["failures"] == 3  # first_utterance_ts, total_handle_time, customer_id
    got = {
        r[0]: r[1:]
        for r in query(
            warehouse,
            "select issue_id, first_utterance_ts, assisted, total_handle_time, "
            "customer_id from staging.stg_asapp__convos_metrics",
        )
    }
    assert got[1] == (datetime(2018, 9, 5, 19, 58, 6), True, 1.5, None)
    assert got[2] == (datetime(2019, 9, 22, 13, 12, 26, 73000), False, None, None)
    assert got[3] == (datetime(2019, 9, 22, 18, 12, 26, 73000), None, 2.5, None)  # converted to UTC
    assert got[4] == (datetime(2018, 9, 5, 19, 58, 6), None, None, None)
    assert got[5] == (None, None, None, None)


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_a_raw_table_of_text_is_typed_by_staging(warehouse: Warehouse) -> None:
    # raw columns created as text (loaded before documented columns landed typed) are cast in staging instead
    text = "varchar" if warehouse.engine == "duckdb" else "text"
    at = datetime(2026, 11, 1, 10, 0)
    warehouse.execute_many("create schema if not exists asapp_raw", [])
    warehouse.execute_many(
        f"create table asapp_raw.convos_intents (issue_id {text}, disambig_count {text}, ftd_visit {text}, "
        f"instance_ts {text}, _asapp_feed {text}, _asapp_version {text}, _asapp_partition_at timestamp, "
        f"_asapp_file {text}, _asapp_split bigint, _asapp_line bigint, _asapp_loaded_at timestamp, "
        f"_dlt_load_id {text})",
        [],
    )
    warehouse.execute_many(
        "insert into asapp_raw.convos_intents values "
        "(?, ?, ?, ?, 'convos_intents', '1', ?, 'f.jsonl', null, ?, ?, 'l')",
        [
            ("1", "2", "true", "2026-11-01T10:00:00-05:00", at, 1, at),
            ("2", "many", "false", "2026-11-01 11:00:00", at, 2, at),
        ],
    )
    assert runtime.run_dbt(["build", "--select", "stg_asapp__convos_intents", "source:asapp.convos_intents"])
    assert query(
        warehouse,
        "select issue_id, disambig_count, ftd_visit, instance_ts from staging.stg_asapp__convos_intents order by 1",
    ) == [(1, 2, True, datetime(2026, 11, 1, 15, 0)), (2, None, False, datetime(2026, 11, 1, 11, 0))]
    results = json.loads((warehouse.parent / "target" / "run_results.json").read_text())["results"]
    (cast_test,) = [r for r in results if "asapp_cast_failures" in r["unique_id"]]
    assert cast_test["status"] == "warn" and cast_test["failures"] == 1  # "many"


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_missing_tables_and_key_columns_do_not_break_the_build(exports: Path, warehouse: Warehouse) -> None:
    # customer_feedback's key names company_marker, which its published column list lacks; here the data
    # lacks it too. Every other feed has no raw table at all.
    write_partition(
        exports,
        "customer_feedback",
        T0,
        [
            {
                "issue_id": 1,
                "last_rep_id": "r1",
                "question": "q",
                "instance_ts": "2026-11-01 10:00:00",
                "answer": "3",
                "last_event_ts": "2026-11-01 10:20:00",
            },
            {
                "issue_id": 1,
                "last_rep_id": "r1",
                "question": "q",
                "instance_ts": "2026-11-01 10:00:00",
                "answer": "5",
                "last_event_ts": "2026-11-01 10:40:00",
            },
        ],
    )
    load_asapp()
    assert runtime.run_dbt(["build"])
    assert query(warehouse, "select answer, company_marker from staging.stg_asapp__customer_feedback") == [("5", None)]
    assert scalar(warehouse, "select count(*) from staging.stg_asapp__utterances") == 0
    n_models = scalar(warehouse, "select count(*) from information_schema.tables where table_schema = 'staging'")
    assert n_models >= 43  # every feed, plus the APSIS staging models


def test_elt_run_summarises_loads_and_duplicates_removed(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, "convos_intents", T0, [intent(1, "A", "2026-11-01 10:00:00")])
    write_partition(exports, "convos_intents", T0.replace(hour=11), [intent(1, "B", "2026-11-01 11:00:00")])
    result = elt("run")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    line = next(x for x in result.stdout.splitlines() if "convos_intents" in x and "│" in x and x.count("│") == 5)
    assert [c.strip() for c in line.split("│")][1:-1] == ["convos_intents", "2", "1", "1"]
    assert "APSIS is not configured" in result.stdout and "push skipped" in result.stdout

"""dbt on a warehouse built before, on every engine: a build right after a build, and a build after a load, pass
whether a feed was delivered or never was; each staged column keeps its documented type from run to run (an
incremental run stops on any change of type: on_schema_change='fail')."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from loaders import runtime
from loaders.loads import load_asapp
from loaders.sandbox.exports import write_partition
from tests.python.helpers import Warehouse, query

# The engines these tests run on: values of the `warehouse` fixture (conftest.py) that run the whole project.
ENGINES = ["duckdb", "postgres"]

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
REP_CONVOS = "staging.stg_asapp__rep_convos"
INTENTS = "staging.stg_asapp__convos_intents"


def intent(issue: int, code: str, hour: int) -> dict[str, object]:
    return {"issue_id": issue, "final_intent_code": code, "instance_ts": f"2026-11-01 {hour}:00:00"}


def rep_convo(issue: int, rep: str, cross_talk: object) -> dict[str, object]:
    """A rep_convos row; cume_cross_talk_seconds is its one numeric(38,5) column."""
    return {
        "issue_id": issue,
        "rep_id": rep,
        "issue_assigned_ts": "2026-11-01 10:00:00",
        "cume_cross_talk_seconds": cross_talk,
        "is_ghost_customer": False,
    }


def column_type(warehouse: Warehouse, relation: str, column: str) -> tuple[str, int | None, int | None]:
    """(type name, numeric precision, numeric scale) of a column, from the engine's information_schema."""
    schema, table = relation.split(".")
    ((kind, precision, scale),) = query(
        warehouse,
        "select data_type, numeric_precision, numeric_scale from information_schema.columns "
        f"where table_schema = '{schema}' and table_name = '{table}' and column_name = '{column}'",
    )
    return str(kind).lower().split("(")[0], precision, scale


def rows_but_load_time(warehouse: Warehouse, relation: str) -> list[tuple[object, ...]]:
    """Every staged row, every column but _asapp_loaded_at (a full refresh reads rows loaded at other times)."""
    columns = [
        c
        for (c,) in query(
            warehouse,
            "select column_name from information_schema.columns "
            f"where table_schema || '.' || table_name = '{relation}' and column_name != '_asapp_loaded_at' "
            "order by ordinal_position",
        )
    ]
    return sorted(query(warehouse, f"select {', '.join(columns)} from {relation}"), key=repr)


@pytest.mark.parametrize("warehouse", ENGINES, indirect=True)
def test_run_twice_then_load_and_run_again(exports: Path, warehouse: Warehouse) -> None:
    """The whole project's models, run after run (their data tests run in the other tests: they check data, and a
    run after a run is about the models). Also, a lineage column staged narrower than the contract (_asapp_split
    as integer, where raw says bigint, as the earlier code staged it) is widened in place by the pre-hook
    asapp_widen_lineage, so that run goes on too."""
    # delivered: convos_intents; never delivered yet: rep_convos (with its numeric(38,5) column) and the others
    write_partition(exports, "convos_intents", T0, [intent(1, "A", 10), intent(2, "X", 10)])
    load_asapp()
    assert runtime.run_dbt(["run"])
    assert runtime.run_dbt(["run"])  # nothing new: each incremental model meets the table it staged
    assert column_type(warehouse, REP_CONVOS, "cume_cross_talk_seconds")[1:] == (38, 5)

    # the next hour: rep_convos is delivered for the first time, a delivered record has a newer version
    write_partition(
        exports,
        "rep_convos",
        T0.replace(hour=11),
        [rep_convo(1, "r1", 12.5), rep_convo(2, "r2", "1.23456"), rep_convo(3, "r3", None)],
    )
    write_partition(exports, "convos_intents", T0.replace(hour=11), [intent(1, "B", 11)])
    load_asapp()
    warehouse.execute_many(f"alter table {INTENTS} alter column _asapp_split set data type integer", [])
    assert column_type(warehouse, INTENTS, "_asapp_split")[0] == "integer"
    assert runtime.run_dbt(["run"])
    assert column_type(warehouse, INTENTS, "_asapp_split")[0] == "bigint"
    assert sorted(query(warehouse, f"select issue_id, cume_cross_talk_seconds from {REP_CONVOS}")) == [
        (1, Decimal("12.5")),
        (2, Decimal("1.23456")),
        (3, None),
    ]
    assert sorted(query(warehouse, f"select issue_id, final_intent_code from {INTENTS}")) == [(1, "B"), (2, "X")]
    assert column_type(warehouse, REP_CONVOS, "cume_cross_talk_seconds")[1:] == (38, 5)
    incremental = {m: rows_but_load_time(warehouse, m) for m in (REP_CONVOS, INTENTS)}
    assert runtime.run_dbt(["run", "--select", "stg_asapp__rep_convos", "stg_asapp__convos_intents", "--full-refresh"])
    assert {m: rows_but_load_time(warehouse, m) for m in (REP_CONVOS, INTENTS)} == incremental


@pytest.mark.parametrize("warehouse", ENGINES, indirect=True)
def test_a_raw_column_of_text_is_staged_in_its_documented_type_run_after_run(warehouse: Warehouse) -> None:
    """A raw column that holds text (loaded before documented columns landed typed) is cast by asapp_cast; the
    staged column has the documented type, numeric(38,5), on the first run and on the incremental run after it."""
    text = "varchar" if warehouse.engine == "duckdb" else "text"
    warehouse.execute_many("create schema if not exists asapp_raw", [])
    warehouse.execute_many(
        f"create table asapp_raw.rep_convos (issue_id {text}, rep_id {text}, issue_assigned_ts {text}, "
        f"cume_cross_talk_seconds {text}, _asapp_feed {text}, _asapp_version {text}, _asapp_partition_at timestamp, "
        f"_asapp_file {text}, _asapp_split bigint, _asapp_line bigint, _asapp_loaded_at timestamp, "
        f"_dlt_load_id {text})",
        [],
    )
    insert = (
        "insert into asapp_raw.rep_convos values (?, 'r1', '2026-11-01 10:00:00', ?, 'rep_convos', '1', ?, 'f.jsonl', "
        "null, 1, ?, 'l')"
    )
    at = datetime(2026, 11, 1, 10, 0)
    warehouse.execute_many(insert, [("1", "2.5", at, at)])
    assert runtime.run_dbt(["run", "--select", "stg_asapp__rep_convos"])
    later = datetime(2026, 11, 1, 11, 0)
    warehouse.execute_many(insert, [("2", "0.00001", later, later)])
    assert runtime.run_dbt(["run", "--select", "stg_asapp__rep_convos"])
    assert sorted(query(warehouse, f"select issue_id, cume_cross_talk_seconds from {REP_CONVOS}")) == [
        (1, Decimal("2.5")),
        (2, Decimal("0.00001")),
    ]
    assert column_type(warehouse, REP_CONVOS, "cume_cross_talk_seconds")[1:] == (38, 5)

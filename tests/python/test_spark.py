"""Spark (ELT_TARGET=spark): raw lands as parquet through dlt's filesystem destination and is registered as tables
when dbt starts; dbt-spark builds in this process. The Spark session starts with the first dbt command and serves
every test of this file after it (conftest: spark_home; `--dist loadfile` keeps a file on one worker), each test
on an empty catalog. So the staging tests the engines share (test_staging.py) run on Spark here."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from loaders import contract, runtime
from loaders.asapp_metadata import push
from loaders.loads import load_asapp
from loaders.sandbox.asapp_api_emulator import AsappApiEmulator
from loaders.sandbox.exports import write_partition
from tests.python import test_staging
from tests.python.helpers import Warehouse, query, scalar
from tests.python.test_flow import build_the_demo_day

pytestmark = pytest.mark.parametrize("warehouse", ["spark"], indirect=True)

LATER = datetime(2026, 11, 2, 3, 0, tzinfo=UTC)  # an hour after generate_tree's day


def on_spark(test: Callable[..., None]) -> Callable[..., None]:
    """A test of test_staging.py, collected here (with this file's parameter, spark) without its own engines."""

    def variant(**fixtures: Any) -> None:
        test(**fixtures)

    variant.__signature__ = inspect.signature(test)  # type: ignore[attr-defined]
    variant.__doc__ = test.__doc__
    return variant


# the newest version wins (ordering key, then partition time, split, file, line; ties), and the incremental run
# equals a full refresh; null key columns; no ordering key; lenient typing
test_newest_version_wins_and_incremental_equals_full_refresh = on_spark(
    test_staging.test_newest_version_wins_and_incremental_equals_full_refresh
)
test_incremental_replaces_staged_versions_whatever_their_key_holds = on_spark(
    test_staging.test_incremental_replaces_staged_versions_whatever_their_key_holds
)
test_feed_without_ordering_key_uses_insertion_order = on_spark(
    test_staging.test_feed_without_ordering_key_uses_insertion_order
)
test_types_are_cast_leniently = on_spark(test_staging.test_types_are_cast_leniently)


def columns(warehouse: Warehouse, table: str) -> list[str]:
    return [row[0] for row in query(warehouse, f"describe {table}") if row[0] and not row[0].startswith("#")]


def test_whole_flow_twice(exports: Path, warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load asapp, load apsis, build, push; then a later hour's export with a column the raw table lacks, load,
    build."""
    staged = build_the_demo_day(exports, warehouse, tmp_path, monkeypatch)
    # every lineage column is kept in raw; feeds never exported stage as empty relations, the build passes
    assert {c.name for c in contract.STAGED_LINEAGE} <= set(columns(warehouse, "asapp_raw.convos_intents"))
    assert scalar(warehouse, "select count(*) from staging.stg_asapp__admin_activity") == 0
    assert len(query(warehouse, "show tables in staging")) >= 43
    # the push plans in DuckDB over the marts' parquet files and the push log dlt wrote beside the raw files
    with AsappApiEmulator() as asapp_api:
        for k, v in asapp_api.env().items():
            monkeypatch.setenv(k, v)
        pushed = push()
        assert pushed.accepted > 0 and pushed.failed == 0
        assert (
            pushed.accepted + pushed.invalid
            == pushed.rows
            == scalar(warehouse, "select count(*) from marts.customer_metadata")
        )
        assert len(asapp_api.state.persisted) == pushed.accepted and asapp_api.state.invalid_requests == []
        assert push().sent == 0  # the log was read back: nothing changed, nothing sent again

    # The next hour: a re-export of an issue (a later instance_ts wins), and a key no earlier file had. The raw
    # table gains the column (null in the earlier files' rows), the build goes on.
    issue = next(iter(staged))
    write_partition(
        exports,
        "convos_intents",
        LATER,
        [{"issue_id": issue, "final_intent_code": "LATE", "instance_ts": "2026-11-02 03:00:00", "brand_new": "x"}],
    )
    raw_before = scalar(warehouse, "select count(*) from asapp_raw.convos_intents")
    load_asapp()
    assert runtime.run_dbt(["build"])
    # the loader read what had landed from the parquet files: only the new partition was loaded
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == raw_before + 1
    assert "brand_new" in columns(warehouse, "asapp_raw.convos_intents")
    assert query(warehouse, "select count(*), count(brand_new) from asapp_raw.convos_intents")[0][1] == 1
    again = dict(query(warehouse, "select issue_id, final_intent_code from staging.stg_asapp__convos_intents"))
    assert again == {**staged, issue: "LATE"}
    # a feed never delivered keeps its documented types from build to build (rep_convos: numeric(38,5))
    types = dict((r[0], r[1]) for r in query(warehouse, "describe staging.stg_asapp__rep_convos"))
    assert types["cume_cross_talk_seconds"] == "decimal(38,5)"

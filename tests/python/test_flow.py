"""The whole flow (load asapp over SFTP, load apsis, dbt build, push) on each engine: DuckDB and Postgres."""

from __future__ import annotations

from pathlib import Path

import pytest

from loaders import runtime
from loaders.asapp_metadata import push
from loaders.loads import load_apsis, load_asapp
from loaders.sandbox.apsis_emulator import ApsisEmulator
from loaders.sandbox.asapp_api_emulator import AsappApiEmulator
from loaders.sandbox.exports import CUSTOMERS, DEMO_FEEDS, generate_tree
from tests.python.helpers import Warehouse, query, scalar


def build_the_demo_day(
    exports: Path, warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[object, object]:
    """load asapp (a day of the demo's exports), load apsis, dbt build; then what every engine must have staged:
    each feed deduplicated, the newest version of every re-exported intent, customers matched in the mart. The
    staged intents (issue_id -> final_intent_code)."""
    tree = generate_tree(exports, days=1, issues_per_hour=6)
    load_asapp()
    with ApsisEmulator(tmp_path / "apsis", profiles=CUSTOMERS, polls_until_ready=1) as apsis_api:
        for k, v in {**apsis_api.env(), "SOURCES__APSIS__POLL_INITIAL_INTERVAL": "0.01"}.items():
            monkeypatch.setenv(k, v)
        load_apsis(start_at="2026-10-25", end_at="2026-11-02")
    assert runtime.run_dbt(["build"])

    for feed in DEMO_FEEDS:
        raw = scalar(warehouse, f"select count(*) from asapp_raw.{feed}")
        staged = scalar(warehouse, f"select count(*) from staging.stg_asapp__{feed}")
        assert 0 < staged < raw, feed
    staged_intents = dict(query(warehouse, "select issue_id, final_intent_code from staging.stg_asapp__convos_intents"))
    expected = {k: v for k, v in tree.expected_intent.items() if k in staged_intents}
    assert staged_intents == expected and len(staged_intents) == 6 * 24
    statuses = dict(query(warehouse, "select status, count(*) from marts.customer_metadata group by status"))
    assert statuses.get("known", 0) + statuses.get("vip", 0) > 0
    return staged_intents


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_whole_flow(exports: Path, warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_the_demo_day(exports, warehouse, tmp_path, monkeypatch)

    with AsappApiEmulator() as asapp_api:
        for k, v in asapp_api.env().items():
            monkeypatch.setenv(k, v)
        stats = push()
        assert stats.accepted > 0 and stats.invalid > 0 and stats.failed == 0
        assert len(asapp_api.state.persisted) == stats.accepted
        assert asapp_api.state.invalid_requests == []
        assert push().sent == 0  # nothing changed: nothing sent again
    assert scalar(warehouse, "select count(*) from asapp_metadata.asapp_metadata_push_log") == stats.accepted + (
        stats.invalid
    )

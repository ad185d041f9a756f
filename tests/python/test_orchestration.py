"""The Dagster example loads: its assets cover the loads, every dbt model and the push, wired in that order."""

from __future__ import annotations

import importlib

import pytest


def test_dagster_definitions_load(warehouse: object) -> None:
    pytest.importorskip("dagster_dbt")
    from dagster import AssetKey

    module = importlib.import_module("examples.dagster.definitions")
    defs = module.defs
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {
        "asapp_raw/utterances",
        "apsis_raw/events",
        "asapp_customer_metadata",
        "customer_metadata",
        "stg_asapp__utterances",
        "stg_apsis__events",
    } <= keys
    assert sum(1 for k in keys if k.startswith("stg_asapp__")) == 43
    # dbt staging reads the dlt assets; the push waits for the mart
    assert AssetKey(["asapp_raw", "utterances"]) in graph.get(AssetKey("stg_asapp__utterances")).parent_keys
    assert AssetKey("customer_metadata") in graph.get(AssetKey("asapp_customer_metadata")).parent_keys
    assert defs.resolve_job_def("asapp_elt_hourly") is not None
    assert "asapp_feed_catalog" in keys  # the seed, which dbt loads too
    # raw, apsis raw, staging, apsis staging, int, marts, push, the feed catalog seed
    assert len(keys) == 43 + 9 + 43 + 4 + 1 + 2 + 1 + 1

"""The facts of loaders/contract.py agree with the copies dbt reads that cannot be rendered from it."""

from __future__ import annotations

from pathlib import Path

import yaml

from loaders import contract

PROJECT = Path(__file__).resolve().parents[2]


def test_dbt_project_schemas_are_the_contracts() -> None:
    models = yaml.safe_load((PROJECT / "dbt_project.yml").read_text())["models"]["asapp_elt"]
    assert models["staging"]["+schema"] == contract.STAGING_SCHEMA
    assert models["marts"]["+schema"] == contract.MARTS_SCHEMA


def test_cadence_reads_sync_time_in_any_case() -> None:
    assert [contract.cadence(s) for s in ("1h", " 24H ", "1d", "7D", "?")] == [
        "hourly",
        "hourly",
        "daily",
        "daily",
        "daily",
    ]

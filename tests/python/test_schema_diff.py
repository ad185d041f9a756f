"""elt schema-diff for each kind of change, and drift detection against the server's export_docs.yaml."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from loaders.pipelines import SchemaDriftError, load_asapp
from loaders.sandbox.exports import write_partition
from tests.python.helpers import PROJECT, Warehouse, elt, scalar

BASE: dict[str, Any] = yaml.safe_load((PROJECT / "export_docs.yaml").read_text())


def table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for s in doc["schemas"] for t in s["tables"] if t["name"] == name)


def write(tmp_path: Path, doc: dict[str, Any], name: str = "new.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def mutate(kind: str) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    t = table(doc, "convos_metrics")
    if kind == "column_added":
        t["columns"].append({"name": "brand_new", "type": "varchar(10)", "description": "new"})
    elif kind == "column_removed":
        t["columns"] = [c for c in t["columns"] if c["name"] != "platform"]
    elif kind == "column_retyped":
        next(c for c in t["columns"] if c["name"] == "total_handle_time")["type"] = "varchar(20)"
    elif kind == "unique_key_changed":
        t["primary_key"] = "issue_id, customer_id"
    elif kind == "ordering_key_changed":
        t["ordering_key"] = "first_utterance_ts"
    elif kind == "version_changed":
        t["version"] = "2"
    elif kind == "feed_removed":
        doc["schemas"][0]["tables"].remove(t)
    elif kind == "feed_added":
        new = copy.deepcopy(t)
        new["name"] = "convos_metrics_v2"
        doc["schemas"][0]["tables"].append(new)
    return doc


ADDITIVE = {"column_added", "feed_added"}
KINDS = [
    "column_added",
    "column_removed",
    "column_retyped",
    "unique_key_changed",
    "ordering_key_changed",
    "version_changed",
    "feed_removed",
    "feed_added",
]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_change(tmp_path: Path, kind: str) -> None:
    result = elt("schema-diff", str(PROJECT / "export_docs.yaml"), str(write(tmp_path, mutate(kind))), "--json")
    report = json.loads(result.stdout)
    assert [c["kind"] for c in report["changes"]] == [kind]
    assert report["breaking"] is (kind not in ADDITIVE)
    assert result.returncode == (0 if kind in ADDITIVE else 1)


def test_same_schema_and_cosmetic_type_spelling_are_no_change(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    next(c for c in table(doc, "reps")["columns"] if c["type"].startswith("varchar"))["type"] = "text"
    result = elt("schema-diff", str(PROJECT / "export_docs.yaml"), str(write(tmp_path, doc)))
    assert result.returncode == 0 and "no schema changes" in result.stdout


def test_readable_table_output(tmp_path: Path) -> None:
    result = elt("schema-diff", str(PROJECT / "export_docs.yaml"), str(write(tmp_path, mutate("column_removed"))))
    assert result.returncode == 1
    assert "column_removed" in result.stdout and "platform" in result.stdout and "breaking" in result.stdout


def test_unreadable_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("schemas: [")
    result = elt("schema-diff", str(PROJECT / "export_docs.yaml"), str(bad))
    assert result.returncode == 1 and "not valid YAML" in result.stderr and "Traceback" not in result.stderr


def test_load_warns_or_fails_on_server_drift(exports: Path, warehouse: Warehouse, tmp_path: Path) -> None:
    write_partition(exports, "convos_metrics", datetime(2026, 11, 1, tzinfo=UTC), [{"issue_id": 1}])
    (exports / "export_docs.yaml").write_text(yaml.safe_dump(mutate("column_retyped"), sort_keys=False))
    with pytest.raises(SchemaDriftError, match="column_retyped total_handle_time"):
        load_asapp(strict=True)
    assert (
        not warehouse.exists()
        or scalar(warehouse, "select count(*) from information_schema.tables where table_name = 'convos_metrics'") == 0
    )
    stats = load_asapp()  # without --strict: warn and load
    assert [c.kind for c in stats.schema_changes] == ["column_retyped"]
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_metrics") == 1
    assert (warehouse.parent / "export_docs.server.yaml").exists()  # kept for `elt schema-diff`

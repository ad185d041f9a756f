"""elt schema-diff for each kind of change, and drift detection against the server's export_docs.yaml."""

from __future__ import annotations

import copy
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from loaders.asapp_sftp import LoadStats
from loaders.loads import load_asapp
from loaders.sandbox.exports import write_partition
from loaders.schema_drift import SchemaDriftError, check_export_docs
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
    elif kind == "description_changed":
        t["description"] = "[/] restated"  # "[/]" is Rich markup (closing no tag: an error), printed as text
    elif kind == "column_description_changed":
        next(c for c in t["columns"] if c["name"] == "platform")["description"] = "[bold]Where[/bold] it happened."
    elif kind == "column_type_text_changed":  # same canonical type, another spelling
        next(c for c in t["columns"] if c["name"] == "platform")["type"] = "character varying(255)"
    elif kind == "feed_added":
        new = copy.deepcopy(t)
        new["name"] = "convos_metrics_v2"
        doc["schemas"][0]["tables"].append(new)
    return doc


ADDITIVE = {
    "column_added",
    "feed_added",
    "description_changed",
    "column_description_changed",
    "column_type_text_changed",
}
KINDS = [
    "column_added",
    "column_removed",
    "column_retyped",
    "unique_key_changed",
    "ordering_key_changed",
    "version_changed",
    "feed_removed",
    "feed_added",
    "description_changed",
    "column_description_changed",
    "column_type_text_changed",
]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_change(tmp_path: Path, kind: str) -> None:
    result = elt("schema-diff", str(PROJECT / "export_docs.yaml"), str(write(tmp_path, mutate(kind))), "--json")
    report = json.loads(result.stdout)
    assert [c["kind"] for c in report["changes"]] == [kind]
    assert report["breaking"] is (kind not in ADDITIVE)
    assert result.returncode == (0 if kind in ADDITIVE else 1)


def test_same_schema_is_no_change(tmp_path: Path) -> None:
    result = elt("schema-diff", str(PROJECT / "export_docs.yaml"), str(write(tmp_path, copy.deepcopy(BASE))))
    assert result.returncode == 0 and "no schema changes" in result.stdout


def test_text_changes_are_reported_as_non_breaking(tmp_path: Path) -> None:
    doc = mutate("column_type_text_changed")
    column = next(c for c in table(doc, "reps")["columns"] if c["type"].startswith("varchar"))
    column["type"] = "text"
    column["description"] = "Changed."
    table(doc, "reps")["description"] = "Changed too."
    report = json.loads(
        elt("schema-diff", str(PROJECT / "export_docs.yaml"), str(write(tmp_path, doc)), "--json").stdout
    )
    assert report["breaking"] is False
    assert sorted((c["feed"], c["kind"]) for c in report["changes"]) == [
        ("convos_metrics", "column_type_text_changed"),
        ("reps", "column_description_changed"),
        ("reps", "column_type_text_changed"),
        ("reps", "description_changed"),
    ]
    platform = next(c for c in report["changes"] if c["feed"] == "convos_metrics")
    assert platform["detail"] == "platform: varchar(255) -> character varying(255) (both varchar)"


def test_markup_in_the_data_is_printed_as_text(tmp_path: Path) -> None:
    doc = mutate("description_changed")
    next(c for c in table(doc, "convos_metrics")["columns"] if c["name"] == "platform")["description"] = (
        "[link=https://example.invalid]it[/link]"
    )
    result = elt("schema-diff", str(PROJECT / "export_docs.yaml"), str(write(tmp_path, doc)))
    assert result.returncode == 0, result.stderr
    assert "'[/] restated'" in result.stdout and "'[link=https://example.invalid]it[/link]'" in result.stdout


def test_hostile_file_is_one_clear_error(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("schemas: " + "[" * 100_000)  # segfaults PyYAML's C loader when read unguarded
    result = elt("schema-diff", str(PROJECT / "export_docs.yaml"), str(bomb))
    assert result.returncode == 1 and "nested deeper than" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1


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


HOSTILE = "schemas: " + "[" * 100_000


def _server_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "downloaded-export_docs.yaml"
    path.write_text(text)
    return path


def test_invalid_server_file_is_a_warning_and_the_check_goes_on(
    warehouse: Warehouse, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    downloaded = _server_file(tmp_path, HOSTILE)
    with caplog.at_level(logging.WARNING, logger="loaders.schema_drift"):
        assert check_export_docs(LoadStats(export_docs=downloaded), strict=False) == []
    assert "the server's export_docs.yaml cannot be read" in caplog.text and "nested deeper than" in caplog.text
    assert not downloaded.exists()
    assert (warehouse.parent / "export_docs.server.yaml").read_text() == HOSTILE  # kept to show ASAPP


def test_invalid_server_file_fails_a_strict_check(warehouse: Warehouse, tmp_path: Path) -> None:
    downloaded = _server_file(tmp_path, yaml.safe_dump(mutate("column_added")).replace("type: bigint", "type: x;"))
    with pytest.raises(SchemaDriftError, match=r"cannot be read .*type 'x;'.* allowed: "):
        check_export_docs(LoadStats(export_docs=downloaded), strict=True)
    assert not downloaded.exists()


def test_load_goes_on_past_a_hostile_server_file(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, "convos_metrics", datetime(2026, 11, 1, tzinfo=UTC), [{"issue_id": 1}])
    (exports / "export_docs.yaml").write_text(HOSTILE)
    with pytest.raises(SchemaDriftError, match="nested deeper than"):
        load_asapp(strict=True)
    assert load_asapp().schema_changes == []
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_metrics") == 1

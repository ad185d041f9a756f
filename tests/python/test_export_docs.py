"""export_docs.yaml parsing (with the published metadata's flaws) and code generation."""

from __future__ import annotations

from pathlib import Path

import pytest

from loaders.export_docs import codegen, load_export_docs
from loaders.export_docs.model import ExportDocsError, canonical_type, parse_export_docs, parse_key
from tests.python.helpers import PROJECT, elt

DOCS = load_export_docs(PROJECT / "export_docs.yaml")


def test_all_feeds_are_read() -> None:
    assert len(DOCS) == 43
    assert DOCS["convos_metrics"].unique_key == ("issue_id",)
    assert DOCS["flow_completions"].ordering_key == "COALESCE(success_event_ts, negation_event_ts)"


def test_stray_primary_key_prefix_is_stripped() -> None:
    assert parse_key("primary-key: rep_id, event_type") == ("rep_id", "event_type")
    assert DOCS["agent_journey_rep_event_frequency"].unique_key == (
        "rep_id",
        "event_type",
        "company_marker",
        "instance_ts",
    )


def test_undocumented_key_columns_become_nullable_columns_without_not_null() -> None:
    feed = DOCS["customer_feedback"]
    marker = feed.column("company_marker")
    assert not marker.documented and marker.type == "varchar"
    assert feed.column("last_event_ts").type == "timestamp"  # ordering column, typed from its name
    assert DOCS["rep_activity"].column("company_id").type == "bigint"  # typed from other feeds
    models = codegen.models_yaml(DOCS)
    block = models.split("name: stg_asapp__customer_feedback")[1].split("- name: stg_asapp__")[0]
    marker_doc = block.split("- name: company_marker")[1].split("- name:")[0]
    assert "not_null" not in marker_doc and "documented: false" in marker_doc


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("varchar(191)", "varchar"),
        ("character varying(65535)", "varchar"),
        ("", "varchar"),
        ("text", "varchar"),
        ("bigint(20)", "bigint"),
        ("int", "integer"),
        ("smallint", "integer"),
        ("tinyint(1)", "boolean"),
        ("double precision", "double"),
        ("float", "double"),
        ("numeric(38,5)", "numeric(38,5)"),
        ("timestamp without time zone", "timestamp"),
        ("datetime", "timestamp"),
        ("TIMESTAMP", "timestamp"),
    ],
)
def test_types_are_normalised(raw: str, canonical: str) -> None:
    assert canonical_type(raw) == canonical


def test_bad_documents_are_rejected_clearly() -> None:
    with pytest.raises(ExportDocsError, match="schemas"):
        parse_export_docs({"tables": []})
    with pytest.raises(ExportDocsError, match="no unique condition"):
        parse_export_docs({"schemas": [{"tables": [{"name": "x", "columns": []}]}]})
    with pytest.raises(ExportDocsError, match="unknown column type"):
        canonical_type("geography")


def test_generated_staging_model_shape() -> None:
    sql = codegen.staging_sql(DOCS["flow_completions"])
    assert sql.startswith(f"-- {codegen.GENERATED_MARK}")
    assert "materialized='incremental'" in sql  # hourly feed
    assert "'coalesce(success_event_ts, negation_event_ts) desc nulls last'" in sql
    assert "set key_columns = ['company_id', 'issue_id', 'flow_name', 'flow_status_ts', 'success_event_details']" in sql
    assert "asapp_record_key(key_columns)" in sql and "asapp_staged_versions('keyed', key_columns," in sql
    assert "incremental_strategy='asapp_latest'" in sql
    assert "'flow_status_ts': 'timestamp'," in sql  # the documented type, cast by the load or asapp_raw_source
    assert "materialized='view'" in codegen.staging_sql(DOCS["reps"])  # daily feed


def test_freshness_follows_sync_time() -> None:
    sources = codegen.sources_yaml(DOCS)
    hourly = sources.split("- name: utterances")[1].split("- name:")[0]
    daily = sources.split("- name: reps")[1].split("- name:")[0]
    assert "count: 3" in hourly and "count: 36" in daily


def test_generate_check_detects_stale_and_orphaned_files(tmp_path: Path) -> None:
    assert codegen.write(DOCS, PROJECT, check=True).stale == []  # the committed files are fresh
    result = codegen.write(DOCS, tmp_path)
    assert len(result.written) == 45
    target = tmp_path / codegen.STAGING_DIR / "stg_asapp__reps.sql"
    target.write_text(target.read_text() + "-- edited by hand\n")
    orphan = tmp_path / codegen.STAGING_DIR / "stg_asapp__gone.sql"
    orphan.write_text(f"-- {codegen.GENERATED_MARK}\nselect 1\n")
    check = codegen.write(DOCS, tmp_path, check=True)
    assert check.stale == [target] and check.orphaned == [orphan]
    codegen.write(DOCS, tmp_path)
    assert not orphan.exists() and codegen.write(DOCS, tmp_path, check=True).stale == []


def test_cli_generate_check_is_clean() -> None:
    result = elt("generate", "--check")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout

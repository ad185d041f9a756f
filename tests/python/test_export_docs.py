"""export_docs.yaml parsing (with the published metadata's flaws) and code generation."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from loaders.export_docs import codegen, load_export_docs
from loaders.export_docs.model import (
    ExportDocs,
    ExportDocsError,
    canonical_type,
    ordering_columns,
    parse_export_docs,
    parse_key,
)
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
        ("VARCHAR(191)", "varchar"),
        ("VARCHAR", "varchar"),
        ("character varying", "varchar"),
        ("char(3)", "varchar"),
        ("json", "varchar"),
        ("bigint(20) unsigned", "bigint"),
        ("int(11)", "integer"),
        ("integer", "integer"),
        ("tinyint(4)", "integer"),
        ("bool", "boolean"),
        ("real", "double"),
        ("numeric(10,2)", "numeric(10,2)"),
        ("decimal(10, 2)", "numeric(10,2)"),
        ("numeric", "double"),
        ("timestamp with time zone", "timestamp"),
        ("timestamp(6) without time zone", "timestamp"),
        ("timestamptz", "timestamp"),
        ("datetime(6)", "timestamp"),
        ("date", "date"),
        (" varchar(255)\n", "varchar"),  # surrounding whitespace, as YAML may leave it
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


def test_lineage_macro_types_follow_the_contract() -> None:
    macro = codegen.lineage_macro()
    assert "'_asapp_split': dbt.type_bigint()," in macro and "'_dlt_load_id': dbt.type_string()," in macro
    assert (PROJECT / codegen.LINEAGE_MACRO_PATH).read_text() == macro


def test_generate_check_detects_stale_and_orphaned_files(tmp_path: Path) -> None:
    assert codegen.write(DOCS, PROJECT, check=True).stale == []  # the committed files are fresh
    result = codegen.write(DOCS, tmp_path)
    # 43 staging models, their two YAML files, the feed catalog seed, the lineage macro
    assert len(result.written) == 47
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


# export_docs.yaml is vendor input: a copy from the SFTP server is data, and what codegen writes from it is run by
# dbt, which renders Jinja in SQL and YAML. A crafted value is refused whole, or written so that it cannot render.


def _table(**fields: object) -> dict[str, object]:
    table: dict[str, object] = {
        "name": "feed_x",
        "description": "A feed.",
        "primary_key": "issue_id",
        "ordering_key": "",
        "sync_time": "1h",
        "version": "1",
        "columns": [
            {"name": "issue_id", "type": "bigint", "description": "The issue."},
            {"name": "first_ts", "type": "timestamp", "description": "First."},
            {"name": "last_ts", "type": "timestamp", "description": "Last."},
        ],
    }
    table.update(fields)
    return table


def _docs(*tables: dict[str, object]) -> dict[str, object]:
    return {"schemas": [{"name": "exports", "tables": list(tables)}]}


def _with_type(raw: object) -> dict[str, object]:
    columns = [*_table()["columns"], {"name": "payload", "type": raw}]  # type: ignore[misc]
    return _docs(_table(columns=columns))


@pytest.mark.parametrize(
    "raw",
    [
        "varchar(255)'; select 1; --",
        "{{ env_var('SECRET') }}",
        "bigint }}",
        "varchar({{ 1 }})",
        "varchar(\uff12\uff15\uff15)",  # full-width digits: \d would match them
        "varchar(\u0662\u0665\u0665)",  # Arabic-Indic digits
        "numeric(10,2) {% raw %}",
        "timestamp {# x #}",
        "text;",
        "char'",
        "bigintx",
        "timestampz drop",
        "varchar(255)\nx",
        "int(1e9)",
        ["varchar"],
    ],
)
def test_crafted_column_type_is_refused(raw: object) -> None:
    with pytest.raises(ExportDocsError, match=r"feed_x\.payload: .*type .* allowed: ") as refused:
        parse_export_docs(_with_type(raw))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "version", ["1 }}{{ run_query('drop table x') }}", "\uff11", "\u0663", "2.0", "v2", "-1", "1e3"]
)
def test_crafted_version_is_refused(version: str) -> None:
    with pytest.raises(ExportDocsError, match=r"feed_x: version .* ASCII digits"):
        parse_export_docs(_docs(_table(version=version)))


def test_version_as_published_is_kept() -> None:
    assert parse_export_docs(_docs(_table(version=12)))["feed_x"].version == "12"
    assert parse_export_docs(_docs(_table(version=" 3 ")))["feed_x"].version == "3"
    assert parse_export_docs(_docs(_table(version="")))["feed_x"].version == "1"  # none published


@pytest.mark.parametrize(
    ("key", "columns"),
    [
        ("last_ts", ["last_ts"]),
        ("COALESCE(first_ts, last_ts)", ["first_ts", "last_ts"]),
        ("greatest(first_ts,coalesce(last_ts, other_ts))", ["first_ts", "last_ts", "other_ts"]),
        ("Least( first_ts , last_ts )", ["first_ts", "last_ts"]),
        ("Last_TS", ["last_ts"]),
    ],
)
def test_ordering_key_grammar_accepts_columns_and_coalesce_greatest_least(key: str, columns: list[str]) -> None:
    feed = parse_export_docs(_docs(_table(ordering_key=key)))["feed_x"]
    assert ordering_columns(feed.ordering_key) == columns
    assert all(c in feed.column_names for c in columns)  # an unlisted one is staged, undocumented


@pytest.mark.parametrize(
    "key",
    [
        "{{ run_query('create table pwned as select 1') }}",
        "last_ts desc",
        "last_ts, first_ts",
        "last_ts || 'x'",
        "coalesce(last_ts, 'x')",
        "coalesce(last_ts, 1)",
        "coalesce(last_ts",
        "coalesce()",
        "coalesce(last_ts,)",
        "nullif(last_ts, first_ts)",
        "max(last_ts)",
        "last_ts -- comment",
        "last_ts)",
        "(last_ts)",
        "coalesce",
        "last_ts; select 1",
        "lást_ts",
        "coalesce(" * 40 + "last_ts" + ")" * 40,
    ],
)
def test_crafted_ordering_key_is_refused(key: str) -> None:
    with pytest.raises(ExportDocsError, match=r"feed_x: ordering_key .* allowed: a column name, or COALESCE"):
        parse_export_docs(_docs(_table(ordering_key=key)))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "feed_x; drop"}, "feed name"),
        ({"name": "../../macros/x"}, "feed name"),
        ({"name": "féed"}, "feed name"),
        ({"name": "feed_x" * 30}, "feed name"),
        ({"name": ""}, "feed name"),
        ({"primary_key": "issue_id, first_ts)"}, "key column"),
        ({"primary_key": "issue_id, {{ x }}"}, "key column"),
        ({"columns": [{"name": "issue id", "type": "bigint"}]}, r"feed_x: column name"),
        ({"columns": [{"name": "x}}", "type": "bigint"}]}, r"feed_x: column name"),
        ({"columns": [{"type": "bigint"}]}, r"feed_x: column name"),
    ],
)
def test_names_are_plain_identifiers(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ExportDocsError, match=message):
        parse_export_docs(_docs(_table(**fields)))


@pytest.mark.parametrize("sync_time", ["1h }}", "hourly", "\uff11h", "1 h", "1w", "1h\n1d", "{{ 1 }}d"])
def test_crafted_sync_time_is_refused(sync_time: str) -> None:
    with pytest.raises(ExportDocsError, match=r"feed_x: sync_time .* allowed: "):
        parse_export_docs(_docs(_table(sync_time=sync_time)))


def test_sync_time_as_published() -> None:
    assert parse_export_docs(_docs(_table(sync_time="24h")))["feed_x"].is_hourly
    assert not parse_export_docs(_docs(_table(sync_time="1D")))["feed_x"].is_hourly
    assert parse_export_docs(_docs(_table(sync_time="")))["feed_x"].sync_time == "1d"  # none published


@pytest.mark.parametrize(
    "document",
    [
        {"schemas": [1]},
        {"schemas": [{"tables": "feed_x"}]},
        {"schemas": [{"tables": [["feed_x"]]}]},
        {"schemas": [{"tables": [_table(columns=[1])]}]},
        {"schemas": [{"tables": [_table(columns={"issue_id": "bigint"})]}]},
        {"schemas": [{"tables": [_table(name={"a": 1})]}]},
        {"schemas": [{"tables": [_table(columns=[{"name": ["issue_id"], "type": "bigint"}])]}]},
    ],
)
def test_misshapen_documents_are_one_error(document: dict[str, object]) -> None:
    with pytest.raises(ExportDocsError):
        parse_export_docs(document)


JINJA = ("{{", "{%", "{#")
HOSTILE_TEXT = [
    '{{ run_query("create table pwned as select 1") }}',
    '{{ env_var("SECRET") }}',
    "{% raw %}",
    "{#",
    "{{{ x }}}",
    "{\n{ env_var('SECRET') }}",  # folded to one line by the parser
    "}}{{",
    "a {",  # ends in a brace, next to what codegen writes after it
    "{",
]


def _hostile(text: str) -> dict[str, object]:
    columns = [
        {"name": "issue_id", "type": "bigint", "description": text, "created_date": text, "pii": text},
        {"name": "first_ts", "type": "timestamp", "description": "x", "deleted_date": text},
        {"name": "last_ts", "type": "timestamp", "description": f"deprecated: {text}"},
        {"name": "note", "type": "varchar(255)", "description": "{" + text, "created_date": "{"},
    ]
    return _docs(_table(description=text, columns=columns), _table(name="feed_y", description=text + "{"))


@pytest.mark.parametrize("text", HOSTILE_TEXT)
def test_free_text_is_inert_in_every_generated_file(text: str) -> None:
    files = codegen.generate(parse_export_docs(_hostile(text)))
    benign = {f.path: f.content for f in codegen.generate(parse_export_docs(_hostile("plain words")))}
    for f in files:
        if f.path.suffix != ".yml":  # data text never reaches SQL (nor any other file): it is the benign one
            assert f.content == benign[f.path]
            continue
        assert not any(d in f.content for d in JINJA), f.path
        strings = _strings(yaml.safe_load(f.content))  # dbt renders the parsed values
        assert not [s for s in strings if any(d in s for d in JINJA)], f.path
    models = yaml.safe_load(next(f.content for f in files if f.path.name == "_asapp__models.yml"))
    description = models["models"][0]["description"]
    assert "".join(text.split()) in "".join(description.split())  # kept readable, only broken up


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.parametrize(
    "text",
    ["{{ x }}", "{%- if true %}", "{#", "{{{", "{{%#", "{ {", "a{\n{b", "}}", "{", "plain"],
)
def test_inert_breaks_every_jinja_opening_and_only_adds_spaces(text: str) -> None:
    out = codegen.inert(text)
    assert not any(d in out for d in JINJA)
    assert "".join(out.split()) == "".join(text.split())
    assert out == text or any(d in text for d in JINJA)


def test_generate_refuses_a_feed_built_around_the_parser() -> None:
    """A Feed made in code, not parsed, still cannot put Jinja into the SQL."""
    feed = DOCS["reps"]
    for crafted in (
        dataclasses.replace(feed, version="1 {{ run_query('x') }}"),
        dataclasses.replace(feed, ordering_key="{{ run_query('x') }}"),
        dataclasses.replace(feed, name="reps{{x}}"),
        dataclasses.replace(feed, columns=(dataclasses.replace(feed.columns[0], type="{{ x }}"), *feed.columns[1:])),
    ):
        with pytest.raises(ExportDocsError, match="refusing to generate"):
            codegen.generate(ExportDocs(feeds={"reps": crafted}))


def test_ordering_columns_missing_from_the_feed_is_an_error_not_an_assert() -> None:
    feed = DOCS["flow_completions"]
    crafted = dataclasses.replace(feed, columns=tuple(c for c in feed.columns if c.name != "negation_event_ts"))
    with pytest.raises(ExportDocsError, match="negation_event_ts"):
        codegen.staging_sql(crafted)


def _project_copy(tmp_path: Path) -> Path:
    """What `elt generate` reads and writes, copied: the generated files and the folders they are written to."""
    project = tmp_path / "project"
    for folder in ("models", "seeds"):
        if (PROJECT / folder).is_dir():
            shutil.copytree(PROJECT / folder, project / folder)
    shutil.copyfile(PROJECT / "export_docs.yaml", project / "export_docs.yaml")
    return project


def _snapshot(project: Path) -> dict[str, bytes]:
    return {str(p.relative_to(project)): p.read_bytes() for p in sorted(project.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "fields",
    [
        {"ordering_key": "{{ run_query('create table pwned as select 1') }}"},
        {"version": "1 }}{{ env_var('SECRET') }}{{"},
        {"type": "bigint'); select 1; --"},  # of the feed's first column
    ],
)
def test_cli_generate_refuses_a_crafted_file_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fields: dict[str, str]
) -> None:
    project = _project_copy(tmp_path)
    before = _snapshot(project)
    assert any(name.startswith("models/staging/asapp/stg_asapp__") for name in before)
    document = yaml.safe_load((PROJECT / "export_docs.yaml").read_text())
    table = document["schemas"][0]["tables"][0]
    (table["columns"][0] if "type" in fields else table).update(fields)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document, sort_keys=False))
    monkeypatch.setenv("ELT_PROJECT_DIR", str(project))
    result = elt("generate", "--export-docs", str(bad))
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("error: ") and result.stderr.count("error") == 1, result.stderr
    assert "Traceback" not in result.stderr  # one message (the console wraps it at its width)
    assert f"{bad}: {table['name']}" in " ".join(result.stderr.split()) and "allowed: " in result.stderr
    assert _snapshot(project) == before

"""dbt's and dlt's own commands, and `python -m` pipelines, run as their users run them: from the root of a clean
copy of the project (its git files, as a fresh clone has them), with no flags and none of our environment
variables, on an empty warehouse and on a loaded one. The venv's commands run the copy's code (PYTHONPATH), as a
clone's own venv would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from loaders.export_docs import load_export_docs
from loaders.sandbox.apsis_emulator import ApsisEmulator
from loaders.sandbox.asapp_api_emulator import AsappApiEmulator
from loaders.sandbox.exports import CUSTOMERS, DEMO_FEEDS, generate_tree
from loaders.sandbox.sftp_server import SandboxSftpServer
from tests.python.helpers import PROJECT

BIN = Path(sys.executable).parent
FEEDS = len(load_export_docs(PROJECT / "export_docs.yaml"))
OURS = ("ELT_", "SOURCES__", "ASAPP_API__", "DBT_", "DLT_", "DESTINATION__", "RUNTIME__", "NORMALIZE__", "LOAD__")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's files as git has them (tracked, and new files not ignored): no warehouse, no target."""
    copy = tmp_path / "asapp-elt"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = PROJECT / os.fsdecode(name)
        if source.is_file():  # a file deleted in the work tree but not yet in git is skipped
            target = copy / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return copy


def run(project: Path, *command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A venv command (`dbt`, `dlt`, `elt`, `python`) run from the project root with the user's plain environment
    (plus env: the settings a user configures)."""
    plain = {k: v for k, v in os.environ.items() if not k.startswith(OURS) and k != "PYTHONPATH"}
    plain["PYTHONPATH"] = str(project)
    return subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=project,
        env={**plain, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


ANSI_COLOR = re.compile(r"\x1b\[[0-9;]*m")


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The output of a command that succeeded, without dbt's colours."""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return ANSI_COLOR.sub("", result.stdout + result.stderr)


def check_docs(project: Path) -> None:
    ok(run(project, "dbt", "docs", "generate"))
    assert (project / "target" / "index.html").exists() and (project / "target" / "catalog.json").exists()
    ok(run(project, "dbt", "docs", "generate", "--static"))
    assert (project / "target" / "static_index.html").stat().st_size > 100_000  # the site and its data, one file


def test_dbt_commands_run_on_an_empty_warehouse(project: Path) -> None:
    assert not (project / "warehouse" / "asapp.duckdb").exists()
    built = ok(run(project, "dbt", "build"))
    assert re.search(r"Done\. PASS=[1-9]\d* WARN=0 ERROR=0 ", built)
    assert "seeds.asapp_feed_catalog" in built  # the seed is loaded
    for unit_test in ("customer_metadata::", "customer_metadata_attributes::customer_metadata_attributes_keeps_ten"):
        assert f"PASS {unit_test}" in built, unit_test  # the marts' unit tests ran
    freshness = ok(run(project, "dbt", "source", "freshness"))
    assert freshness.count("never delivered, not checked") == FEEDS  # every ASAPP feed (APSIS has no freshness)
    assert "ERROR" not in freshness
    check_docs(project)
    ((feeds,),) = (
        duckdb.connect(str(project / "warehouse" / "asapp.duckdb"), read_only=True)
        .execute("select count(*) from seeds.asapp_feed_catalog")
        .fetchall()
    )
    assert feeds == FEEDS


def test_a_missing_setting_is_a_short_message(project: Path) -> None:
    sections = re.findall(r"^## (.+)$", (project / "README.md").read_text(), flags=re.M)
    for command, names, table in (
        (
            ("elt", "load", "asapp"),
            ["SOURCES__ASAPP_SFTP__HOST", "SOURCES__ASAPP_SFTP__USERNAME"],
            "[sources.asapp_sftp]",
        ),
        (
            ("python", "-m", "loaders.apsis"),
            ["SOURCES__APSIS__BASE_URL", "SOURCES__APSIS__CLIENT_SECRET"],
            "[sources.apsis]",
        ),
    ):
        result = run(project, *command)
        assert result.returncode == 1
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert len(lines) <= 6, lines
        text = "\n".join(lines)
        assert all(name in text for name in names) and table in text and ".dlt/secrets.toml" in text, text
        section = re.search(r'see README.md, "(.+)"', text)
        assert section and section.group(1) in sections, text  # names a section README really has
        assert "Traceback" not in text and "Warning" not in text


def test_user_commands_run_on_a_loaded_warehouse(project: Path, tmp_path: Path) -> None:
    tree = generate_tree(tmp_path / "exports", start=date(2026, 11, 1), days=1)
    with SandboxSftpServer(tree.root, tmp_path / "keys") as sftp:
        loaded = run(project, "elt", "load", "asapp", env=sftp.env())
        ok(loaded)
        assert not re.search(r"warning|WARNING", loaded.stderr), loaded.stderr  # no library's warning
        # the same pipeline, run the way dlt users run one: nothing new to load
        again = ok(run(project, "python", "-m", "loaders.asapp_sftp", env=sftp.env()))
        assert "elt load asapp" in again
    start = datetime(2026, 10, 25, tzinfo=UTC).isoformat()
    with ApsisEmulator(tmp_path / "apsis", profiles=CUSTOMERS, polls_until_ready=1) as apsis:
        env = {**apsis.env(), "SOURCES__APSIS__POLL_INITIAL_INTERVAL": "0.2"}
        ok(run(project, "elt", "load", "apsis", "--start-at", start, "--end-at", "2026-11-02T00:00:00+00:00", env=env))
    assert re.search(r"Done\. PASS=[1-9]\d* WARN=\d+ ERROR=0 ", ok(run(project, "dbt", "build")))
    with AsappApiEmulator() as asapp_api:
        ok(run(project, "python", "-m", "loaders.asapp_metadata", env=asapp_api.env()))

    pipelines = project / "warehouse" / "pipelines"
    for name in ("asapp_sftp", "apsis", "asapp_metadata"):
        info = ok(run(project, "dlt", "pipeline", name, "info"))
        assert f"Found pipeline {name} in {pipelines}" in info
        assert "COMPLETED" in ok(run(project, "dlt", "pipeline", name, "trace"))
    assert "dlt[hub]" in ok(run(project, "dlt", "pipeline", "asapp_sftp", "show"))  # dlt's dashboard is dltHub's

    freshness = ok(run(project, "dbt", "source", "freshness"))
    assert freshness.count("never delivered, not checked") == FEEDS - len(DEMO_FEEDS)
    for feed in DEMO_FEEDS:
        assert re.search(rf"PASS freshness of asapp\.{feed}\b", freshness), feed
    # a delivered feed that then stopped: its last load two days ago is an error (12 h for an hourly feed)
    with duckdb.connect(str(project / "warehouse" / "asapp.duckdb")) as con:
        two_days_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=2)
        con.execute("update asapp_raw.utterances set _asapp_loaded_at = ?", [two_days_ago])
    stale = run(project, "dbt", "source", "freshness")
    assert stale.returncode != 0
    stale_out = ANSI_COLOR.sub("", stale.stdout)
    assert re.search(r"ERROR STALE freshness of asapp\.utterances\b", stale_out), stale_out[-3000:]
    assert not re.search(r"ERROR STALE freshness of asapp\.(?!utterances\b)", stale_out)
    check_docs(project)

    query = ok(
        run(project, "elt", "sql", "select feed, cadence from seeds.asapp_feed_catalog where feed = 'utterances'")
    )
    assert re.search(r"utterances\s+│\s+hourly", query) and "1 row(s)" in query
    markup = ok(run(project, "elt", "sql", "select '[bold red]not markup[/]' as text, null as nothing"))
    assert "[bold red]not markup[/]" in markup and "null" in markup  # data is shown as it is, never styled
    status = ok(run(project, "elt", "status"))
    assert re.search(r"utterances .*1h \(hourly\)", status), status

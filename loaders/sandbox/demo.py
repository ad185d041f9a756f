"""`elt demo`: the whole flow against the sandbox, in its own folder, with a short summary at the end."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
from rich.table import Table

from loaders import runtime
from loaders.contract import APSIS_RAW_SCHEMA, RAW_SCHEMA, STAGING_SCHEMA
from loaders.sandbox.apsis_emulator import ApsisEmulator
from loaders.sandbox.asapp_api_emulator import AsappApiEmulator
from loaders.sandbox.exports import CUSTOMERS, DEMO_FEEDS, generate_tree
from loaders.sandbox.file_exporter_emulator import FileExporterEmulator
from loaders.sandbox.sftp_server import SandboxSftpServer


@dataclass
class FeedCounts:
    partitions: int
    waiting: int
    raw_rows: int
    staged_rows: int


@dataclass
class DemoSummary:
    duckdb_path: Path
    pipelines_dir: Path
    docs_path: Path
    seconds: float
    ok: bool
    source: str = "sftp"  # the transport the ASAPP feeds came through
    feeds: dict[str, FeedCounts] = field(default_factory=dict)
    apsis: dict[str, tuple[int, int]] = field(default_factory=dict)  # table -> (raw rows, staged rows)
    push: Any = None  # PushStats of the push to the ASAPP API emulator

    def table(self) -> Table:
        table = Table(title=f"elt demo: the ASAPP feeds through {self.source}")
        for col in (
            "feed",
            "partitions loaded",
            "waiting for _SUCCESS",
            "raw rows",
            "staged rows",
            "duplicates removed",
        ):
            table.add_column(col, justify="left" if col == "feed" else "right")
        for feed, c in sorted(self.feeds.items()):
            table.add_row(
                feed,
                str(c.partitions),
                str(c.waiting),
                str(c.raw_rows),
                str(c.staged_rows),
                str(c.raw_rows - c.staged_rows),
            )
        for name, (raw, staged) in self.apsis.items():
            table.add_row(f"apsis {name}", "", "", str(raw), str(staged), str(raw - staged))
        return table

    def notes(self) -> list[str]:
        """The closing lines: where things are and commands to look at them, each runnable as printed (from the
        folder the demo was started in, with the venv's own commands: the venv has no `duckdb` command line)."""
        status = "[green]dbt build passed[/]" if self.ok else "[red]dbt build failed[/]"
        db, pipelines = _shown(self.duckdb_path), _shown(self.pipelines_dir)
        query = (
            f"select issue_id, final_intent_code, instance_ts from {STAGING_SCHEMA}.stg_asapp__convos_intents limit 5"
        )
        return [
            f"{status} in {self.seconds:.0f} s",
            f"warehouse: {db}",
            f"  query it: {_venv_command('elt')} sql --db {db} {shlex.quote(query)}",
            f"  dlt's view of a load: {_venv_command('dlt')} pipeline --pipelines-dir {pipelines} asapp_sftp info",
            f"docs site: {_shown(self.docs_path)} (one file: open it in a browser), "
            f"or serve it: {_venv_command('dbt')} docs serve",
        ]


def _shown(path: Path) -> str:
    """path as a user types it: relative to the working folder when it is inside, quoted for the shell."""
    try:
        shown = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = str(path)
    return shlex.quote(shown)


def _venv_command(name: str) -> str:
    """A command of the venv `elt` runs from (dbt and dlt are installed beside it)."""
    return _shown(Path(sys.executable).parent / name)


def _load_exports(root: Path, keys: Path, transport: str) -> Any:
    """The generated tree loaded through the sandbox's transport: its SFTP server, its File Exporter API emulator,
    or the folder itself as a mirror."""
    from loaders.asapp_sftp.transports import choose
    from loaders.loads import load_asapp

    if choose(transport) == "sftp":
        with SandboxSftpServer(root, keys) as endpoint:
            os.environ.update(endpoint.env())
            return load_asapp(transport=transport)
    if transport == "file-exporter":
        with FileExporterEmulator(root) as api:
            os.environ.update(api.env())
            return load_asapp(transport=transport)
    os.environ["SOURCES__ASAPP_MIRROR__URL"] = str(root)
    return load_asapp(transport=transport)


def run_demo(base: Path, days: int = 3, transport: str = "sftp") -> DemoSummary:
    started = time.monotonic()
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    tree = generate_tree(base / "exports", start=date(2026, 11, 1), days=days)
    os.environ["ELT_DUCKDB_PATH"] = str(base / "asapp.duckdb")
    os.environ["ELT_PIPELINES_DIR"] = str(base / "pipelines")
    os.environ["ELT_TARGET"] = "duckdb"
    from loaders.loads import load_apsis

    tree_start = datetime(2026, 11, 1, tzinfo=UTC)
    tree_end = tree_start + timedelta(days=days)

    stats = _load_exports(tree.root, base / "keys", transport)
    with ApsisEmulator(base / "apsis", profiles=CUSTOMERS, polls_until_ready=1) as apsis_api:
        os.environ.update(apsis_api.env())
        os.environ["SOURCES__APSIS__POLL_INITIAL_INTERVAL"] = "0.2"
        load_apsis(start_at=(tree_start - timedelta(days=7)).isoformat(), end_at=tree_end.isoformat())
    # --static: the site as one file, which a browser opens from disk
    ok = runtime.run_dbt(["--quiet", "build"]) and runtime.run_dbt(["--quiet", "docs", "generate", "--static"])
    if ok:
        from loaders.asapp_metadata import push

        with AsappApiEmulator(reject_customers={"900013"}) as asapp_api:  # one customer ASAPP does not know
            os.environ.update(asapp_api.env())
            pushed = push()
    target = Path(os.environ.get("DBT_TARGET_PATH") or runtime.project_dir() / "target")
    summary = DemoSummary(
        runtime.duckdb_path(),
        runtime.pipelines_dir(),
        runtime.project_dir() / target / "static_index.html",
        time.monotonic() - started,
        ok,
        stats.source or transport,
    )
    with duckdb.connect(str(runtime.duckdb_path())) as con:  # dbt-duckdb keeps its own open
        for feed in DEMO_FEEDS:
            raw = con.execute(f"select count(*) from {RAW_SCHEMA}.{feed}").fetchone()
            staged = con.execute(f"select count(*) from {STAGING_SCHEMA}.stg_asapp__{feed}").fetchone() if ok else (0,)
            s = stats.feed(feed)
            summary.feeds[feed] = FeedCounts(
                s.partitions_loaded, s.partitions_waiting, raw[0] if raw else 0, staged[0] if staged else 0
            )
        for raw_table, model in (("profiles", "profiles"), ("events", "events")):
            raw_rows = con.execute(f"select count(*) from {APSIS_RAW_SCHEMA}.{raw_table}").fetchone()
            staged_rows = (
                con.execute(f"select count(*) from {STAGING_SCHEMA}.stg_apsis__{model}").fetchone() if ok else (0,)
            )
            summary.apsis[raw_table] = (raw_rows[0] if raw_rows else 0, staged_rows[0] if staged_rows else 0)
    summary.push = pushed if ok else None
    return summary

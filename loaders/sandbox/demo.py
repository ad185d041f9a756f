"""`elt demo`: the whole flow against the sandbox, in its own folder, with a short summary at the end."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
from rich.table import Table

from loaders import runtime
from loaders.sandbox.exports import DEMO_FEEDS, generate_tree
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
    docs_path: Path
    seconds: float
    ok: bool
    feeds: dict[str, FeedCounts] = field(default_factory=dict)

    def table(self) -> Table:
        table = Table(title="elt demo")
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
        return table

    def notes(self) -> list[str]:
        status = "[green]dbt build passed[/]" if self.ok else "[red]dbt build failed[/]"
        return [
            f"{status} in {self.seconds:.0f} s",
            f"warehouse: {self.duckdb_path}  (e.g. duckdb {self.duckdb_path} "
            f"-c 'select * from staging.stg_asapp__convos_intents limit 5')",
            f"docs site: {self.docs_path}  (elt docs --serve)",
        ]


def run_demo(base: Path, days: int = 3) -> DemoSummary:
    started = time.monotonic()
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    tree = generate_tree(base / "exports", days=days)
    os.environ["ELT_DUCKDB_PATH"] = str(base / "asapp.duckdb")
    os.environ["ELT_PIPELINES_DIR"] = str(base / "pipelines")
    os.environ["ELT_TARGET"] = "duckdb"
    from loaders.pipelines import load_asapp

    with SandboxSftpServer(tree.root, base / "keys") as endpoint:
        os.environ.update(endpoint.env())
        stats = load_asapp()
    ok = runtime.run_dbt(["--quiet", "build"]) and runtime.run_dbt(["--quiet", "docs", "generate"])
    summary = DemoSummary(
        runtime.duckdb_path(), runtime.project_dir() / "target" / "index.html", time.monotonic() - started, ok
    )
    with duckdb.connect(str(runtime.duckdb_path())) as con:  # dbt-duckdb keeps its own open
        for feed in DEMO_FEEDS:
            raw = con.execute(f"select count(*) from asapp_raw.{feed}").fetchone()
            staged = con.execute(f"select count(*) from staging.stg_asapp__{feed}").fetchone() if ok else (0,)
            s = stats.feed(feed)
            summary.feeds[feed] = FeedCounts(
                s.partitions_loaded, s.partitions_waiting, raw[0] if raw else 0, staged[0] if staged else 0
            )
    return summary

"""`elt`: the command line of asapp-elt (typer). Errors are one line with the fix; --debug shows tracebacks."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from loaders import runtime

app = typer.Typer(
    help="ASAPP and APSIS data into your warehouse (dlt + dbt), documented and tested.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
load_app = typer.Typer(help="Load raw data with dlt.", no_args_is_help=True)
app.add_typer(load_app, name="load")
# Wide enough for the summary tables when the output is a file or a pipe (CI logs, orchestrators).
SANDBOX_MODULES = ("asyncssh", "openapi_core")  # what the `sandbox` extra installs, as imported
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)
_state = {"debug": False}
FROM_HELP = "sftp, file-exporter or mirror (default: the one configured; required when several are)."

log = logging.getLogger("loaders.cli")


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every partition read.")] = False,
) -> None:
    _state["debug"] = debug
    if not debug:
        # a library's warning (dlt's logger, Python warnings from pyarrow, sqlglot...) names nothing a user of `elt`
        # can act on: errors still show, and --debug shows everything
        os.environ.setdefault("RUNTIME__LOG_LEVEL", "ERROR")
        warnings.filterwarnings("ignore")
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=debug)],
    )
    logging.getLogger("loaders").setLevel(level)
    for noisy in ("paramiko", "asyncssh"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not debug else logging.INFO)


def _root_cause(error: BaseException) -> BaseException:
    """dlt wraps errors raised inside sources; the user needs the innermost one of ours."""
    seen: set[int] = set()
    current: BaseException | None = error
    best = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__module__.startswith("loaders"):
            best = current
        current = current.__cause__ or current.__context__
    return best


def _fail(error: BaseException) -> NoReturn:
    if _state["debug"]:
        raise error
    from loaders.config_errors import missing_settings

    missing = missing_settings(error)  # dlt's own message lists every key it tried (63 lines for the SFTP source)
    if missing:
        console.print(f"[bold red]error:[/] {escape(missing[0])}", soft_wrap=True)
        for line in missing[1:]:
            console.print(escape(line), soft_wrap=True)
        raise typer.Exit(1)
    cause = _root_cause(error)
    console.print(f"[bold red]error:[/] {escape(str(cause))}")
    if not type(cause).__module__.startswith("loaders"):  # ours say what to fix; others may need the trace
        console.print("[dim](run with --debug for the traceback)[/]")
    raise typer.Exit(1)


def _guard(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except typer.Exit:
        raise
    except Exception as e:  # every failure ends as one clear line
        _fail(e)


def _print_load_summary(stats: Any) -> None:
    table = Table(title=f"elt load asapp --from {stats.source}" if stats.source else "elt load asapp")
    columns = (
        "feed",
        "partitions loaded",
        "waiting for _SUCCESS",
        "failed",
        "encrypted",
        "files",
        "MB",
        "rows",
        "rejected lines",
    )
    for col in columns:
        table.add_column(col, justify="left" if col == "feed" else "right")
    for feed, s in sorted(stats.feeds.items()):
        table.add_row(
            escape(feed),
            str(s.partitions_loaded),
            str(s.partitions_waiting),
            str(len(s.failed)),
            str(len(s.encrypted)),
            str(s.files),
            f"{s.bytes / 1e6:.1f}",
            str(s.rows),
            str(s.rejected),
        )
    out.print(table)
    if stats.reconnects:
        out.print(f"[yellow]the SFTP connection dropped and was re-opened {stats.reconnects} time(s)[/]")
    for feed, s in sorted(stats.feeds.items()):
        for failure in s.failed:
            out.print(f"[red]failed[/] {feed} {escape(failure)} (retried by the next run)")
        for column, d in sorted(s.drift.items()):
            out.print(
                f"[yellow]type drift[/] {feed}.{column}: {d.values} value(s) are not {d.documented}: "
                f"null in that column, kept as sent in asapp_raw.{feed}._asapp_untyped (the asapp_cast_failures test "
                "warns)"
            )
        if s.encrypted:
            out.print(
                f"[yellow]{feed}: {len(s.encrypted)} encrypted partition(s) skipped: no decryptor configured "
                "(SOURCES__ASAPP_SFTP__GNUPG_HOME or __DECRYPT_COMMAND)[/]"
            )
        for key, count in sorted(s.keys_set_aside.items()):
            out.print(
                f"[yellow]key set aside[/] {feed}: {escape(repr(key))} ({count} value(s)) would overwrite or share a "
                f"column: kept as sent in asapp_raw.{feed}._asapp_extra"
            )
        for key in s.restated:
            out.print(f"[yellow]restated[/] {feed} {escape(key)}: re-exported since its load, loaded again")
        for key in s.held:
            out.print(f"[yellow]held back[/] {feed} {escape(key)}: dated more than a day ahead of now, not loaded")
        if s.undocumented:
            out.print(
                f"[yellow]{feed}: not in export_docs.yaml: loaded to asapp_raw.{feed}, with no staging model (once "
                "ASAPP documents it, update export_docs.yaml and run `elt generate`)[/]"
            )
        if s.other_versions:
            out.print(
                f"[yellow]{feed}: partitions of version {', '.join(sorted(map(escape, s.other_versions)))} loaded to "
                f"asapp_raw.{feed}, but export_docs.yaml documents another version: staging keeps the documented "
                "version only. Update export_docs.yaml (the server's copy, after `elt schema-diff`), then `elt "
                "generate` and `elt build --full-refresh`[/]"
            )
    if stats.schema_changes:
        out.print(
            f"[yellow]the server's export_docs.yaml differs from the project's ({len(stats.schema_changes)} "
            "change(s)): see the warning above[/]"
        )
    if stats.export_docs_problem:
        out.print(f"[yellow]the server's {escape(stats.export_docs_problem)}[/]")
    if stats.ignored:
        out.print(f"[yellow]{len(stats.ignored)} name(s) outside ASAPP's layout were ignored:[/]")
        for name in stats.ignored[:5]:
            out.print(f"  {escape(name)}")
        if len(stats.ignored) > 5:
            out.print(f"  ... and {len(stats.ignored) - 5} more (see the warnings above)")
    rescanned = sorted(feed for feed, s in stats.feeds.items() if s.rescanned)
    if rescanned:
        shown = ", ".join(rescanned) if len(rescanned) <= 5 else f"{len(rescanned)} feeds"
        out.print(f"rescanned (every dt listed, late and restated partitions looked for): {shown}")


def _print_staging_summary(feeds: list[str]) -> None:
    from loaders.status import staging_counts

    counts = _guard(lambda: staging_counts(feeds)) if feeds else {}
    if not counts:
        return
    table = Table(title="staging (all loads so far)")
    for col in ("feed", "raw rows", "staged rows", "duplicates removed"):
        table.add_column(col, justify="left" if col == "feed" else "right")
    for feed, (raw, staged) in sorted(counts.items()):
        table.add_row(feed, str(raw), str(staged), str(raw - staged))
    out.print(table)


def _load_with_progress(run: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Runs a load showing partitions, files and MB per feed as they are read."""
    from rich.progress import Progress, TextColumn

    with Progress(TextColumn("{task.description}"), console=console, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(feed: str, s: Any) -> None:
            text = f"{feed}: {s.partitions_loaded} partitions, {s.files} files, {s.bytes / 1e6:.1f} MB, {s.rows} rows"
            if feed not in tasks:
                tasks[feed] = progress.add_task(text)
            progress.update(tasks[feed], description=text)

        return _guard(lambda: run(*args, on_progress=on_progress, **kwargs))


def _fail_on_failed_partitions(stats: Any) -> None:
    if any(s.failed for s in stats.feeds.values()):
        console.print("[red]some partitions could not be loaded (see above); everything else was loaded[/]")
        raise typer.Exit(1)


@load_app.command("asapp")
def load_asapp(
    feeds: Annotated[str | None, typer.Option(help="Comma separated feeds (default: every feed found).")] = None,
    since: Annotated[str | None, typer.Option(help="Skip partitions before this date (YYYY-MM-DD).")] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail, before loading, when the server's export_docs.yaml differs.")
    ] = False,
    max_bad_lines: Annotated[
        int | None,
        typer.Option(help="Bad lines a partition may have (they go to asapp_raw._rejects); more fail it. Default 10."),
    ] = None,
    rescan: Annotated[
        bool,
        typer.Option(
            "--rescan",
            help="List every dt: load late partitions and those re-exported since their load (a run does this "
            "by itself every SOURCES__ASAPP_SFTP__RESCAN_HOURS, default 24).",
        ),
    ] = False,
    from_: Annotated[str | None, typer.Option("--from", help=FROM_HELP)] = None,
) -> None:
    """ASAPP feeds (SFTP, File Exporter API or a mirror) -> raw tables in schema asapp_raw (one per feed),
    incrementally, exactly once.

    When the export location holds an export_docs.yaml that differs from the project's, the run warns
    (or, with --strict, fails before loading anything).
    """
    from loaders.loads import load_asapp as run

    feed_list = [f.strip() for f in feeds.split(",") if f.strip()] if feeds else None
    stats = _load_with_progress(
        run, feed_list, since, strict, max_bad_lines=max_bad_lines, rescan=rescan, transport=from_
    )
    _print_load_summary(stats)
    _fail_on_failed_partitions(stats)


@load_app.command("apsis")
def load_apsis(
    start_at: Annotated[
        str | None, typer.Option(help="Events window start (ISO date/time, UTC). Default: the last loaded end.")
    ] = None,
    end_at: Annotated[
        str | None, typer.Option(help="Events window end. Default: now, or a week after --start-at.")
    ] = None,
) -> None:
    """APSIS One profile export -> raw tables in schema apsis_raw (requests, polls, streams, flattens)."""
    from loaders.loads import load_apsis as run

    _print_apsis_summary(_guard(lambda: run(start_at, end_at)))


def _print_apsis_summary(stats: Any) -> None:
    table = Table(title="elt load apsis")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in sorted(stats.rows.items()):
        table.add_row(name, str(rows))
    out.print(table)
    out.print(f"{stats.exports} export(s): {', '.join(stats.windows) or 'none'}")


@app.command()
def generate(
    check: Annotated[bool, typer.Option("--check", help="Only check; exit 1 when generated files are stale.")] = False,
    export_docs: Annotated[Path | None, typer.Option(help="export_docs.yaml (default: the project's).")] = None,
) -> None:
    """export_docs.yaml -> dbt sources, staging models, docs and tests for every ASAPP feed."""
    from loaders.export_docs import codegen, load_export_docs
    from loaders.export_docs.untrusted import read_untrusted

    project = runtime.project_dir()
    # another file than the project's may be one a server shipped: read guarded, as `elt load` reads it
    path = export_docs or project / "export_docs.yaml"
    docs = _guard(lambda: read_untrusted(path) if export_docs else load_export_docs(path))
    result = codegen.write(docs, project, check=check)
    if check:
        problems = result.stale + result.orphaned
        for p in problems:
            console.print(f"stale: {p.relative_to(project)}")
        if problems:
            console.print("[red]generated files are stale:[/] run `elt generate`")
            raise typer.Exit(1)
        out.print(f"generated files are up to date ({len(docs)} feeds)")
        return
    out.print(f"{len(docs)} feeds: {len(result.written)} file(s) written, {len(result.orphaned)} removed")


@app.command("schema-diff")
def schema_diff(
    old: Annotated[Path, typer.Argument(help="The export_docs.yaml you have (e.g. the project's).")],
    new: Annotated[Path, typer.Argument(help="The newer export_docs.yaml (e.g. the one ASAPP just shipped).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the changes as JSON.")] = False,
) -> None:
    """Added / removed / retyped columns, key, ordering and version changes, changed descriptions and type
    spellings. Exit 1 on a breaking change."""
    import json

    from loaders.export_docs.diff import diff, is_breaking
    from loaders.export_docs.untrusted import read_untrusted

    # either file may be one a server shipped: both are read as untrusted (hostile YAML is an error, not a crash)
    changes = _guard(lambda: diff(read_untrusted(old), read_untrusted(new)))
    breaking = is_breaking(changes)
    if as_json:
        out.print_json(json.dumps({"breaking": breaking, "changes": [c.as_dict() for c in changes]}))
    elif not changes:
        out.print("no schema changes")
    else:
        table = Table(title=escape(f"schema changes: {old} -> {new}"))
        for col in ("feed", "change", "detail", "breaking"):
            table.add_column(col)
        for c in changes:  # descriptions are the vendor's text: printed as text, never as Rich markup
            table.add_row(escape(c.feed), c.kind, escape(c.detail), "[red]yes[/]" if c.breaking else "no")
        out.print(table)
        out.print(
            "[red]breaking changes: review the staging models, then `elt generate` and `elt build --full-refresh`[/]"
            if breaking
            else "additive changes only: `elt generate`"
        )
    if breaking:
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def build(ctx: typer.Context) -> None:
    """`dbt build` with the project's profile; extra arguments go to dbt (e.g. --select stg_asapp__utterances)."""
    if not _guard(lambda: runtime.run_dbt(["build", *ctx.args])):
        console.print("[red]dbt build failed[/] (see dbt's output above)")
        raise typer.Exit(1)


def _docs(serve: bool, port: int) -> None:
    if not runtime.run_dbt(["docs", "generate"]):
        console.print("[red]dbt docs generate failed[/]")
        raise typer.Exit(1)
    site = runtime.project_dir() / "target" / "index.html"
    out.print(f"docs site: {site}")
    if serve:
        runtime.run_dbt(["docs", "serve", "--port", str(port), "--host", "127.0.0.1", "--no-browser"])


@app.command()
def docs(
    serve: Annotated[bool, typer.Option("--serve", help="Serve the site on 127.0.0.1.")] = False,
    port: Annotated[int, typer.Option(help="Port for --serve.")] = 8080,
) -> None:
    """Generate the dbt docs site (sources, models, columns, lineage), and serve it with --serve."""
    _guard(lambda: _docs(serve, port))


@app.command()
def status(
    all_feeds: Annotated[bool, typer.Option("--all", help="Also list the feeds never loaded.")] = False,
    from_: Annotated[str | None, typer.Option("--from", help=FROM_HELP)] = None,
) -> None:
    """What has been loaded per ASAPP feed: rows, latest partition, freshness against its sync time."""
    from loaders.asapp_sftp.transports import choose
    from loaders.export_docs.catalog import read_catalog
    from loaders.status import asapp_status

    transport = _guard(lambda: choose(from_))  # as `elt load asapp` would choose
    feeds = _guard(asapp_status)
    catalog = read_catalog(runtime.project_dir())  # cadence and PII columns (seeds/asapp_feed_catalog.csv)
    table = Table(title="asapp feeds")
    columns = (
        "feed",
        "rows",
        "latest partition",
        "last loaded",
        "waiting",
        "sync",
        "pii columns",
        "fresh",
        "rescanned",
        "not loaded",
        "restated",
    )
    for col in columns:
        left = col in ("feed", "latest partition", "last loaded", "rescanned", "pii columns")
        table.add_column(col, justify="left" if left else "right")
    for f in feeds:
        if f.fresh is None and not all_feeds:
            continue
        fresh = "-" if f.fresh is None else "[green]yes[/]" if f.fresh else "[red]no[/]"
        table.add_row(
            f.feed,
            str(f.rows),
            f"{f.latest_partition:%Y-%m-%d %H:%M}" if f.latest_partition else "-",
            f"{f.last_loaded_at:%Y-%m-%d %H:%M}" if f.last_loaded_at else "-",
            str(f.waiting),
            f"{f.sync_time} ({catalog[f.feed].cadence})" if f.feed in catalog else f.sync_time,
            escape(" ".join(catalog[f.feed].pii_columns)) if f.feed in catalog else "?",
            fresh,
            escape(f.rescanned_at[:16].replace("T", " ")) if f.rescanned_at else "-",
            str(f.not_loaded),
            str(f.restated),
        )
    out.print(table)
    never = sum(1 for f in feeds if f.fresh is None)
    if never and not all_feeds:
        out.print(f"{never} documented feed(s) never loaded (--all lists them)")
    out.print(
        "waiting: partitions without _SUCCESS yet. rescanned: the last full listing of the feed's dt folders; not "
        "loaded: what it found and did not load (waiting, held back, failed, encrypted); restated: what it loaded "
        "again, re-exported since its load. `elt load asapp --rescan` lists every dt now."
    )
    out.print(f"transport: {transport} (the raw rows' _asapp_source names the one that delivered each)")


@app.command()
def sql(
    statement: Annotated[str, typer.Argument(help='e.g. "select * from staging.stg_asapp__utterances limit 5"')],
    db: Annotated[
        Path | None, typer.Option("--db", help="The DuckDB file (default: ELT_DUCKDB_PATH, warehouse/asapp.duckdb).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Rows shown at most.")] = 100,
) -> None:
    """Query the DuckDB warehouse, read-only, and show the rows as a table."""
    from loaders.warehouse_sql import query

    result = _guard(lambda: query(statement, db, limit))
    table = Table()
    for column in result.columns:
        table.add_column(escape(column))
    for row in result.rows:  # values are data, never Rich markup
        table.add_row(*("[dim]null[/]" if v is None else escape(str(v)) for v in row))
    out.print(table)
    out.print(f"{len(result.rows)} row(s)" + (f", more not shown (--limit {limit})" if result.more else ""))


@app.command()
def push(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and show what would be sent; send nothing.")
    ] = False,
) -> None:
    """customer_metadata -> ASAPP's many-customer-metadata API (new and changed rows; outcomes logged)."""
    from rich.progress import Progress

    from loaders.asapp_metadata import push as run_push

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("checking and pushing rows", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        stats = _guard(lambda: run_push(dry_run=dry_run, on_progress=on_progress))
    _print_push_summary(stats, dry_run)


def _print_push_summary(stats: Any, dry_run: bool) -> None:
    import json

    table = Table(title="elt push" + (" --dry-run" if dry_run else ""))
    for col in (
        "rows",
        "unchanged",
        "invalid (not sent)",
        "to send" if dry_run else "sent",
        "accepted",
        "failed",
        "batches",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        str(stats.rows),
        str(stats.unchanged),
        str(stats.invalid),
        str(stats.to_send if dry_run else stats.sent),
        str(stats.accepted),
        str(stats.failed),
        str(stats.batches),
    )
    out.print(table)
    for reason in stats.errors[:5]:
        out.print(f"  [yellow]{escape(reason)}[/]")
    if len(stats.errors) > 5:
        out.print("  ... more" + ("" if dry_run else " in the push log"))
    if dry_run:
        for item in stats.dry_run_items:
            out.print_json(json.dumps(item))
        if stats.to_send > len(stats.dry_run_items):
            out.print(f"... and {stats.to_send - len(stats.dry_run_items)} more item(s)")
    elif stats.failed or stats.invalid:
        out.print(
            "outcomes: select * from asapp_metadata.asapp_metadata_push_log; failed items are retried by the next push"
        )


@app.command()
def run(
    ctx: typer.Context,
    from_: Annotated[str | None, typer.Option("--from", help="ASAPP's transport: " + FROM_HELP)] = None,
) -> None:
    """The main job: load asapp, load apsis (when configured), dbt build, push (when ASAPP_API__BASE_URL is set)."""
    from loaders.loads import load_apsis as run_apsis
    from loaders.loads import load_asapp as run_asapp
    from loaders.run_lock import run_lock

    # held until the command ends: a second `elt run` must not load while this one builds or pushes
    _guard(lambda: ctx.with_resource(run_lock("run", "elt run")))

    stats = _load_with_progress(run_asapp, None, None, transport=from_)
    _print_load_summary(stats)
    if runtime.is_configured("sources.apsis.base_url"):
        _print_apsis_summary(_guard(lambda: run_apsis(None, None)))
    else:
        out.print("APSIS is not configured (SOURCES__APSIS__BASE_URL): skipped")
    if not _guard(lambda: runtime.run_dbt(["build"])):
        console.print("[red]dbt build failed[/]")
        raise typer.Exit(1)
    _print_staging_summary([feed for feed, s in stats.feeds.items() if s.partitions_loaded])
    _fail_on_failed_partitions(stats)  # after the build: what did load is usable
    if runtime.is_configured("asapp_api.base_url"):
        from loaders.asapp_metadata import push as run_push

        _print_push_summary(_guard(lambda: run_push()), dry_run=False)
    else:
        out.print("ASAPP's metadata API is not configured (ASAPP_API__BASE_URL): push skipped")


@app.command()
def demo(
    days: Annotated[int, typer.Option(help="Days of hourly partitions in the generated export tree.")] = 3,
    workdir: Annotated[Path | None, typer.Option(help="Where the demo writes (default: warehouse/demo).")] = None,
    from_: Annotated[
        str, typer.Option("--from", help="The sandbox transport: sftp, file-exporter (its emulator) or mirror.")
    ] = "sftp",
) -> None:
    """The whole flow against the local sandbox: generated exports behind a local SFTP server, load, build, docs."""
    try:
        from loaders.sandbox.demo import run_demo
    except ModuleNotFoundError as e:  # the sandbox's servers are an extra: production installs lack them
        if (e.name or "").split(".")[0] not in SANDBOX_MODULES:
            raise
        console.print(
            f"[red]error:[/] elt demo needs the sandbox extra ({e.name} is missing): pip install -e '.\\[sandbox]'"
        )
        raise typer.Exit(1) from None

    base = workdir or runtime.project_dir() / "warehouse" / "demo"
    summary = _guard(lambda: run_demo(base.resolve(), days=days, transport=from_))
    out.print(summary.table())
    if summary.push is not None:
        _print_push_summary(summary.push, dry_run=False)
    for line in summary.notes():
        out.print(line, soft_wrap=True)  # unwrapped: its commands are copied as printed
    if not summary.ok:
        raise typer.Exit(1)


def entrypoint() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

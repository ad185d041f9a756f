"""The server's export_docs.yaml against the project's: a warning, or with --strict an error, before a load."""

from __future__ import annotations

import logging
import shutil

from loaders import runtime
from loaders.asapp_sftp import LoadStats
from loaders.export_docs.diff import Change, diff, is_breaking
from loaders.export_docs.model import ExportDocsError
from loaders.export_docs.project import project_export_docs

log = logging.getLogger(__name__)


class SchemaDriftError(RuntimeError):
    """The server's export_docs.yaml differs from the project's (with --strict)."""


def check_export_docs(stats: LoadStats, strict: bool) -> list[Change]:
    """Diff the server's export_docs.yaml (when it has one) against the project's; warn, or fail when strict.

    The server's file is read as untrusted input (read_untrusted): one that cannot be read, or is invalid or hostile,
    is a warning and the load goes on with the project's file (an error with strict). It is kept beside the DuckDB
    file either way, for `elt schema-diff` or for ASAPP."""
    from loaders.export_docs.untrusted import read_untrusted

    if stats.export_docs_problem and strict:  # found, but not downloaded (larger than untrusted.MAX_BYTES)
        raise SchemaDriftError(f"the server's {stats.export_docs_problem}")
    if stats.export_docs is None:
        return []
    kept = runtime.duckdb_path().parent / "export_docs.server.yaml"
    project = project_export_docs()
    changes: list[Change] = []
    problem = ""
    try:
        changes = diff(project, read_untrusted(stats.export_docs))
    except ExportDocsError as e:
        problem = str(e)
    if problem:  # raised or logged here, not in the except clause: the CLI shows this message, not the inner one
        try:
            shutil.copyfile(stats.export_docs, kept)
        except OSError:
            kept_note = ""  # a file that cannot be read cannot be kept either
        else:
            kept_note = f" (kept as {kept})"
        stats.export_docs.unlink(missing_ok=True)
        message = f"the server's export_docs.yaml cannot be read{kept_note}: {problem}"
        if strict:
            raise SchemaDriftError(message)
        log.warning("%s; the load goes on with the project's export_docs.yaml", message)
        return []
    if changes:
        shutil.copyfile(stats.export_docs, kept)
        summary = "; ".join(f"{c.feed}: {c.kind} {c.detail}" for c in changes[:10])
        more = f" (and {len(changes) - 10} more)" if len(changes) > 10 else ""
        message = (
            f"the server's export_docs.yaml differs from the project's in {len(changes)} way(s)"
            f"{' (breaking)' if is_breaking(changes) else ''}: {summary}{more}. Review with "
            f"`elt schema-diff export_docs.yaml {kept}`, then copy it over export_docs.yaml and run `elt generate`."
        )
        if strict:
            raise SchemaDriftError(message)
        log.warning("%s", message)
    stats.export_docs.unlink(missing_ok=True)
    return changes

"""The project's export_docs.yaml, read once per process."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from loaders import runtime
from loaders.export_docs.model import ExportDocs, load_export_docs


@cache
def _read_export_docs(path: Path, mtime_ns: int) -> ExportDocs:
    return load_export_docs(path)


def project_export_docs() -> ExportDocs:
    """The project's export_docs.yaml, parsed once per process (again only if the file changed)."""
    path = runtime.project_dir() / "export_docs.yaml"
    try:
        mtime_ns = path.stat().st_mtime_ns
    except FileNotFoundError:
        mtime_ns = 0  # load_export_docs says it is missing
    return _read_export_docs(path, mtime_ns)

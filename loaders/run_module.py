"""`python -m loaders.<pipeline> [options]`: each pipeline run the way dlt users run a pipeline, as a module, with
the options, summary and error messages of its `elt` command."""

from __future__ import annotations

import sys


def run_module(module: str, *command: str) -> None:
    """Run `elt <command> [options]` with this process's arguments; elt's own options (--debug, -v) may come
    anywhere among them."""
    from loaders.cli import app

    args = sys.argv[1:]
    own = [a for a in args if a in ("--debug", "--verbose", "-v")]
    app([*own, *command, *(a for a in args if a not in own)], prog_name=f"python -m {module}")

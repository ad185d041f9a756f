"""A dlt plugin (entry point group `dlt` in pyproject.toml): in this project, dlt's default pipelines folder is
the project's own (`warehouse/pipelines`, or ELT_PIPELINES_DIR), where `elt` keeps its pipelines. So dlt's CLI
finds them from the project root with no flags (`dlt pipeline asapp_sftp info`), as a dlt user expects, while the
pipelines' state stays beside the warehouse it describes (a state in ~/.dlt would outlive a deleted warehouse and
claim partitions that are no longer loaded). Outside the project, dlt behaves as it always does.

dlt loads this module whenever it starts: it imports nothing heavy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dlt.common import known_env
from dlt.common.configuration import plugins
from dlt.common.runtime.run_context import RunContext

from loaders import runtime


class ProjectRunContext(RunContext):
    """dlt's default run context, with the project's pipelines folder as the default one."""

    def get_data_entity(self, entity: str) -> str:
        if entity == "pipelines" and not os.environ.get(known_env.DLT_DATA_DIR):  # dlt's own override still wins
            return str(runtime.pipelines_dir())
        return super().get_data_entity(entity)


@plugins.hookimpl(specname="plug_run_context", tryfirst=True)
def plug_run_context_impl(run_dir: str | None, runtime_kwargs: dict[str, Any] | None) -> RunContext | None:
    """This project's context when dlt runs in the project (its root is the working folder, or DLT_PROJECT_DIR,
    which `elt` sets); None lets dlt's own plugins decide everywhere else."""
    where = os.environ.get(known_env.DLT_PROJECT_DIR) or run_dir or "."
    try:
        in_project = Path(where).resolve() == runtime.project_dir()
    except OSError:
        return None
    return ProjectRunContext(run_dir) if in_project else None

"""`python -m loaders.asapp_metadata [options]`: the asapp_metadata pipeline run the way dlt users run a pipeline,
the same as `elt push [options]` (`--help` lists them)."""

from loaders.run_module import run_module

run_module("loaders.asapp_metadata", "push")

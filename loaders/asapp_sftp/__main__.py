"""`python -m loaders.asapp_sftp [options]`: the asapp_sftp pipeline run the way dlt users run a pipeline,
the same as `elt load asapp [options]` (`--help` lists them)."""

from loaders.run_module import run_module

run_module("loaders.asapp_sftp", "load", "asapp")

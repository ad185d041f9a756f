"""`python -m loaders.apsis [options]`: the apsis pipeline run the way dlt users run a pipeline,
the same as `elt load apsis [options]` (`--help` lists them)."""

from loaders.run_module import run_module

run_module("loaders.apsis", "load", "apsis")

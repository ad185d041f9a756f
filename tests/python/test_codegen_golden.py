"""Golden test of the generator on a small export_docs.yaml. After an intended change of the generated code,
refresh the golden files with `UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/python/test_codegen_golden.py`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loaders.export_docs import codegen, load_export_docs

GOLDEN = Path(__file__).parent / "golden"
FILES = codegen.generate(load_export_docs(GOLDEN / "export_docs.yaml"))


@pytest.mark.parametrize("generated", FILES, ids=[f.path.name for f in FILES])
def test_generated_file_matches_golden(generated: codegen.GeneratedFile) -> None:
    golden = GOLDEN / generated.path.name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(generated.content)
    assert generated.content == golden.read_text()

"""The server's export_docs.yaml read as untrusted input: a hostile file is one clear error, quickly, and the
process reading it survives."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from loaders.export_docs import load_export_docs
from loaders.export_docs.model import ExportDocsError
from loaders.export_docs.untrusted import MAX_BYTES, read_untrusted
from tests.python.helpers import PROJECT

QUICK_SECONDS = 5


@contextmanager
def quickly() -> Iterator[None]:
    started = time.monotonic()
    yield
    assert time.monotonic() - started < QUICK_SECONDS


def _file(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "export_docs.yaml"
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def test_the_project_file_reads_as_the_trusted_loader_reads_it() -> None:
    assert read_untrusted(PROJECT / "export_docs.yaml") == load_export_docs(PROJECT / "export_docs.yaml")


def test_anchors_and_aliases_that_stay_small_are_accepted(tmp_path: Path) -> None:
    text = (
        "schemas:\n- tables:\n"
        "  - name: feed_a\n    primary_key: id\n    columns: &cols\n    - {name: id, type: bigint}\n"
        "  - name: feed_b\n    primary_key: id\n    columns: *cols\n"
    )
    docs = read_untrusted(_file(tmp_path, text))
    assert docs["feed_b"].column_names == docs["feed_a"].column_names == ["id"]


BILLION_LAUGHS = "a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (BILLION_LAUGHS, "expands to more than"),
        ("[" * 100_000, "nested deeper than"),
        ("a: " + "{a: " * 100_000, "nested deeper than"),
        ("- " * 100_000 + "x", "nested deeper than"),
        (b"schemas: [\xff\xfe]\n", "not UTF-8"),
        ("schemas: [", "not valid YAML"),
        ("schemas: !!python/object/apply:os.system ['true']", "not valid YAML"),
        ("- 1\n- 2\n", "'schemas' list"),
        ("", "'schemas' list"),
        ("{[a]: 1}", "not valid YAML"),
        ("a: \x07", "not valid YAML"),
    ],
)
def test_hostile_file_is_one_clear_error_quickly(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = _file(tmp_path, content)
    with quickly(), pytest.raises(ExportDocsError, match=message) as refused:
        read_untrusted(path)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)


def test_file_over_the_cap_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "export_docs.yaml"
    with path.open("wb") as f:
        f.truncate(MAX_BYTES + 1)
    with quickly(), pytest.raises(ExportDocsError, match=f"larger than {MAX_BYTES} bytes"):
        read_untrusted(path)


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ExportDocsError, match="cannot be read"):
        read_untrusted(tmp_path / "absent.yaml")


def test_libyaml_crashes_on_deep_nesting_so_the_parse_runs_in_its_own_process(tmp_path: Path) -> None:
    """Why the guard exists: PyYAML's C loader recurses per level and overflows the C stack (a segfault, which no
    except clause catches), where the guarded reader above refuses the same text with an error."""
    crash = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource; resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); "
            "import yaml; yaml.load('[' * 100000, Loader=yaml.CSafeLoader)",
        ],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert crash.returncode < 0  # killed by a signal (SIGSEGV)


def test_the_parser_process_is_bounded_in_memory_and_time(tmp_path: Path) -> None:
    """The backstops for what the event checks do not foresee: a parse that needs more memory or time than allowed
    ends as an error, never as a dead or stuck loader."""
    with pytest.raises(ExportDocsError, match="more memory than"):
        read_untrusted(PROJECT / "export_docs.yaml", memory_bytes=24 * 2**20)  # it needs about twice that
    with pytest.raises(ExportDocsError, match="longer than"):
        read_untrusted(PROJECT / "export_docs.yaml", timeout_seconds=0.05)

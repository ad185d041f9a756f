"""Read an export_docs.yaml from outside the project (the one the SFTP server ships) as untrusted input.

YAML from a server can be built to break its reader: aliases that expand exponentially ("billion laughs"), nesting
so deep that libyaml's composer overflows the C stack (a segfault: no except clause catches it), or sheer size. So
the file is capped at MAX_BYTES and checked to be UTF-8 here, and parsed in a child Python process with an address
space limit and a timeout, which first refuses too deep or too expanded a document from the parser's events
(loaders.yaml_load.check_limits), then hands the document back as JSON; the validation of its content
(parse_export_docs) runs here. Whatever the file holds, the caller gets an ExportDocs or one ExportDocsError.
"""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from loaders.export_docs.model import ExportDocs, ExportDocsError, parse_export_docs

MAX_BYTES = 16 * 2**20  # far larger than ASAPP's 43-feed file; the SFTP download stops here too
MAX_DEPTH = 64  # ASAPP's file nests 7 levels
MAX_EXPANDED = 4 * MAX_BYTES  # characters, with aliases repeated: an alias may repeat, not explode
MEMORY_BYTES = 2 * 2**30  # the child's address space: a 16 MiB file of ASAPP's shape peaks near 0.6 GB
TIMEOUT_SECONDS = 60.0  # a 16 MiB file of ASAPP's shape parses in about 11 s
_MAX_MESSAGE = 300  # a YAML error quotes the offending line, which can be the whole file

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
# -I: the child ignores PYTHON* variables, the user's site and the working directory; it imports this module
# from the checkout it belongs to.
_CHILD = (
    f"import sys; sys.path.insert(0, {str(_PROJECT_ROOT)!r}); "
    "from loaders.export_docs.untrusted import _child_main; _child_main()"
)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


def read_untrusted(
    path: Path, *, memory_bytes: int = MEMORY_BYTES, timeout_seconds: float = TIMEOUT_SECONDS
) -> ExportDocs:
    """The feeds of an export_docs.yaml that may be hostile, or one ExportDocsError saying why not.

    Args:
        path: the file (a local copy of the server's).
        memory_bytes: the address space the parsing process may use.
        timeout_seconds: how long the parsing process may take.
    """
    data, problem = _read(path)
    if problem is None:
        document, problem = _parse_in_child(data, memory_bytes, timeout_seconds)
    if problem is None:
        try:
            return parse_export_docs(document)
        except ExportDocsError as e:
            problem = str(e)
    # raised here, not in an except clause: one error naming the file, with no inner one chained to it
    raise ExportDocsError(f"{path}: {problem}")


def _read(path: Path) -> tuple[bytes, str | None]:
    """(the file's bytes, None), or (b"", why not): at most MAX_BYTES of a regular file, UTF-8."""
    too_large = f"larger than {MAX_BYTES} bytes: not read"
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return b"", "cannot be read (not a regular file)"  # a FIFO or a device could block or never end
        if path.stat().st_size > MAX_BYTES:
            return b"", too_large
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        return b"", f"cannot be read ({e.strerror or e})"
    if len(data) > MAX_BYTES:  # it grew since it was looked at
        return b"", too_large
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return b"", f"not UTF-8 (byte {e.start}: {data[e.start : e.start + 4]!r})"
    return data, None


def _parse_in_child(data: bytes, memory_bytes: int, timeout_seconds: float) -> tuple[Any, str | None]:
    """(document, None), or (None, why not)."""
    limits = f"{memory_bytes // 2**20} MiB of memory and {timeout_seconds:g} s"
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _CHILD, str(memory_bytes)],
            input=data,
            capture_output=True,
            timeout=timeout_seconds,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"parsing it took longer than {timeout_seconds:g} s: refused"
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name if -done.returncode in signal.valid_signals() else "a signal"
        return None, f"the YAML parser died ({name}) within its limits of {limits}: refused"
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        answer = None
    if done.returncode != 0 or not isinstance(answer, dict):
        last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        return None, _one_line(f"the YAML parser failed (exit {done.returncode}: {last[0]})")
    if "error" in answer:
        return None, _one_line(str(answer["error"]))
    return answer.get("document"), None


def _child_main() -> None:
    """The parsing process: export_docs.yaml on stdin, {"document": ...} or {"error": ...} as JSON on stdout."""
    import yaml

    from loaders.yaml_load import safe_load_limited

    memory_bytes = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file of up to MEMORY_BYTES
    with contextlib.suppress(ValueError, OSError):  # a platform without this limit: the timeout still bounds it
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    try:
        text = sys.stdin.buffer.read().decode("utf-8")
        document = safe_load_limited(text, MAX_DEPTH, MAX_EXPANDED)
        output = json.dumps({"document": document}, default=str)
    except MemoryError:
        output = json.dumps({"error": f"parsing it needs more memory than {memory_bytes // 2**20} MiB: refused"})
    except yaml.YAMLError as e:
        output = json.dumps({"error": f"not valid YAML: {_one_line(str(e))}"})
    except (ValueError, TypeError, RecursionError) as e:  # keys JSON cannot hold, a self-referencing value
        output = json.dumps({"error": f"not a plain YAML document: {_one_line(str(e))}"})
    sys.stdout.write(output)

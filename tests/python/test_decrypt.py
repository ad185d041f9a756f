"""`.enc` files ("doubly encrypted" exports) with a real GnuPG key: decrypted by gpg with the configured keyring
and passphrase, or by any configured streaming command; a file the key cannot open fails its partition (named,
retried), and the passphrase never shows."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loaders.loads import load_asapp
from loaders.sandbox.exports import partition_dir, write_partition
from tests.python.helpers import Warehouse, elt, query, scalar

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
PASSPHRASE = "purple-lantern-orbit-7"
RECIPIENT = "asapp-export-test@example.invalid"


def gpg(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--quiet", "--no-tty", *args],
        input=stdin,
        capture_output=True,
        check=True,
    ).stdout


def new_home(name: str) -> Path:
    # gpg-agent's socket lives in the home: keep its path short (sockets are limited to ~108 bytes)
    home = Path(tempfile.mkdtemp(prefix=f"gpg-{name}-", dir="/tmp"))
    home.chmod(0o700)
    # the agent must not remember a passphrase between runs: each decryption proves the configured one works
    (home / "gpg-agent.conf").write_text("default-cache-ttl 0\nmax-cache-ttl 0\n")
    return home


@pytest.fixture(scope="module")
def keyring() -> Iterator[tuple[Path, Path]]:
    """(the customer's keyring with a passphrase-protected secret key, another keyring without it)."""
    if shutil.which("gpg") is None:
        pytest.fail("GnuPG is not installed: run `make sysdeps` (apt-get install gnupg)")
    home, other = new_home("customer"), new_home("other")
    pin = ["--pinentry-mode", "loopback", "--passphrase", PASSPHRASE]
    gpg(home, *pin, "--quick-gen-key", f"ASAPP export <{RECIPIENT}>", "ed25519", "cert,sign", "never")
    fingerprint = gpg(home, "--list-keys", "--with-colons", RECIPIENT).decode().split("fpr:::::::::")[1].split(":")[0]
    gpg(home, *pin, "--quick-add-key", fingerprint, "cv25519", "encr", "never")
    gpg(other, *pin, "--quick-gen-key", "someone else <other@example.invalid>", "ed25519", "default", "never")
    try:
        yield home, other
    finally:
        for h in (home, other):
            subprocess.run(["gpgconf", "--homedir", str(h), "--kill", "gpg-agent"], check=False)
            shutil.rmtree(h, ignore_errors=True)


def rows(start: int, n: int) -> list[dict[str, object]]:
    return [{"issue_id": i, "final_intent_code": f"I{i}"} for i in range(start, start + n)]


def write_encrypted(root: Path, at: datetime, home: Path, chunks: list[list[dict[str, object]]]) -> Path:
    """A partition of FEED.jsonl.NN.gz.enc files: gzip, then encrypted to the customer's key (as ASAPP does)."""
    directory = partition_dir(root, "convos_intents", at)
    directory.mkdir(parents=True)
    for i, chunk in enumerate(chunks):
        plain = gzip.compress("".join(json.dumps(r) + "\n" for r in chunk).encode())
        encrypted = gpg(home, "--trust-model", "always", "--recipient", RECIPIENT, "--encrypt", stdin=plain)
        (directory / f"convos_intents.jsonl.{i:02d}.gz.enc").write_bytes(encrypted)
    (directory / "_SUCCESS").write_bytes(b"")
    return directory


def test_gpg_decrypts_with_the_keyring_and_passphrase(
    exports: Path, warehouse: Warehouse, keyring: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, _ = keyring
    write_partition(exports, "convos_intents", T0, rows(1, 2))
    write_encrypted(exports, T0.replace(hour=11), home, [rows(10, 3), rows(20, 4)])
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__GNUPG_HOME", str(home))
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__GNUPG_PASSPHRASE", PASSPHRASE)
    result = elt("load", "asapp")
    assert result.returncode == 0, result.stdout + result.stderr
    assert PASSPHRASE not in result.stdout + result.stderr
    loaded = query(
        warehouse,
        "select issue_id, final_intent_code, _asapp_file, _asapp_line from asapp_raw.convos_intents "
        "where _asapp_file like '%.enc' order by issue_id::int",
    )
    assert [(int(i), c) for i, c, _, _ in loaded] == [(i, f"I{i}") for i in (10, 11, 12, 20, 21, 22, 23)]
    assert {f for _, _, f, _ in loaded} == {"convos_intents.jsonl.00.gz.enc", "convos_intents.jsonl.01.gz.enc"}
    assert [int(n) for _, _, f, n in loaded if f.endswith("01.gz.enc")] == [1, 2, 3, 4]
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 9


def test_any_streaming_command_can_decrypt(
    exports: Path, warehouse: Warehouse, keyring: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    home, _ = keyring
    write_encrypted(exports, T0, home, [rows(1, 5)])
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE)
    command = f"gpg --homedir {home} --batch --quiet --pinentry-mode loopback --passphrase-file {secret} --decrypt"
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__DECRYPT_COMMAND", command)
    stats = load_asapp()
    assert stats.feeds["convos_intents"].partitions_loaded == 1 and not stats.feeds["convos_intents"].encrypted
    assert sorted(int(i) for (i,) in query(warehouse, "select issue_id from asapp_raw.convos_intents")) == [
        1,
        2,
        3,
        4,
        5,
    ]


def test_a_file_the_key_cannot_open_fails_its_partition_and_is_retried(
    exports: Path, warehouse: Warehouse, keyring: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, other = keyring
    write_partition(exports, "convos_intents", T0, rows(1, 2))
    write_encrypted(exports, T0.replace(hour=11), home, [rows(10, 3)])
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__GNUPG_HOME", str(other))  # the wrong keyring
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__GNUPG_PASSPHRASE", PASSPHRASE)
    result = elt("load", "asapp")
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert "convos_intents.jsonl.00.gz.enc: decryption failed" in " ".join(out.split())
    assert PASSPHRASE not in out
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 2  # the rest loaded

    monkeypatch.setenv("SOURCES__ASAPP_SFTP__GNUPG_HOME", str(home))
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__GNUPG_PASSPHRASE", "not-the-passphrase")
    stats = load_asapp()
    assert len(stats.feeds["convos_intents"].failed) == 1  # a wrong passphrase fails it the same way

    monkeypatch.setenv("SOURCES__ASAPP_SFTP__GNUPG_PASSPHRASE", PASSPHRASE)
    stats = load_asapp()
    assert stats.feeds["convos_intents"].partitions_loaded == 1 and not stats.feeds["convos_intents"].failed
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 5


def test_a_missing_keyring_is_a_clear_error(
    exports: Path, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_partition(exports, "convos_intents", T0, rows(1, 2))
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__GNUPG_HOME", str(exports / "no-such-keyring"))
    result = elt("load", "asapp")
    assert result.returncode == 1
    assert "SOURCES__ASAPP_SFTP__GNUPG_HOME" in result.stdout + result.stderr

"""Secrets never leak: with every secret configured (SSH key passphrase, GnuPG passphrase, APSIS client secret,
ASAPP API secret), failing and succeeding runs with --debug, then the docs site; every byte they printed and every
file they wrote (dlt's state, traces and load packages, the DuckDB file, dbt's target folder with the docs site,
dbt's logs) is searched for the secret values."""

from __future__ import annotations

from pathlib import Path

import pytest

from loaders.sandbox.apsis_emulator import ApsisEmulator
from loaders.sandbox.asapp_api_emulator import AsappApiEmulator
from loaders.sandbox.exports import CUSTOMERS, generate_tree
from loaders.sandbox.openssh import Sshd
from tests.python.helpers import Warehouse, elt, key_copy, scalar

SECRETS = {
    "SOURCES__ASAPP_SFTP__PRIVATE_KEY_PASSPHRASE": "ssh-pass-7f3a9c1e",
    "SOURCES__ASAPP_SFTP__GNUPG_PASSPHRASE": "gpg-pass-2b8d4e6f",
    "SOURCES__APSIS__CLIENT_SECRET": "apsis-secret-5c1e7a93",
    "ASAPP_API__API_SECRET": "asapp-secret-9e4f2d71",
}


def test_no_secret_in_any_output_trace_database_or_docs_site(
    exports: Path, warehouse: Warehouse, sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passphrase = SECRETS["SOURCES__ASAPP_SFTP__PRIVATE_KEY_PASSPHRASE"]
    key = key_copy(sshd.client_key, tmp_path / "protected_key", passphrase=passphrase)
    keyring = tmp_path / "gnupg"
    keyring.mkdir(mode=0o700)
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__PRIVATE_KEY_PATH", str(key))
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__GNUPG_HOME", str(keyring))
    generate_tree(exports, days=1, issues_per_hour=2)
    outputs: list[str] = []

    def run(*args: str) -> int:
        result = elt("--debug", *args)
        outputs.append(result.stdout + result.stderr)
        return result.returncode

    apsis_secret = SECRETS["SOURCES__APSIS__CLIENT_SECRET"]
    with (
        ApsisEmulator(tmp_path / "apsis", client_secret=apsis_secret, profiles=CUSTOMERS, polls_until_ready=1) as ap,
        AsappApiEmulator(api_secret="the-server-expects-another") as api,
    ):
        for k, v in {**ap.env(), **api.env(), **SECRETS, "SOURCES__APSIS__POLL_INITIAL_INTERVAL": "0.01"}.items():
            monkeypatch.setenv(k, v)
        # everything loads and builds, then the push is refused (wrong ASAPP secret): a failing run
        assert run("run") != 0
        assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") > 0
        assert not api.state.persisted
        monkeypatch.setenv("SOURCES__APSIS__CLIENT_SECRET", "apsis-wrong-6d2c8b40")
        assert run("load", "apsis") != 0  # refused by APSIS: the configured (wrong) secret must not show either
        monkeypatch.setenv("SOURCES__ASAPP_SFTP__PRIVATE_KEY_PASSPHRASE", "ssh-wrong-1a5e9d37")
        assert run("load", "asapp") != 0  # the key cannot be decrypted
    assert run("docs") == 0
    site = Path(str(tmp_path / "target")) / "index.html"
    assert site.exists() and (site.parent / "catalog.json").exists()

    values = [*SECRETS.values(), "apsis-wrong-6d2c8b40", "ssh-wrong-1a5e9d37"]
    for output in outputs:
        for secret in values:
            assert secret not in output
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any("pipelines" in p.parts and p.name == "trace.pickle" for p in written), "no dlt trace to search"
    for path in written:
        data = path.read_bytes()
        for secret in values:
            assert secret.encode() not in data, f"{secret} found in {path}"

"""Decrypting `.enc` files with a streaming command (GnuPG by default)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loaders.asapp_sftp.transports.base import Target


class DecryptorError(RuntimeError):
    """The decryptor is configured in a way that cannot work (the message says how to fix it)."""


@dataclass(frozen=True)
class Decryptor:
    """Decrypts `.enc` files ("doubly encrypted" exports) with a streaming command: the encrypted file on its
    stdin, the plain bytes on its stdout, never held in memory. GnuPG by default: `gpg --batch --decrypt` with the
    configured keyring; the key's passphrase goes to gpg on a pipe, never on a command line or in the environment.
    """

    command: tuple[str, ...]
    passphrase: str | None = None

    @classmethod
    def configure(cls, command: str | None, gnupg_home: str | None, passphrase: str | None) -> Decryptor | None:
        """None when nothing is configured (encrypted partitions are then skipped and listed)."""
        if command and command.strip() != "gpg":
            custom = tuple(shlex.split(command))
            if not shutil.which(custom[0]):
                raise DecryptorError(
                    f"decrypt command {custom[0]!r} was not found (SOURCES__ASAPP_SFTP__DECRYPT_COMMAND)"
                )
            return cls(custom, passphrase=None)
        if not command and not gnupg_home:
            return None
        gpg = shutil.which("gpg")
        if gpg is None:
            raise DecryptorError("GnuPG is configured for .enc files but `gpg` is not installed: apt-get install gnupg")
        argv = [gpg, "--batch", "--quiet", "--no-tty", "--yes"]
        if gnupg_home:
            home = Path(gnupg_home).expanduser()
            if not home.is_dir():
                raise DecryptorError(f"GnuPG home {home} does not exist (SOURCES__ASAPP_SFTP__GNUPG_HOME)")
            argv += ["--homedir", str(home)]
        return cls((*argv, "--decrypt"), passphrase=passphrase or None)

    def decrypt(self, source: Path, target: Target, max_bytes: int | None = None) -> str | None:
        """Decrypt source into target (its watcher sees the plain bytes); what went wrong, or None. The plain bytes
        pass through here, counted: more than max_bytes (OpenPGP compresses what it encrypts, so a small file may
        decrypt to a huge one) stops the command and fails the file, so the disk a file takes stays bounded."""
        argv = list(self.command)
        read_end = None
        if self.passphrase is not None:
            read_end, write_end = os.pipe()
            os.write(write_end, self.passphrase.encode() + b"\n")
            os.close(write_end)
            argv[1:1] = ["--pinentry-mode", "loopback", "--passphrase-fd", str(read_end)]
        too_large = False
        try:
            # stderr to a file: a command that says much there while its stdout is read cannot block on a full pipe
            with source.open("rb") as src, target.open() as dst, tempfile.TemporaryFile() as err:
                command = subprocess.Popen(
                    argv, stdin=src, stdout=subprocess.PIPE, stderr=err, pass_fds=(read_end,) if read_end else ()
                )
                assert command.stdout is not None
                with command.stdout:
                    written = 0
                    while chunk := command.stdout.read(1 << 20):
                        written += len(chunk)
                        if max_bytes is not None and written > max_bytes:
                            too_large = True
                            command.kill()
                            break
                        dst.write(chunk)
                returncode = command.wait()
                err.seek(0)
                stderr = err.read(64 << 10)
        except OSError as e:
            return f"decryption failed ({e})"
        finally:
            if read_end is not None:
                os.close(read_end)
        if too_large:
            target.path.unlink(missing_ok=True)
            return f"decrypts to more than {max_bytes} bytes (SOURCES__ASAPP_SFTP__MAX_INFLATED_BYTES)"
        if returncode != 0:
            said = " ".join(stderr.decode("utf-8", errors="replace").split())[-300:]
            return f"decryption failed ({Path(argv[0]).name} exit {returncode}: {said or 'no message'})"
        return None

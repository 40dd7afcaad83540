"""Test helpers for serving security: a throwaway CA, server and client certificates, and token files.

Certificates are made with the ``openssl`` command line at test time (no private keys in the repository):
``make_pki(directory)`` returns a :class:`Pki` of PEM paths; ``write_tokens(path, {principal: token})`` writes a
``PRINCIPAL TOKEN`` file as ``rnnpolicy serve --auth-tokens`` reads it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pki", "have_openssl", "make_pki", "write_tokens"]

# EC P-256 keys: generating them takes milliseconds (RSA keys would take a noticeable share of the test budget).
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost and a client certificate, both CA-signed,
    plus a second, unrelated CA with a client certificate of its own (which the first CA does not trust)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=30)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", *_KEY, "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)
    return cert, key


def _leaf(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (directory / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr", ".ext"))
    ext.write_text(extensions)
    _openssl("req", "-new", *_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={name}", cwd=directory)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-out", cert,
             "-days", "2", "-extfile", ext, cwd=directory)
    return cert, key


def make_pki(directory: Path) -> Pki:
    """Write a CA, a server certificate (subjectAltName IP:127.0.0.1, DNS:localhost) and client certificates."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca")
    server = _leaf(directory, "server", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                            "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    client = _leaf(directory, "client", ca, "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    other_ca = _ca(directory, "other-ca")
    other_client = _leaf(directory, "other-client", other_ca, "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    return Pki(ca=ca[0], server_cert=server[0], server_key=server[1], client_cert=client[0], client_key=client[1],
               other_ca=other_ca[0], other_client_cert=other_client[0], other_client_key=other_client[1])


def write_tokens(path: Path, tokens: dict[str, str], header: str = "# principal token\n") -> Path:
    """Write ``{principal: token}`` as an ``--auth-tokens`` file (one ``PRINCIPAL TOKEN`` per line)."""
    path.write_text(header + "".join(f"{principal} {token}\n" for principal, token in tokens.items()))
    path.chmod(0o600)
    return path

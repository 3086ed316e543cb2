"""A throw-away certificate authority and a server certificate for 127.0.0.1.

Made with the openssl command at test time: nothing secret is ever committed.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_tls(directory: Path, name: str = "test") -> TlsFiles:
    """A CA and a server certificate (SAN IP:127.0.0.1, DNS:localhost) signed by it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN=yizhan-{name}-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
             cwd=d)
    for f in ("server.key", "server.crt", "ca.crt"):
        (d / f).chmod(0o644)  # mosquitto may run as another user
    return TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key")


def renew_server_certificate(files: TlsFiles) -> TlsFiles:
    """A new server key and certificate in place of the old ones, signed by the
    same CA (as a certificate rotation does): clients that trust the CA must
    accept it without a change on their side."""
    d = files.cert_file.parent
    for f in ("server.key", "server.crt", "server.csr"):
        (d / f).unlink(missing_ok=True)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
             cwd=d)
    for f in ("server.key", "server.crt"):
        (d / f).chmod(0o644)
    return files

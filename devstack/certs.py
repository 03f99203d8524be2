"""Throwaway TLS material for a loopback Kafka broker, made with the ``openssl`` CLI.

:func:`make_certs` writes into one folder, in well under a second, with no
network:

* ``ca.pem`` / ``ca.key``: a self-signed CA (what clients trust,
  ``KAFKA_SSL_CA_FILE``);
* ``broker.pem`` / ``broker.key``: the broker's certificate, signed by that CA,
  for ``127.0.0.1`` and ``localhost`` (subjectAltName: kafka-python checks the
  host name, and Python's ssl matches an IP address only against an IP SAN);
  ``broker-chain.pem`` is the certificate followed by the CA;
* ``broker.p12``: the broker's key and chain as a PKCS12 keystore (what the
  broker loads), password :data:`KEYSTORE_PASSWORD`;
* ``wrong-ca.pem`` / ``wrong-ca.key``: a second CA, unrelated to the first, for
  tests that must see certificate verification fail.

Keys are EC P-256: generated in milliseconds, and understood by both Java 17
and Python's ssl. Certificates are valid from now for a week (broker and clients
run on this machine, so there is no clock skew to allow for).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

KEYSTORE_PASSWORD = "logger-keystore"  # throwaway material; goes into server.properties
_DAYS = 7


class CertError(RuntimeError):
    """openssl is missing or one of its commands failed."""


@dataclass(frozen=True)
class TlsFiles:
    """Where :func:`make_certs` put everything (all absolute paths)."""

    directory: Path
    ca_file: Path  # PEM: the CA clients trust
    ca_key: Path
    cert_file: Path  # PEM: the broker's certificate alone
    key_file: Path  # PEM: the broker's private key (unencrypted PKCS#8)
    chain_file: Path  # PEM: broker certificate, then the CA
    keystore: Path  # PKCS12: broker key + chain
    keystore_password: str
    wrong_ca_file: Path  # PEM: an unrelated CA that did not sign the broker's certificate

    @property
    def keystore_type(self) -> str:
        return "PKCS12"


def make_certs(directory: Path | str, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
               force: bool = False) -> TlsFiles:
    """Create (or reuse, unless ``force``) a CA, a broker certificate for ``hosts`` and a wrong CA."""
    d = Path(directory).resolve()
    files = TlsFiles(directory=d, ca_file=d / "ca.pem", ca_key=d / "ca.key", cert_file=d / "broker.pem",
                     key_file=d / "broker.key", chain_file=d / "broker-chain.pem", keystore=d / "broker.p12",
                     keystore_password=KEYSTORE_PASSWORD, wrong_ca_file=d / "wrong-ca.pem")
    outputs = (files.ca_file, files.cert_file, files.key_file, files.chain_file, files.keystore,
               files.wrong_ca_file)
    if not force and all(p.is_file() and p.stat().st_size for p in outputs):
        return files
    d.mkdir(parents=True, exist_ok=True)

    _ca(files.ca_file, files.ca_key, "logger-service test CA")
    _ca(files.wrong_ca_file, d / "wrong-ca.key", "logger-service wrong CA")

    sans = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    extensions = d / "broker.ext"
    extensions.write_text("basicConstraints=critical,CA:FALSE\n"
                          "keyUsage=critical,digitalSignature,keyEncipherment\n"
                          "extendedKeyUsage=serverAuth\n"
                          f"subjectAltName={sans}\n"
                          "subjectKeyIdentifier=hash\n"
                          "authorityKeyIdentifier=keyid,issuer\n")
    csr = d / "broker.csr"
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", files.key_file, "-out", csr, "-subj", f"/CN={hosts[0]}")
    _openssl("x509", "-req", "-in", csr, "-CA", files.ca_file, "-CAkey", files.ca_key, "-set_serial",
             str(int.from_bytes(os.urandom(8), "big")), "-days", str(_DAYS), "-sha256",
             "-extfile", extensions, "-out", files.cert_file)
    csr.unlink()
    extensions.unlink()
    files.chain_file.write_bytes(files.cert_file.read_bytes() + files.ca_file.read_bytes())
    _openssl("pkcs12", "-export", "-in", files.cert_file, "-inkey", files.key_file, "-certfile", files.ca_file,
             "-name", "broker", "-passout", f"pass:{files.keystore_password}", "-out", files.keystore)
    for key in (files.ca_key, files.key_file, d / "wrong-ca.key"):
        key.chmod(0o600)
    return files


def _ca(cert: Path, key: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", cert, "-days", str(_DAYS), "-sha256", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash")


def _is_ip(host: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _openssl(*args: object) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise CertError("openssl is needed to make test certificates")
    cmd = [exe, *map(str, args)]
    # No config file from the environment can change what we make.
    env = {**os.environ, "OPENSSL_CONF": os.devnull}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=30)
    if done.returncode != 0:
        raise CertError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m devstack.certs DIRECTORY", file=sys.stderr)
        return 2
    files = make_certs(argv[0], force=True)
    print(f"CA {files.ca_file}; broker {files.cert_file} (key {files.key_file}, "
          f"PKCS12 {files.keystore}, password {files.keystore_password}); wrong CA {files.wrong_ca_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

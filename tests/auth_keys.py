"""Real signing keys and tokens for the auth tests (issue 14), made with ``cryptography``.

:class:`KeyPair` holds a private key, its public JWK and signs tokens with
PyJWT; :class:`JwksServer` serves a JWK Set over HTTP on 127.0.0.1 from a
thread, counts its fetches, can swap its keys (a rotation) or hang (a dead
identity provider).
"""

from __future__ import annotations

import base64
import hmac
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ISSUER = "https://idp.test/"
AUDIENCE = "logger-service"
SECRET = "a-shared-secret-of-at-least-32-characters!"


@dataclass
class KeyPair:
    kid: str
    alg: str
    private: Any
    extra: dict[str, Any] = field(default_factory=dict)  # more JWK members ("alg", "use")

    @classmethod
    def make(cls, alg: str, kid: str, extra: dict[str, Any] | None = None) -> KeyPair:
        if alg.startswith(("RS", "PS")):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(alg)
        return cls(kid, alg, private, extra or {})

    @property
    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        out = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**out, "kid": self.kid, **self.extra}

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def token(self, ttl: float = 300, kid: str | None = "", **claims: Any) -> str:
        return jwt.encode(standard_claims(ttl, **claims), self.private, algorithm=self.alg,
                          headers={"kid": self.kid if kid == "" else kid} if kid is not None else None)


def standard_claims(ttl: float = 300, **claims: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + ttl}
    base.update(claims)
    return {k: v for k, v in base.items() if v is not None}


def hs256(secret: str | bytes = SECRET, ttl: float = 300, **claims: Any) -> str:
    return jwt.encode(standard_claims(ttl, **claims), secret, algorithm="HS256")


def unsigned(**claims: Any) -> str:
    """``alg: none``: header and payload, empty signature."""
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(standard_claims(**claims))}."


def hs256_with_public_key(pair: KeyPair, **claims: Any) -> str:
    """Algorithm confusion: HS256 whose MAC key is the RSA public key's PEM. Built by hand,
    because PyJWT itself refuses to use a PEM as an HMAC secret."""
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    signing_input = (part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": pair.kid}).encode()) + "."
                     + part(json.dumps(standard_claims(**claims)).encode()))
    mac = hmac.new(pair.public_pem, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + part(mac)


def tampered(token: str, **changes: Any) -> str:
    """The same signature over a payload changed after signing."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    new = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{new}.{signature}"


class JwksServer:
    """A JWK Set over HTTP on 127.0.0.1, in a thread. ``keys`` may be replaced at any time
    (a rotation); ``hang`` makes every request wait until it is cleared (or the server stops)."""

    def __init__(self, *pairs: KeyPair) -> None:
        self.keys: list[KeyPair] = list(pairs)
        self.fetches = 0
        self.hang = threading.Event()
        self._stopped = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                owner.fetches += 1
                while owner.hang.is_set() and not owner._stopped.is_set():
                    time.sleep(0.05)
                body = json.dumps({"keys": [p.jwk for p in owner.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()

"""SCRAM-SHA-256 verifiers computed here, so a plaintext password never travels to the server's logs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_ITERATIONS = 4096


def scram_sha256_verifier(password: str, *, salt: bytes | None = None, iterations: int = _ITERATIONS) -> str:
    """The verifier Postgres stores for ``password`` (RFC 7677; ``CREATE ROLE ... PASSWORD 'SCRAM-SHA-256$...'``)."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"

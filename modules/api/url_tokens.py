"""Expiring URL tokens for ``<img>`` and ``<video>`` tags, which cannot send the ``X-API-Key`` header.

A token stands in for the API key that asked for the link, for one video job, until it expires::

    v1.<key id>.<expires: unix seconds>.<HMAC-SHA256(secret, "<job id>.<key id>.<expires>"), base64url>

It is refused (401) once it has expired, when its key is revoked or unknown, for another job, or when it was
signed with another secret; the key's gallery scope is checked again by the caller.  The secret is 256 random
bits in ``<storage_dir>/.url-token-secret`` (mode 0600), made by the first process that needs it: every API
process that answers for video jobs shares that folder (gunicorn workers, and the API servers of a
PostgreSQL + Redis deployment), so each accepts the others' tokens.  Deleting the file (then restarting the
servers) voids every token given out.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path

from flask import g

from ..errors import ConfigError, UnauthorizedError
from .keys import ApiKey, KeyStore

SECRET_FILE = ".url-token-secret"
VERSION = "v1"
_SECRET_HEX = 64
_EXPIRES = re.compile(r"[0-9]{1,12}")  # ASCII digits only (str.isdigit accepts "²")


def _create_secret(path: Path) -> None:
    """Write a new secret unless another process already made one (``O_EXCL``: one creator wins)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(_SECRET_HEX // 2))
        fh.flush()
        os.fsync(fh.fileno())


@functools.lru_cache(maxsize=16)
def load_secret(directory: Path) -> bytes:
    """The installation's token secret in ``directory``, created on first use (read once per process)."""
    path = Path(directory) / SECRET_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_secret(path)
        for _ in range(100):  # another process may be writing it this instant
            data = path.read_text(encoding="ascii").strip()
            if len(data) >= _SECRET_HEX:
                return data.encode("ascii")
            time.sleep(0.02)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read or create the URL token secret {path}: {exc}") from exc
    raise ConfigError(f"the URL token secret {path} is damaged; delete it (every issued token stops working)")


def _signature(secret: bytes, job_id: str, key_id: str, expires: int) -> str:
    mac = hmac.new(secret, f"{job_id}.{key_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def make_token(secret: bytes, job_id: str, key_id: str, expires: int) -> str:
    return f"{VERSION}.{key_id}.{expires}.{_signature(secret, job_id, key_id, expires)}"


def read_token(secret: bytes, job_id: str, token: str | None, now: float | None = None) -> str:
    """The key id of a valid, unexpired token for ``job_id``; :class:`UnauthorizedError` otherwise."""
    parts = (token or "").split(".")
    if len(parts) != 4 or parts[0] != VERSION or not _EXPIRES.fullmatch(parts[2]):
        raise UnauthorizedError("the link's token (?token=) is missing or malformed; ask for the job again")
    _, key_id, expires, signature = parts
    if not hmac.compare_digest(signature.encode(), _signature(secret, job_id, key_id, int(expires)).encode()):
        raise UnauthorizedError("the link's token (?token=) is not valid for this job")
    if int(expires) <= (time.time() if now is None else now):
        raise UnauthorizedError("the link's token (?token=) has expired; ask for the job again for a fresh link")
    return key_id


def issue(directory: Path, job_id: str, key: ApiKey, ttl_s: int) -> str:
    """A token for ``job_id`` standing for ``key``, valid ``ttl_s`` seconds."""
    return make_token(load_secret(directory), job_id, key.id, int(time.time()) + int(ttl_s))


def authenticate(directory: Path, job_id: str, token: str | None, keys: KeyStore) -> ApiKey:
    """Check the token and make its key the request's key (as :func:`modules.api.auth.authenticate` does)."""
    key = keys.get(read_token(load_secret(directory), job_id, token))
    if key is None or key.revoked_at is not None:
        raise UnauthorizedError("the API key this link was made for has been revoked")
    g.api_key = key
    return key

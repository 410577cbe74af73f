"""API keys: random, shown once, stored only as SHA-256 hashes (``<data dir>/keys.db``).

A key is ``frk_<id>_<secret>``: ``id`` (12 hex digits) finds the row, ``secret`` (256 random bits) makes it
unguessable, so a fast hash suffices (as for GitHub's and Stripe's tokens); the comparison is constant-time.
Each key carries the galleries it may use (``*`` = all) and an admin flag (may delete and re-embed galleries).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, Table, Text, func, inspect, select, update

from ..errors import InvalidRequestError, NotFoundError
from .records import validate_name
from .engine import get_engine, is_sqlite, read, transaction
from .migrate import prepare

KEY_PREFIX = "frk"
_KEY_RE = re.compile(r"^frk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
ALL_GALLERIES = "*"
WHAT = "key store"

api_keys = Table(
    "api_keys", MetaData(),
    Column("id", Text, primary_key=True), Column("key_sha256", Text, nullable=False),
    Column("galleries", Text, nullable=False), Column("admin", Integer, nullable=False, server_default="0"),
    Column("label", Text, nullable=False, server_default=""),
    Column("created_at", Text, nullable=False), Column("revoked_at", Text),
)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ApiKey:
    """A stored key's record (never the key itself)."""

    id: str
    galleries: tuple[str, ...]
    admin: bool
    label: str
    created_at: str
    revoked_at: str | None = None

    def allows(self, gallery: str) -> bool:
        return ALL_GALLERIES in self.galleries or gallery in self.galleries

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        return cls(row.id, tuple(json.loads(row.galleries)), bool(row.admin), row.label, row.created_at, row.revoked_at)


_RECORD = select(*(api_keys.c[k] for k in ("id", "galleries", "admin", "label", "created_at", "revoked_at")))


class KeyStore:
    """Hashed API keys in a small database (an SQLite file), shared by threads and worker processes."""

    def __init__(self, path: str | Path):
        self.engine = get_engine(path)
        # a key table written before migrations (CREATE TABLE IF NOT EXISTS) is the baseline
        prepare(self.engine, "keys", [api_keys], lambda c: "keys_0001" if inspect(c).has_table("api_keys") else None)

    def create(self, galleries: list[str], *, admin: bool = False, label: str = "") -> tuple[str, ApiKey]:
        """A new key and its record; the key is returned once and never stored."""
        scope = [g if g == ALL_GALLERIES else validate_name(g, "gallery name") for g in galleries]
        if not scope:
            raise InvalidRequestError("a key needs at least one gallery (or '*')")
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(id=key_id, galleries=tuple(dict.fromkeys(scope)), admin=admin, label=label, created_at=_now())
        row = {**asdict(record), "galleries": json.dumps(list(record.galleries)), "admin": int(admin)}
        with transaction(self.engine, WHAT) as conn:
            conn.execute(api_keys.insert().values({**row, "key_sha256": hash_key(key)}))
        return key, record

    def verify(self, key: str | None) -> ApiKey | None:
        """The record of a valid, unrevoked key; ``None`` for anything else."""
        m = _KEY_RE.match(key.strip()) if key else None
        if m is None:
            return None
        with read(self.engine, WHAT) as conn:
            row = conn.execute(_RECORD.add_columns(api_keys.c.key_sha256).where(api_keys.c.id == m.group(1))).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_sha256, hash_key(key.strip())):
            return None
        return ApiKey.from_row(row)

    def get(self, key_id: str) -> ApiKey | None:
        """The record of key ``key_id`` (revoked ones too: see ``revoked_at``); ``None`` when there is none."""
        with read(self.engine, WHAT) as conn:
            row = conn.execute(_RECORD.where(api_keys.c.id == key_id)).first()
        return None if row is None else ApiKey.from_row(row)

    def list(self) -> list[ApiKey]:
        with read(self.engine, WHAT) as conn:
            return [ApiKey.from_row(r) for r in conn.execute(_RECORD.order_by(api_keys.c.created_at, api_keys.c.id))]

    def revoke(self, key_id: str) -> None:
        stmt = update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        with transaction(self.engine, WHAT) as conn:
            if conn.execute(stmt.values(revoked_at=_now())).rowcount == 0:
                raise NotFoundError(f"no active key with id {key_id!r}")

    def count_active(self) -> int:
        with read(self.engine, WHAT) as conn:
            return int(conn.scalar(select(func.count()).where(api_keys.c.revoked_at.is_(None))))

    def close(self) -> None:
        """Close the pooled connections (the engine reopens them if the store is used again)."""
        if is_sqlite(self.engine):
            self.engine.dispose()

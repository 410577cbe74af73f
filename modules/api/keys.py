"""API keys: random, shown once, stored only as SHA-256 hashes in ``<data dir>/keys.db``.

A key looks like ``frk_<id>_<secret>``: ``id`` (12 hex digits) finds the row,
``secret`` (256 random bits) is what makes it unguessable.  Only
``sha256(key)`` is stored; a high-entropy random key needs no slow password
hash (the same reasoning as GitHub's and Stripe's tokens), and the comparison
is constant-time.  Each key carries the galleries it may use (``*`` = all) and
an admin flag (admin keys may delete galleries and re-embed them).

    python -m modules.api.keys create --gallery default [--gallery other] [--admin] [--label NAME]
    python -m modules.api.keys list
    python -m modules.api.keys revoke KEY_ID

(all take ``--data-dir DIR``, default ``./data`` or ``$FACEREC_DATA_DIR``).
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FaceRecError, InvalidRequestError, NotFoundError
from ..storage import validate_name

KEY_PREFIX = "frk"
_KEY_RE = re.compile(r"^frk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
ALL_GALLERIES = "*"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "galleries": list(self.galleries),
            "admin": self.admin,
            "label": self.label,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


class KeyStore:
    """Hashed API keys in a small SQLite file, shared by threads and worker processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the folder of the key store {self.path}: {exc}") from exc
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS api_keys (
                    id TEXT PRIMARY KEY,
                    key_sha256 TEXT NOT NULL,
                    galleries TEXT NOT NULL,
                    admin INTEGER NOT NULL DEFAULT 0,
                    label TEXT NOT NULL DEFAULT '',
                    created_at TEXT NOT NULL,
                    revoked_at TEXT
                )"""
            )

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            try:
                conn = sqlite3.connect(str(self.path), timeout=30.0)
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
            except sqlite3.Error as exc:
                raise ConfigError(f"cannot open the key store {self.path}: {exc}") from exc
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @staticmethod
    def _record(row: tuple) -> ApiKey:
        return ApiKey(
            id=row[0],
            galleries=tuple(json.loads(row[1])),
            admin=bool(row[2]),
            label=row[3],
            created_at=row[4],
            revoked_at=row[5],
        )

    def create(self, galleries: list[str], *, admin: bool = False, label: str = "") -> tuple[str, ApiKey]:
        """A new key and its record; the key is returned once and never stored."""
        scope: list[str] = []
        for g in galleries:
            scope.append(g if g == ALL_GALLERIES else validate_name(g, "gallery name"))
        if not scope:
            raise InvalidRequestError("a key needs at least one gallery (or '*')")
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(id=key_id, galleries=tuple(dict.fromkeys(scope)), admin=admin, label=label, created_at=_now())
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO api_keys (id, key_sha256, galleries, admin, label, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, hash_key(key), json.dumps(list(record.galleries)), int(admin), label, record.created_at),
            )
        return key, record

    def verify(self, key: str | None) -> ApiKey | None:
        """The record of a valid, unrevoked key; ``None`` for anything else."""
        if not key:
            return None
        m = _KEY_RE.match(key.strip())
        if m is None:
            return None
        try:
            row = (
                self._conn()
                .execute(
                    "SELECT id, galleries, admin, label, created_at, revoked_at, key_sha256 FROM api_keys WHERE id = ?",
                    (m.group(1),),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise FaceRecError(f"key store error: {exc}") from exc
        if row is None or row[5] is not None:
            return None
        if not hmac.compare_digest(row[6], hash_key(key.strip())):
            return None
        return self._record(row)

    def list(self) -> list[ApiKey]:
        rows = self._conn().execute(
            "SELECT id, galleries, admin, label, created_at, revoked_at FROM api_keys ORDER BY created_at, id"
        )
        return [self._record(r) for r in rows]

    def revoke(self, key_id: str) -> None:
        with self._conn() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (_now(), key_id)
            )
        if cur.rowcount == 0:
            raise NotFoundError(f"no active key with id {key_id!r}")

    def count_active(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local = threading.local()


# --- CLI ----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m modules.api.keys", description="Manage the service's API keys.")
    ap.add_argument(
        "--data-dir",
        default=os.environ.get("FACEREC_DATA_DIR", "data"),
        help="the server's data directory (default: $FACEREC_DATA_DIR or ./data)",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="create a key and print it (shown once)")
    c.add_argument("--gallery", action="append", required=True, help="a gallery the key may use; '*' for all; repeat")
    c.add_argument("--admin", action="store_true", help="may also delete and re-embed its galleries")
    c.add_argument("--label", default="", help="a note to recognise the key by")
    sub.add_parser("list", help="list keys (ids and scopes, never the keys)")
    r = sub.add_parser("revoke", help="revoke a key by id")
    r.add_argument("key_id")
    args = ap.parse_args(argv)
    try:
        store = KeyStore(Path(args.data_dir) / "keys.db")
        if args.command == "create":
            key, rec = store.create(args.gallery, admin=args.admin, label=args.label)
            print(key)
            print(
                f"key id {rec.id}; galleries: {', '.join(rec.galleries)}; admin: {rec.admin}."
                " Store the key now: it cannot be shown again.",
                file=sys.stderr,
            )
        elif args.command == "list":
            for rec in store.list():
                state = f"revoked {rec.revoked_at}" if rec.revoked_at else "active"
                print(f"{rec.id}\t{','.join(rec.galleries)}\tadmin={rec.admin}\t{state}\t{rec.label}")
        else:
            store.revoke(args.key_id)
            print(f"revoked {args.key_id}")
    except FaceRecError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

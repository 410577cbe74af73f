"""The API key store and its command line: hashed keys, scopes, revocation, key databases of the previous version."""
from __future__ import annotations

import dataclasses

import json
import shutil
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from modules.errors import InvalidRequestError, NotFoundError
from modules.storage.engine import get_engine
from modules.storage.keys import ALL_GALLERIES, KeyStore, hash_key

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


def test_keys_are_stored_hashed_and_cli_prints_once(tmp_path, capsys):
    from modules.api.keys import KeyStore, main

    assert main(["--data-dir", str(tmp_path), "create", "--gallery", "default", "--label", "cam1"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("frk_")
    store = KeyStore(tmp_path / "keys.db")
    rec = store.verify(key)
    assert rec is not None and rec.galleries == ("default",) and not rec.admin and rec.label == "cam1"
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("keys.db*"))
    assert key.encode() not in raw and key.split("_", 2)[2].encode() not in raw  # the secret may hold '_'
    assert main(["--data-dir", str(tmp_path), "list"]) == 0
    listing = capsys.readouterr().out
    assert rec.id in listing and key not in listing
    assert main(["--data-dir", str(tmp_path), "revoke", rec.id]) == 0
    assert store.verify(key) is None
    assert main(["--data-dir", str(tmp_path), "revoke", rec.id]) == 1
    assert main(["--data-dir", str(tmp_path), "create", "--gallery", "a/b"]) == 1


def test_create_verify_list_revoke(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    assert stat.S_IMODE((tmp_path / "keys.db").stat().st_mode) == 0o600
    user, rec = store.create(["team", "default", "team"], label="user")
    admin, arec = store.create([ALL_GALLERIES], admin=True)
    assert rec.galleries == ("team", "default") and rec.allows("team") and not rec.allows("other")
    assert arec.admin and arec.allows("anything") and arec.label == ""
    assert store.verify(user) == rec and store.verify(f"  {admin}\n") == arec
    assert dataclasses.asdict(rec) == {"id": rec.id, "galleries": ("team", "default"), "admin": False,
                                       "label": "user", "created_at": rec.created_at, "revoked_at": None}
    # same id, other secret; malformed; empty: all refused
    forged = f"frk_{rec.id}_{'A' * 43}"
    assert hash_key(forged) != hash_key(user) and store.verify(forged) is None
    for bad in (None, "", "garbage", user + "x" * 60, user.replace("frk_", "xyz_")):
        assert store.verify(bad) is None
    with pytest.raises(InvalidRequestError):
        store.create([])
    with pytest.raises(InvalidRequestError):
        store.create(["../etc"])
    assert store.list() == sorted([rec, arec], key=lambda k: (k.created_at, k.id))
    assert store.count_active() == 2
    store.revoke(rec.id)
    with pytest.raises(NotFoundError):
        store.revoke(rec.id)
    with pytest.raises(NotFoundError):
        store.revoke("000000000000")
    assert store.verify(user) is None and store.count_active() == 1
    listed = {k.id: k for k in store.list()}
    assert listed[rec.id].revoked_at is not None and listed[arec.id].revoked_at is None
    other = KeyStore(tmp_path / "keys.db")  # a second store (another worker) sees the same keys
    assert other.verify(admin) == arec and other.verify(user) is None
    store.close()
    other.close()
    assert KeyStore(tmp_path / "keys.db").count_active() == 1  # usable again after close


def test_legacy_keys_db_is_adopted_and_verifies_the_same_keys(tmp_path):
    path = tmp_path / "keys.db"
    shutil.copy(LEGACY / "keys.db", path)
    keys = json.loads((LEGACY / "keys.json").read_text())
    store = KeyStore(path)
    with get_engine(path).connect() as conn:
        assert list(conn.scalars(text("SELECT version_num FROM facerec_schema"))) == ["keys_0001"]
    rec = store.verify(keys["active"])
    assert rec is not None and rec.galleries == ("default", "team") and not rec.admin and rec.label == "camera 1"
    assert store.verify(keys["revoked"]) is None
    listed = {k.label: k for k in store.list()}
    assert set(listed) == {"camera 1", "old admin"} and listed["old admin"].revoked_at is not None
    assert listed["old admin"].galleries == (ALL_GALLERIES,) and listed["old admin"].admin
    assert store.count_active() == 1
    new, _ = store.create(["default"])
    assert KeyStore(path).verify(new) is not None and store.count_active() == 2

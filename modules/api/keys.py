"""Manage the service's API keys from the command line (the keys themselves: :mod:`modules.storage.keys`).

    python -m modules.api.keys create --gallery default [--gallery other] [--admin] [--label NAME]
    python -m modules.api.keys list
    python -m modules.api.keys revoke KEY_ID

(all take ``--data-dir DIR``, default ``./data`` or ``$FACEREC_DATA_DIR``).
"""
from __future__ import annotations

import argparse
import sys

from ..errors import FaceRecError
from ..files import private_umask
from ..settings import load_settings
from ..storage.keys import ALL_GALLERIES, ApiKey, KeyStore, hash_key

__all__ = ["ALL_GALLERIES", "ApiKey", "KeyStore", "hash_key", "main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m modules.api.keys", description="Manage the service's API keys.")
    ap.add_argument("--data-dir", default=None,
                    help="the server's data directory (default: $FACEREC_DATA_DIR or ./data)")
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="create a key and print it (shown once)")
    c.add_argument("--gallery", action="append", required=True, help="a gallery the key may use; '*' for all; repeat")
    c.add_argument("--admin", action="store_true", help="may also delete and re-embed its galleries")
    c.add_argument("--label", default="", help="a note to recognise the key by")
    sub.add_parser("list", help="list keys (ids and scopes, never the keys)")
    r = sub.add_parser("revoke", help="revoke a key by id")
    r.add_argument("key_id")
    args = ap.parse_args(argv)
    private_umask()
    try:
        store = KeyStore(load_settings(data_dir=args.data_dir).keys_path)
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

"""Gallery management from the command line.

    python -m modules.cli enroll --gallery default --person obama photos/obama*.jpg
    python -m modules.cli enroll-dir PEOPLE_DIR            # <name>/<images>
    python -m modules.cli people --gallery default
    python -m modules.cli identify group.jpg
    python -m modules.cli verify a.jpg b.jpg
    python -m modules.cli rename --gallery default old new
    python -m modules.cli delete-person --gallery default NAME
    python -m modules.cli delete-face --gallery default FACE_ID
    python -m modules.cli reembed --gallery default --config configs/arc_res50.yaml
    python -m modules.cli import-pickle known.pkl --embedder arc_res50 --trusted
    python -m modules.cli export-pickle known.pkl
    python -m modules.cli export --format csv -o people.csv

Every command takes ``--data-dir`` (default ``./data``; the gallery is
``<data-dir>/gallery.db``) and ``--config`` (default ``configs/sface.yaml``).
Errors print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from .config import load_config
from .errors import FaceRecError
from .files import open_private, private_umask
from .images import list_people_dir
from .recognizer import FaceRecognizer
from .settings import load_settings
from .storage import open_gallery


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def _json(model: str, record) -> dict:
    """A record as the HTTP API answers it (its response model in ``modules.api.schemas``)."""
    from .api import schemas

    return schemas.dump(getattr(schemas, model), record)


# every command gets (args, recognizer or None for the gallery-only ones, gallery store)
def cmd_enroll(args, rec, _):
    ids = rec.enroll(args.gallery, args.person, [Path(p) for p in args.images], sources=[str(p) for p in args.images])
    _print({"gallery": args.gallery, "person": args.person, "face_ids": ids})


def cmd_enroll_dir(args, rec, gallery):
    people = list_people_dir(Path(args.people_dir))
    prepared = {name: rec.prepare_enrollment(paths, sources=[str(p) for p in paths]) for name, paths in people.items()}
    ids = gallery.add_faces_many(args.gallery, prepared)  # one transaction for the whole folder
    _print({"gallery": args.gallery, "enrolled": {k: len(v) for k, v in ids.items()}})


def cmd_people(args, _, gallery):
    items, total = gallery.list_people(args.gallery, offset=args.offset, limit=args.limit)
    _print({"total": total, "people": [_json("PersonOut", p) for p in items]})


def cmd_galleries(args, _, gallery):
    _print([_json("GalleryOut", g) for g in gallery.list_galleries()])


def cmd_identify(args, rec, _):
    _print(_json("RecognitionResponse", rec.recognize(Path(args.image), gallery=args.gallery)))


def cmd_verify(args, rec, _):
    _print(_json("VerifyResponse", rec.verify(Path(args.image_a), Path(args.image_b))))


def cmd_rename(args, _, gallery):
    _print(_json("PersonOut", gallery.rename_person(args.gallery, args.name, args.new_name)))


def cmd_delete_person(args, _, gallery):
    _print({"deleted": args.name, "faces_removed": gallery.delete_person(args.gallery, args.name)})


def cmd_delete_face(args, _, gallery):
    gallery.delete_face(args.face_id, gallery=args.gallery)
    _print({"deleted_face": args.face_id})


def cmd_reembed(args, _, gallery):
    from .embedders import build_embedder

    embedder = build_embedder(load_config(args.config))
    _print(gallery.reembed(None if args.all else args.gallery, embedder, drop_uncroppable=args.drop_uncroppable))


def cmd_import_pickle(args, _, gallery):
    from .storage import import_legacy_pickle

    _print(import_legacy_pickle(gallery, Path(args.file), args.gallery, args.embedder, trusted=args.trusted))


def cmd_export_pickle(args, _, gallery):
    from .storage import export_legacy_pickle

    embedder_id = args.embedder or load_config(args.config).name
    _print(export_legacy_pickle(gallery, Path(args.file), args.gallery, embedder_id, mode=args.mode))


def cmd_export(args, _, gallery):
    rows = gallery.export_people(args.gallery)
    out = open_private(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        if args.format == "json":
            json.dump(rows, out, indent=2, default=str, ensure_ascii=False)
            out.write("\n")
        else:
            w = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["gallery", "person", "face_id"])
            w.writeheader()
            w.writerows(rows)
    finally:
        if out is not sys.stdout:
            out.close()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m modules.cli", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=None,
                        help="folder holding gallery.db (default $FACEREC_DATA_DIR or ./data)")
    common.add_argument("--database-url", default=None,
                        help="gallery database URL, e.g. postgresql://... (default $DATABASE_URL, else --data-dir)")
    common.add_argument("--config", default=None, help="embedder YAML (default configs/sface.yaml)")
    common.add_argument("--gallery", default="default", help="gallery name (default 'default')")
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name, fn, help_, models=False):
        p = sub.add_parser(name, parents=[common], help=help_)
        p.set_defaults(fn=fn, models=models)
        return p

    p = add("enroll", cmd_enroll, "enroll images of one person", models=True)
    p.add_argument("--person", required=True)
    p.add_argument("images", nargs="+")
    p = add("enroll-dir", cmd_enroll_dir, "enroll a <name>/<images> folder (all or nothing)", models=True)
    p.add_argument("people_dir")
    p = add("people", cmd_people, "list people")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=100)
    add("galleries", cmd_galleries, "list galleries")
    p = add("identify", cmd_identify, "identify every face in an image", models=True)
    p.add_argument("image")
    p = add("verify", cmd_verify, "are two photos the same person?", models=True)
    p.add_argument("image_a")
    p.add_argument("image_b")
    p = add("rename", cmd_rename, "rename a person")
    p.add_argument("name")
    p.add_argument("new_name")
    p = add("delete-person", cmd_delete_person, "delete a person and their faces")
    p.add_argument("name")
    p = add("delete-face", cmd_delete_face, "delete one face")
    p.add_argument("face_id", type=int)
    p = add("reembed", cmd_reembed, "recompute stored embeddings with --config's model")
    p.add_argument("--all", action="store_true", help="every gallery")
    p.add_argument("--drop-uncroppable", action="store_true", help="delete faces without a stored crop")
    p = add("import-pickle", cmd_import_pickle, "import the original tools' {name: embedding} pickle")
    p.add_argument("file")
    p.add_argument("--embedder", required=True, help="model id that made the embeddings, e.g. arc_res50")
    p.add_argument("--trusted", "--trust-pickle", dest="trusted", action="store_true",
                   help="required: unpickling can run code, so only import files you trust")
    p = add("export-pickle", cmd_export_pickle, "export {name: embedding} for the original tools")
    p.add_argument("file")
    p.add_argument("--embedder", default=None)
    p.add_argument("--mode", choices=["mean", "list"], default="mean")
    p = add("export", cmd_export, "export people and faces as JSON or CSV")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("-o", "--output", default=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    private_umask()  # galleries, exports: this user's only
    try:
        store = open_gallery(load_settings(data_dir=args.data_dir, gallery_url=args.database_url).gallery_location)
        args.fn(args, FaceRecognizer(args.config, store) if args.models else None, store)
    except FaceRecError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

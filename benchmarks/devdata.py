"""Reading the dev-data CSVs and embedding their images once (with an on-disk cache)."""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from modules.errors import FaceRecError
from modules.recognizer import FaceRecognizer, primary_face

CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "embeddings"


def find_set_root(csv_path: Path) -> Path:
    """The folder holding the set's ``manifest.csv`` (the CSV's own folder or a parent)."""
    csv_path = Path(csv_path).resolve()
    for folder in [csv_path.parent, *csv_path.parents]:
        if (folder / "manifest.csv").is_file():
            return folder
    return csv_path.parent


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@dataclass
class Embedded:
    embeddings: dict[str, np.ndarray]  # relative path -> unit vector
    no_face: list[str]
    errors: dict[str, str]


def _cache_file(rec: FaceRecognizer, root: Path, policy: str, flip: bool) -> Path:
    cfg = rec.config
    key = f"{rec.model_id}|{cfg.embedder.model_dump_json()}|{cfg.detector.model_dump_json()}|{policy}|{flip}|{root}"
    return CACHE_DIR / f"{rec.model_id}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def embed_images(
    rec: FaceRecognizer,
    root: Path,
    rel_paths: list[str],
    policy: str = "center",
    cache: bool = True,
    progress: bool = True,
    query: bool = False,
) -> Embedded:
    """Embed the primary face of each image (``center`` suits LFW's centred subjects).

    ``query=True`` embeds as the service does for faces it identifies
    (the config's ``flip_queries``); otherwise as for gallery faces and 1:1.
    """
    rel_paths = sorted(set(rel_paths))
    flip = rec.embedder.flip_queries if query else rec.embedder.flip
    cache_path = _cache_file(rec, root, policy, flip)
    done: dict[str, np.ndarray] = {}
    no_face: list[str] = []
    if cache and cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            done = dict(zip(z["paths"].tolist(), z["embs"]))
            no_face = z["no_face"].tolist()
    errors: dict[str, str] = {}
    todo = [p for p in rel_paths if p not in done and p not in no_face]
    for rel in tqdm(todo, desc="embedding", unit="img", disable=not progress or not todo):
        try:
            img = rec.load_image(root / rel)
            face = primary_face(rec.detector.detect(img), img.shape, policy)
            rec.embed_faces(img, [face], query=query)
            done[rel] = face.embedding
        except FaceRecError as exc:
            if exc.code == "no_face":
                no_face.append(rel)
            else:
                errors[rel] = exc.message
    if cache and todo:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp.npz")
        paths = sorted(done)
        np.savez(
            tmp,
            paths=np.array(paths, dtype=str),
            embs=np.stack([done[p] for p in paths]) if paths else np.zeros((0, rec.embedder.dim), np.float32),
            no_face=np.array(sorted(set(no_face)), dtype=str),
        )
        os.replace(tmp, cache_path)
    wanted = set(rel_paths)
    return Embedded(
        embeddings={p: e for p, e in done.items() if p in wanted},
        no_face=[p for p in no_face if p in wanted],
        errors=errors,
    )

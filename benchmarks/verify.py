"""Verification accuracy on a pairs CSV (``img_a,img_b,same`` [, ``fold``]).

    python -m benchmarks.verify ../shared/data/lfw/pairs.csv [--config configs/sface.yaml]

Paths are relative to the folder holding the set's ``manifest.csv``.  The last
line printed is one JSON object: ``accuracy_at_threshold`` (the config's
shipped threshold), ``accuracy_cv`` (threshold picked on the other folds:
the file's ``fold`` column, else 10 folds), ``tar_at_far_1e-3``, ``threshold``,
``no_face`` and more.  Pairs with an image where no face was found count as
"different person".
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.devdata import embed_images, find_set_root, read_csv
from modules.errors import FaceRecError


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy (midpoint of the best run of candidate cut-offs)."""
    cands = np.unique(np.concatenate([scores, [-1.0, 1.01]]))
    mids = (cands[:-1] + cands[1:]) / 2
    accs = np.array([((scores >= t) == labels).mean() for t in mids])
    best = accs.max()
    idx = np.flatnonzero(accs == best)
    return float(np.median(mids[idx])), float(best)


def cross_validated_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> float:
    accs = []
    for f in np.unique(folds):
        test = folds == f
        thr, _ = best_threshold(scores[~test], labels[~test])
        accs.append(((scores[test] >= thr) == labels[test]).mean())
    return float(np.mean(accs))


def tar_at_far(scores: np.ndarray, labels: np.ndarray, far: float) -> float:
    neg = np.sort(scores[labels == 0])[::-1]
    pos = scores[labels == 1]
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    k = int(np.floor(far * len(neg)))  # number of impostors allowed above the cut-off
    thr = neg[k] if k < len(neg) else -1.0
    return float((pos > thr).mean())


def evaluate(pairs_csv: Path, config: str | None = None, policy: str = "center", progress: bool = True) -> dict:
    from modules.recognizer import FaceRecognizer

    rows = read_csv(pairs_csv)
    if not rows or not {"img_a", "img_b", "same"} <= set(rows[0]):
        raise SystemExit(f"{pairs_csv}: expected columns img_a,img_b,same")
    root = find_set_root(pairs_csv)
    rec = FaceRecognizer(config)
    t0 = time.perf_counter()
    emb = embed_images(rec, root, [r[k] for r in rows for k in ("img_a", "img_b")], policy=policy, progress=progress)
    E = emb.embeddings
    scores = np.array(
        [float(E[r["img_a"]] @ E[r["img_b"]]) if r["img_a"] in E and r["img_b"] in E else -1.0 for r in rows]
    )
    labels = np.array([int(r["same"]) for r in rows])
    if "fold" in rows[0] and rows[0]["fold"] != "":
        folds = np.array([r["fold"] for r in rows])
    else:
        folds = np.arange(len(rows)) % 10
    thr = rec.config.matching.verify_threshold
    best_thr, best_acc = best_threshold(scores, labels)
    return {
        "pairs_csv": str(pairs_csv),
        "model": rec.model_id,
        "face_policy": policy,
        "pairs": len(rows),
        "same_pairs": int(labels.sum()),
        "threshold": thr,
        "accuracy_at_threshold": round(float(((scores >= thr) == labels).mean()), 4),
        "accuracy_cv": round(cross_validated_accuracy(scores, labels, folds), 4),
        "cv_folds": int(len(np.unique(folds))),
        "tar_at_far_1e-3": round(tar_at_far(scores, labels, 1e-3), 4),
        "tar_at_far_1e-2": round(tar_at_far(scores, labels, 1e-2), 4),
        "best_threshold_on_all": round(best_thr, 4),
        "best_accuracy_on_all": round(best_acc, 4),
        "no_face": len(emb.no_face),
        "no_face_images": emb.no_face[:20],
        "unreadable": len(emb.errors),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs_csv", type=Path)
    ap.add_argument("--config", default=None, help="embedder YAML (default configs/sface.yaml)")
    ap.add_argument("--face", choices=["center", "largest"], default="center",
                    help="which face of a multi-face image is the subject (LFW: center)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if not args.pairs_csv.is_file():
        print(f"error: {args.pairs_csv} not found", file=sys.stderr)
        return 2
    try:
        out = evaluate(args.pairs_csv, args.config, args.face, progress=not args.no_progress)
    except FaceRecError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Is a model fit to hold a gallery?  Checks on the embeddings it gives the gallery's own face crops.

A re-embedding runs them before it writes anything (:meth:`~modules.storage.gallery.GalleryStore.reembed`);
a failure is a :class:`~modules.errors.DegenerateEmbeddingsError` (409) naming the check and its figures:

``finite`` / ``nonzero``
    every embedding is a real vector (a broken checkpoint gives NaN, infinity or all zeros);
``collapse``
    the mean cosine similarity of faces of different people stays below :data:`MAX_DIFFERENT_SIMILARITY`
    (a collapsed model maps every face to nearly the same vector);
``nearest``
    among people with two faces or more, a face's nearest other face in its gallery is the same person's at
    least as often as :data:`MIN_NEAREST_SAME` or the old model's share on the same faces, whichever is lower,
    and never more than :data:`MAX_NEAREST_DROP` below the old model's share (a model that ignores the face).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DegenerateEmbeddingsError

#: an embedding shorter than this is "all zeros"
MIN_NORM = 1e-6
#: bound on the mean cosine similarity of faces of different people (SFace on LFW crops: 0.08)
MAX_DIFFERENT_SIMILARITY = 0.6
#: floor on the share of faces whose nearest other face is the same person's (SFace on LFW crops: 0.98)
MIN_NEAREST_SAME = 0.5
#: how far below the old model's share the new one may fall
MAX_NEAREST_DROP = 0.25
#: faces (of people with two or more) below which the ``nearest`` check is not judged
MIN_NEAREST_FACES = 4


def check_vectors(feats: np.ndarray, model_id: str, ids: Any = None) -> None:
    """``finite`` and ``nonzero``: each row of ``feats`` (raw embedder output) is a usable vector."""
    feats = np.asarray(feats)
    bad = ~np.all(np.isfinite(feats), axis=1)
    check = "finite"
    if not bad.any():
        bad, check = np.linalg.norm(feats, axis=1) < MIN_NORM, "nonzero"
    if bad.any():
        rows = np.flatnonzero(bad)
        which = [ids[i] for i in rows[:10]] if ids is not None else rows[:10].tolist()
        what = "NaN or infinite values" if check == "finite" else "all-zero vectors"
        raise DegenerateEmbeddingsError(
            f"the model {model_id!r} gave {what} for {len(rows)} of {len(feats)} face crops (face ids {which});"
            " its weights are broken: nothing was changed",
            details={"check": check, "embedder": model_id, "bad": len(rows), "checked": len(feats)},
        )


def check_gallery(emb: np.ndarray, galleries: np.ndarray, people: np.ndarray, model_id: str,
                  old: np.ndarray | None = None) -> dict[str, Any]:
    """``collapse`` and ``nearest`` on unit embeddings ``emb`` of faces (their gallery and person ids); ``old``:
    the old model's embeddings of the same faces, if one model made them all.  The figures, or the error."""
    galleries, people = np.asarray(galleries), np.asarray(people)
    sims, different = _similarities(emb, galleries, people)
    figures: dict[str, Any] = {
        "faces_checked": len(emb),
        "different_people_similarity": None if different is None else round(different, 4),
        "nearest_same_person": None, "nearest_same_person_before": None,
    }
    if different is not None and different > MAX_DIFFERENT_SIMILARITY:
        raise DegenerateEmbeddingsError(
            f"the model {model_id!r} collapses faces: faces of different people have a mean cosine similarity"
            f" of {different:.3f} (at most {MAX_DIFFERENT_SIMILARITY} is expected; a working model gives about"
            " 0.1); nothing was changed",
            details={"check": "collapse", "embedder": model_id, **figures},
        )
    judged = _judged(galleries, people)
    if judged.sum() < MIN_NEAREST_FACES:
        return figures
    share = _nearest_same_share(sims, people, judged)
    before = None if old is None else _nearest_same_share(_similarities(old, galleries, people)[0], people, judged)
    figures.update(nearest_same_person=round(share, 4),
                   nearest_same_person_before=None if before is None else round(before, 4))
    required = MIN_NEAREST_SAME
    if before is not None:
        required = max(min(MIN_NEAREST_SAME, before), before - MAX_NEAREST_DROP)
    if share < required:
        than = "" if before is None else f"; the current embeddings give {before:.1%}"
        raise DegenerateEmbeddingsError(
            f"the model {model_id!r} does not tell people apart: for {share:.1%} of {int(judged.sum())} faces of"
            f" people with several faces, the nearest other face is the same person's (at least {required:.1%} is"
            f" required{than}); nothing was changed",
            details={"check": "nearest", "embedder": model_id, "required": round(required, 4), **figures},
        )
    return figures


def _similarities(emb: np.ndarray, galleries: np.ndarray, people: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Cosine similarities, ``-inf`` across galleries; the mean over pairs of different people of one gallery."""
    e = np.asarray(emb, np.float32)
    sims = e @ e.T
    same_gallery = galleries[:, None] == galleries[None, :]
    different = same_gallery & (people[:, None] != people[None, :])
    sims[~same_gallery] = -np.inf
    return sims, (float(sims[different].mean()) if different.any() else None)


def _judged(galleries: np.ndarray, people: np.ndarray) -> np.ndarray:
    """Faces of people with two or more, in galleries of two people or more (elsewhere the nearest face says nothing)."""
    names, counts = np.unique(people, return_counts=True)
    several = np.isin(people, names[counts >= 2])
    crowded = {g: len(np.unique(people[galleries == g])) >= 2 for g in np.unique(galleries).tolist()}
    return several & np.array([crowded[g] for g in galleries.tolist()], dtype=bool)


def _nearest_same_share(sims: np.ndarray, people: np.ndarray, judged: np.ndarray) -> float:
    """The share of judged faces whose nearest other face is the same person's."""
    sims = sims.copy()
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(axis=1)
    return float(np.mean(people[nearest][judged] == people[judged]))

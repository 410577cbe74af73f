"""Cosine-similarity decisions: 1:1 verification and open-set 1:N identification."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import MatchingConfig
from .face import UNKNOWN, Candidate, Identification


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two vectors (they need not be normalised)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"embeddings of different sizes: {a.shape[0]} and {b.shape[0]}")
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else 0.0


@dataclass
class Verification:
    similarity: float
    same: bool
    threshold: float


class Matcher:
    """Applies the thresholds of one embedder's config."""

    def __init__(self, config: MatchingConfig):
        self.config = config

    def verify(self, a: np.ndarray, b: np.ndarray) -> Verification:
        s = cosine_similarity(a, b)
        return Verification(similarity=s, same=s >= self.config.verify_threshold, threshold=self.config.verify_threshold)

    def decide(self, candidates: list[Candidate], n_people: int, top_k: int | None = None) -> Identification:
        """Best candidate if it clears the open-set threshold for this gallery size, else ``unknown``."""
        thr = self.config.identify_threshold_for(n_people)
        cands = candidates[: top_k or self.config.top_k]
        if cands and cands[0].similarity >= thr:
            return Identification(name=cands[0].person, similarity=cands[0].similarity, candidates=cands, threshold=thr)
        best = cands[0].similarity if cands else 0.0
        return Identification(name=UNKNOWN, similarity=best, candidates=cands, threshold=thr)


def confidence(similarity: float, threshold: float) -> float:
    """A cosine similarity as a 0..1 confidence with the decision ``threshold`` at exactly 0.5.

    Piecewise linear: similarities 0..threshold map to 0..0.5 and threshold..1 to 0.5..1 (negative ones to 0),
    so "confidence >= 0.5" is the same decision as "similarity >= threshold".  It ranks, it is not a probability.
    """
    t = min(max(float(threshold), 1e-6), 1 - 1e-6)
    s = min(max(float(similarity), 0.0), 1.0)
    return 0.5 * s / t if s < t else 0.5 + 0.5 * (s - t) / (1 - t)

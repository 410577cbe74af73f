"""The one interface every face embedder implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from ..errors import InvalidRequestError

ALIGNED_SIZE = 112


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


class Embedder(ABC):
    """Turns aligned 112x112 BGR uint8 face crops into L2-normalised embeddings.

    Subclasses load their weights once in ``__init__`` and implement
    :meth:`_forward` on a batch ``(N, 112, 112, 3)`` BGR uint8 array.  The
    base class adds flip averaging (the embedding of a face plus that of its
    mirror image, renormalised), which is cheap and usually adds accuracy.
    """

    #: stamped on every stored embedding; embeddings with different ids are never compared
    model_id: str
    dim: int

    def __init__(self, model_id: str, dim: int, flip: bool = True, flip_queries: bool = False):
        self.model_id = model_id
        self.dim = dim
        self.flip = flip
        #: flip setting for faces being identified (queries); gallery faces use ``flip``
        self.flip_queries = flip and flip_queries

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Raw (un-normalised) embeddings ``(N, dim)`` of a BGR uint8 batch."""

    def embed(self, faces: np.ndarray | Sequence[np.ndarray], flip: bool | None = None) -> np.ndarray:
        """Embeddings ``(N, dim)`` float32, each of unit length.

        ``flip`` overrides the configured flip averaging for this call (the
        service passes :attr:`flip_queries` for faces it only identifies).
        """
        flip = self.flip if flip is None else flip
        batch = np.asarray(faces) if not isinstance(faces, np.ndarray) else faces
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or batch.shape[1:] != (ALIGNED_SIZE, ALIGNED_SIZE, 3):
            raise InvalidRequestError(
                f"embedder expects aligned {ALIGNED_SIZE}x{ALIGNED_SIZE}x3 crops, got shape {batch.shape}"
            )
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        if flip:
            both = self._forward(np.concatenate([batch, batch[:, :, ::-1]], axis=0))
            n = len(batch)
            feats = l2_normalize(both[:n]) + l2_normalize(both[n:])
        else:
            feats = self._forward(batch)
        return l2_normalize(np.asarray(feats, np.float32))

    def embed_one(self, face: np.ndarray) -> np.ndarray:
        return self.embed(face[None])[0]

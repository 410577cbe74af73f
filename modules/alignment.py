"""5-point similarity alignment onto the standard ArcFace 112x112 template."""
from __future__ import annotations

import cv2
import numpy as np

# insightface's arcface_dst: eye, eye, nose, mouth corner, mouth corner (image-left first)
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ALIGNED_SIZE = 112


def similarity_transform(src: np.ndarray, dst: np.ndarray = ARCFACE_TEMPLATE) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) ``src -> dst``.

    Umeyama's closed form, as in scikit-image's ``SimilarityTransform.estimate``;
    returns the 2x3 matrix for :func:`cv2.warpAffine`.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    n = src.shape[0]
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1
    rot = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / n
    scale = (s * d).sum() / var_src if var_src > 0 else 1.0
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = dst_mean - scale * rot @ src_mean
    return m


class Aligner:
    """Warps a face onto the ArcFace template from its 5 landmarks.

    ``zoom`` scales the template about the crop's centre (above 1 the face fills more of the crop).
    """

    def __init__(self, size: int = ALIGNED_SIZE, zoom: float = 1.0):
        self.size = size
        centre = ALIGNED_SIZE / 2
        self.template = ((ARCFACE_TEMPLATE - centre) * zoom + centre) * (size / ALIGNED_SIZE)

    def align(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        m = similarity_transform(landmarks, self.template)
        return cv2.warpAffine(image_bgr, m, (self.size, self.size), flags=cv2.INTER_LINEAR, borderValue=0)

"""Face quality: one score in 0..1, the product of size, sharpness, pose and detector-confidence factors.

Any single bad factor pulls the score down; the factors and the sharpness calibration are in ``docs/attributes.md``.
``reasons`` lists, in words, what is below the :class:`QualityGate` limits, e.g. ``"too small: 24 px < 40 px"``,
``"blurred: sharpness 0.12 < 0.30"``, ``"turned away: yaw 52° > 45°"``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from ..alignment import Aligner
from ..errors import LowQualityFaceError
from ..face import Face
from .pose import estimate_pose

SHARPNESS_HALF = 50.0  # Laplacian variance that maps to sharpness 0.5
_ALIGNER = Aligner()


def laplacian_variance(aligned_bgr: np.ndarray) -> float:
    """Variance of the Laplacian on the central face region of a 112x112 aligned crop."""
    g = aligned_bgr if aligned_bgr.ndim == 2 else cv2.cvtColor(aligned_bgr, cv2.COLOR_BGR2GRAY)
    h, w = g.shape[:2]
    c = g[round(h * 16 / 112) : round(h * 104 / 112), round(w * 16 / 112) : round(w * 96 / 112)]
    return float(cv2.Laplacian(c, cv2.CV_64F).var())


def sharpness(aligned_bgr: np.ndarray) -> float:
    """Laplacian variance mapped to 0..1 (``v / (v + 50)``)."""
    v = laplacian_variance(aligned_bgr)
    return v / (v + SHARPNESS_HALF)


def _num(value: float, limit: float, digits: int = 0) -> str:
    """``value`` rounded for a message, with one more digit if it would read as the limit."""
    text = f"{value:.{digits}f}"
    if float(text) == abs(limit) or float(text) == -abs(limit):
        text = f"{value:.{digits + 1}f}"
    return text


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


@dataclass(frozen=True)
class QualityGate:
    """Limits below which a face is refused (e.g. for enrollment).

    ``min_size`` is in pixels (shorter side of the detector box), angles in
    degrees, ``min_sharpness`` and ``min_score`` in the 0..1 units of the
    ``quality`` attribute.  Set a limit to ``None`` to disable it.
    """

    min_score: float | None = 0.4
    min_size: float | None = 40.0
    max_yaw: float | None = 45.0
    max_pitch: float | None = 30.0
    min_sharpness: float | None = 0.3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def reasons(self, q: dict[str, Any], pose: dict[str, float]) -> list[str]:
        out = []
        if self.min_size is not None and q["size_px"] < self.min_size:
            out.append(f"too small: {_num(q['size_px'], self.min_size)} px < {self.min_size:g} px")
        if self.min_sharpness is not None and q["sharpness"] is not None and q["sharpness"] < self.min_sharpness:
            out.append(f"blurred: sharpness {_num(q['sharpness'], self.min_sharpness, 2)} < {self.min_sharpness:.2f}")
        if self.max_yaw is not None and abs(pose["yaw"]) > self.max_yaw:
            out.append(f"turned away: yaw {_num(pose['yaw'], self.max_yaw)}° > {self.max_yaw:g}°")
        if self.max_pitch is not None and abs(pose["pitch"]) > self.max_pitch:
            way = "up" if pose["pitch"] > 0 else "down"
            out.append(f"looking {way}: pitch {_num(pose['pitch'], self.max_pitch)}° > {self.max_pitch:g}°")
        if self.min_score is not None and q["score"] < self.min_score:
            out.append(f"low quality score: {_num(q['score'], self.min_score, 2)} < {self.min_score:.2f}")
        return out

    def check(self, face: Face, image_bgr: np.ndarray | None = None) -> list[str]:
        """Why ``face`` fails this gate (empty when it passes).

        Uses ``face.aligned`` for sharpness, or aligns from ``image_bgr``; with
        neither, sharpness is not checked.
        """
        return assess_quality(face, image_bgr, gate=self)["reasons"]

    def enforce(self, face: Face, source_name: str = "image", image_bgr: np.ndarray | None = None) -> None:
        """Raise :class:`LowQualityFaceError` naming ``source_name`` and every reason."""
        q = assess_quality(face, image_bgr, gate=self)
        if q["reasons"]:
            raise LowQualityFaceError(
                f"{source_name}: face quality too low ({'; '.join(q['reasons'])})",
                details={"source": source_name, "quality": q, "gate": self.to_dict()},
            )


DEFAULT_GATE = QualityGate()


def assess_quality(
    face: Face,
    image_bgr: np.ndarray | None = None,
    *,
    gate: QualityGate | None = None,
    pose: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``{"score", "reasons", "size_px", "sharpness"}`` for one face.

    ``pose`` may be passed when already estimated; ``face.aligned`` is used when
    present, else the crop is aligned from ``image_bgr`` (not stored on ``face``).
    """
    gate = gate or DEFAULT_GATE
    pose = pose or estimate_pose(face.landmarks)
    aligned = face.aligned
    if aligned is None and image_bgr is not None:
        aligned = _ALIGNER.align(image_bgr, face.landmarks)
    sharp = sharpness(aligned) if aligned is not None else None
    size = float(face.size)
    f_size = _clip01((size - 16.0) / (64.0 - 16.0))
    f_sharp = _clip01(sharp / 0.5) if sharp is not None else 1.0
    d = math.hypot(pose["yaw"], pose["pitch"])
    f_pose = _clip01((75.0 - d) / 60.0)
    f_det = _clip01((float(face.det_score) - 0.5) / 0.4)
    q: dict[str, Any] = {
        "score": round(f_size * f_sharp * f_pose * f_det, 3),
        "reasons": [],
        "size_px": round(size, 1),
        "sharpness": round(sharp, 3) if sharp is not None else None,
    }
    q["reasons"] = gate.reasons(q, pose)
    return q

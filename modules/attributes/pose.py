"""Head pose (yaw, pitch, roll in degrees) from the 5 detector landmarks.

``cv2.solvePnP`` (SQPnP) of the landmarks against a generic 3-D face (:data:`FACE_MODEL_MM`) seen by a virtual camera
centred on the face, so the angles are relative to the line of sight to the face: a frontal face in a picture corner
reads as frontal.  Signs (``docs/attributes.md``, checked in ``tests/test_attributes.py``): yaw > 0 when the nose
points to the right of the picture (the subject turns to their own left), pitch > 0 looking up, roll > 0 tilted
clockwise as displayed; mirroring the image flips yaw and roll.  Five points cannot separate head shape from pose:
absolute yaw and pitch are approximate (about +-10 degrees near frontal, worse beyond 45); roll is the most reliable.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

# Generic adult face in millimetres, OpenCV camera axes (x right, y down, z away), origin between the eye centres,
# in the detector's landmark order.  In-plane: YuNet's median landmark layout on 300 LFW faces scaled to a 63 mm
# inter-pupillary distance (so the average LFW face *is* yaw = pitch = 0); depths: typical anthropometric offsets.
FACE_MODEL_MM = np.array(
    [
        [-31.5, 0.0, 0.0],  # eye on the left of the picture
        [31.5, 0.0, 0.0],  # eye on the right of the picture
        [0.0, 35.3, -19.0],  # nose tip
        [-26.8, 62.5, 6.0],  # mouth corner, left of the picture
        [26.8, 62.5, 6.0],  # mouth corner, right of the picture
    ],
    dtype=np.float64,
)

_FOCAL_PER_SPAN = 12.0  # virtual focal length in units of the landmark span (weak perspective)


def _euler_from_matrix(r: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees for ``R = Rz(roll) @ Ry(-yaw) @ Rx(-pitch)``."""
    beta = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    alpha = math.atan2(r[2, 1], r[2, 2])
    gamma = math.atan2(r[1, 0], r[0, 0])
    return -math.degrees(beta), -math.degrees(alpha), math.degrees(gamma)


def estimate_pose(landmarks: np.ndarray) -> dict[str, float]:
    """``{"yaw", "pitch", "roll"}`` in degrees (one decimal) from (5, 2) landmarks."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    if not np.isfinite(pts).all():
        raise ValueError("landmarks must be finite")
    centre = pts.mean(axis=0)
    span = float(np.linalg.norm(pts.max(axis=0) - pts.min(axis=0)))
    span = max(span, 1e-3)
    f = _FOCAL_PER_SPAN * span
    k = np.array([[f, 0.0, centre[0]], [0.0, f, centre[1]], [0.0, 0.0, 1.0]])
    ok, rvec, _tvec = cv2.solvePnP(FACE_MODEL_MM, pts, k, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:  # pragma: no cover - SQPnP always returns a solution for 5 points
        raise ValueError("head pose could not be estimated")
    r, _ = cv2.Rodrigues(rvec)
    yaw, pitch, roll = _euler_from_matrix(r)
    return {"yaw": round(yaw, 1), "pitch": round(pitch, 1), "roll": round(roll, 1)}


def project_model(yaw: float, pitch: float, roll: float, scale: float = 2.0, centre=(200.0, 200.0)) -> np.ndarray:
    """Landmarks of :data:`FACE_MODEL_MM` posed at the given angles (weak perspective).

    The inverse of :func:`estimate_pose`, for tests and sanity checks.
    """
    a, b, g = math.radians(-pitch), math.radians(-yaw), math.radians(roll)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(g), -math.sin(g), 0], [math.sin(g), math.cos(g), 0], [0, 0, 1]])
    p = FACE_MODEL_MM @ (rz @ ry @ rx).T
    xy = p[:, :2] - p[:, :2].mean(axis=0)
    return (xy * scale + np.asarray(centre)).astype(np.float32)

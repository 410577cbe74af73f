"""Optional per-face attributes: age, gender, emotion, head pose and quality.

Off by default; a request names the ones it wants
(``attributes=age,gender,emotion,pose,quality``) and each face then carries
exactly those keys in its JSON (the API's response models merge
``Face.attributes`` into each face):

* ``age``: estimated apparent age in years (float, one decimal);
* ``gender``: ``{"value": "female" | "male", "probability": p}``, a binary
  estimate of *apparent* gender presentation, not of identity;
* ``emotion``: ``{"value": label, "scores": {label: p, ...}}`` over angry,
  disgust, fear, happy, sad, surprise, neutral: a *facial expression*
  estimate, not a feeling;
* ``pose``: ``{"yaw", "pitch", "roll"}`` in degrees (see :mod:`.pose` for the
  sign conventions);
* ``quality``: ``{"score": 0..1, "reasons": [...], "size_px", "sharpness"}``.

Read ``docs/attributes.md`` before using them: what the models are, how
accurate they measured, and what they must not be used for.

Each network is loaded once, on first use, behind a lock; asking for ``pose``
or ``quality`` loads no network, and TensorFlow is imported only when
``emotion`` is first asked for.  One :class:`AttributeAnalyzer` may be shared
between threads.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidRequestError
from ..face import Face
from .pose import estimate_pose
from .quality import DEFAULT_GATE, QualityGate, assess_quality

ATTRIBUTES = ("age", "gender", "emotion", "pose", "quality")

__all__ = [
    "ATTRIBUTES",
    "AttributeAnalyzer",
    "QualityGate",
    "assess_quality",
    "estimate_pose",
    "parse_attributes",
]


def parse_attributes(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"age, gender"`` or ``["age", "gender"]`` -> ``("age", "gender")``.

    Names are case-insensitive, blanks and duplicates are dropped, and the
    result is in :data:`ATTRIBUTES` order.  ``None`` or an empty spec gives
    ``()``; an unknown name raises :class:`InvalidRequestError` listing the
    valid ones.
    """
    if spec is None:
        return ()
    if isinstance(spec, str):
        items: list[Any] = spec.split(",")
    else:
        items = []
        for item in spec:
            if not isinstance(item, str):
                raise InvalidRequestError(
                    f"attribute names must be strings, got {type(item).__name__}; valid: {', '.join(ATTRIBUTES)}"
                )
            items.extend(item.split(","))
    names = {s.strip().lower() for s in items if s.strip()}
    unknown = sorted(n for n in names if n not in ATTRIBUTES)
    if unknown:
        raise InvalidRequestError(
            f"unknown attribute{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(ATTRIBUTES)}",
            details={"unknown": unknown, "valid": list(ATTRIBUTES)},
        )
    return tuple(a for a in ATTRIBUTES if a in names)


class AttributeAnalyzer:
    """Fills ``face.attributes`` with the attributes asked for.

    >>> analyzer = AttributeAnalyzer()
    >>> analyzer.analyze(image_bgr, faces, parse_attributes("age,gender,pose"))
    >>> faces[0].attributes["gender"]
    {'value': 'female', 'probability': 0.9876}

    ``gate`` sets the limits the ``quality`` reasons are worded against (and
    is the gate enrollment should enforce).  ``onnx_threads`` is the intra-op
    thread count of the age/gender ONNX sessions.
    """

    def __init__(self, gate: QualityGate | None = None, *, onnx_threads: int = 1):
        self.gate = gate or DEFAULT_GATE
        self._onnx_threads = onnx_threads
        self._lock = threading.Lock()
        self._specs: dict[str, Any] | None = None
        self._nets: dict[str, Any] = {}  # "age" / "gender" -> OnnxAttributeNet
        self._emotion: Any = None
        self.last_timings_ms: dict[str, float] = {}

    # --- lazy models ------------------------------------------------------------------------
    def _onnx(self, task: str) -> Any:
        net = self._nets.get(task)
        if net is None:
            with self._lock:
                net = self._nets.get(task)
                if net is None:
                    from .age_gender import OnnxAttributeNet, load_specs

                    if self._specs is None:
                        self._specs = load_specs()
                    net = OnnxAttributeNet(task, self._specs[task], threads=self._onnx_threads)
                    net.session()  # load now, under the lock
                    self._nets[task] = net
        return net

    def _emotion_model(self) -> Any:
        if self._emotion is None:
            with self._lock:
                if self._emotion is None:
                    from .emotion import EmotionModel

                    model = EmotionModel()
                    model.model()
                    self._emotion = model
        return self._emotion

    @property
    def loaded_models(self) -> tuple[str, ...]:
        """Networks loaded so far, among ``age``, ``gender``, ``emotion``."""
        out = [t for t in ("age", "gender") if t in self._nets]
        if self._emotion is not None:
            out.append("emotion")
        return tuple(out)

    def warm_up(self, which: Iterable[str] = ATTRIBUTES) -> None:
        """Load the networks behind ``which`` now (e.g. at server start)."""
        for name in parse_attributes(list(which)):
            if name in ("age", "gender"):
                self._onnx(name)
            elif name == "emotion":
                self._emotion_model()

    # --- inference --------------------------------------------------------------------------
    def analyze(
        self,
        image_bgr: np.ndarray,
        faces: Sequence[Face],
        which: str | Iterable[str] | None,
        *,
        timings: dict[str, float] | None = None,
    ) -> None:
        """Set ``face.attributes[name]`` for every face and every name in ``which``.

        ``image_bgr`` is the image the faces' boxes and landmarks refer to.
        ``timings``, if given, receives the milliseconds spent per attribute
        for this call, crops included (``last_timings_ms`` holds the same for the
        latest call); a model's first use also counts its loading time.
        """
        names = parse_attributes(which)
        ms: dict[str, float] = {}
        if not faces or not names:
            self.last_timings_ms = ms
            if timings is not None:
                timings.update(ms)
            return
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise InvalidRequestError(f"expected an HxWx3 uint8 BGR image, got {image_bgr.shape} {image_bgr.dtype}")
        landmarks = [np.asarray(f.landmarks, np.float64) for f in faces]
        results: dict[str, list[Any]] = {}

        for task in ("age", "gender"):
            if task in names:
                from .age_gender import age_result, gender_result

                t0 = time.perf_counter()
                net = self._onnx(task)
                probs = net.probabilities(net.chips(image_bgr, landmarks))
                if task == "gender":
                    results[task] = [gender_result(p, net.spec.labels) for p in probs]
                else:
                    results[task] = [age_result(p, net.spec.age_weights) for p in probs]
                ms[task] = (time.perf_counter() - t0) * 1000

        if "emotion" in names:
            from .emotion import emotion_crop, emotion_result

            t0 = time.perf_counter()
            model = self._emotion_model()
            probs = model.probabilities(np.stack([emotion_crop(image_bgr, lm) for lm in landmarks]))
            results["emotion"] = [emotion_result(p) for p in probs]
            ms["emotion"] = (time.perf_counter() - t0) * 1000

        if "pose" in names or "quality" in names:
            t0 = time.perf_counter()
            poses = [estimate_pose(lm) for lm in landmarks]
            results["pose"] = poses
            ms["pose"] = (time.perf_counter() - t0) * 1000
            if "quality" in names:
                t0 = time.perf_counter()
                results["quality"] = [assess_quality(f, image_bgr, gate=self.gate, pose=p) for f, p in zip(faces, poses)]
                ms["quality"] = (time.perf_counter() - t0) * 1000

        for name in names:  # JSON keys in ATTRIBUTES order, only those asked for
            for f, value in zip(faces, results[name]):
                f.attributes[name] = dict(value) if isinstance(value, dict) else value

        self.last_timings_ms = ms
        if timings is not None:
            timings.update(ms)

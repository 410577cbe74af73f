"""Optional per-face attributes: age, gender, emotion, head pose and quality (see ``docs/attributes.md``).

Off by default; a request names the ones it wants (``attributes=age,gender,emotion,pose,quality``) and each face then
carries exactly those keys.  ``gender`` is an estimate of *apparent* gender presentation and ``emotion`` of a facial
expression, never of identity or feeling: read the documentation before using them.

Each network loads once, on first use, behind a lock; ``pose`` and ``quality`` load none, and TensorFlow is imported
only when ``emotion`` is first asked for.  One :class:`AttributeAnalyzer` may be shared between threads.
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
NETWORKS = ("age", "gender", "emotion")

__all__ = ["ATTRIBUTES", "AttributeAnalyzer", "QualityGate", "assess_quality", "estimate_pose", "parse_attributes"]


def parse_attributes(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"age, gender"`` or ``["age", "gender"]`` -> ``("age", "gender")``, in :data:`ATTRIBUTES` order.

    Case-insensitive; blanks and duplicates are dropped; an unknown name is an :class:`InvalidRequestError`.
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

    >>> AttributeAnalyzer().analyze(image_bgr, faces, "age,gender,pose")

    ``gate`` sets the limits the ``quality`` reasons are worded against (and is the gate enrollment should enforce).
    ``onnx_threads`` is the intra-op thread count of the age/gender ONNX sessions.
    """

    def __init__(self, gate: QualityGate | None = None, *, onnx_threads: int = 1):
        self.gate = gate or DEFAULT_GATE
        self._onnx_threads = onnx_threads
        self._lock = threading.Lock()
        self._nets: dict[str, Any] = {}  # task -> OnnxAttributeNet ("age", "gender") or EmotionModel

    def _model(self, task: str) -> Any:
        """The network of ``task`` (one of :data:`NETWORKS`), loaded once, under the lock."""
        net = self._nets.get(task)
        if net is None:
            with self._lock:
                net = self._nets.get(task)
                if net is None:
                    if task == "emotion":
                        from .emotion import EmotionModel

                        net = EmotionModel()
                        net.model()
                    else:
                        from .age_gender import OnnxAttributeNet, load_specs

                        net = OnnxAttributeNet(task, load_specs()[task], threads=self._onnx_threads)
                        net.session()
                    self._nets[task] = net
        return net

    @property
    def loaded_models(self) -> tuple[str, ...]:
        """Networks loaded so far, among ``age``, ``gender``, ``emotion``."""
        return tuple(t for t in NETWORKS if t in self._nets)

    def warm_up(self, which: Iterable[str] = ATTRIBUTES) -> None:
        """Load the networks behind ``which`` now (e.g. at server start)."""
        for name in parse_attributes(list(which)):
            if name in NETWORKS:
                self._model(name)

    def analyze(
        self,
        image_bgr: np.ndarray,
        faces: Sequence[Face],
        which: str | Iterable[str] | None,
        *,
        timings: dict[str, float] | None = None,
    ) -> None:
        """Set ``face.attributes[name]`` for every face and every name in ``which``.

        ``image_bgr`` is the image the faces' boxes and landmarks refer to.  ``timings``, if given, receives the
        milliseconds spent per attribute, crops and a model's first loading included (``quality`` also needs ``pose``).
        """
        names = parse_attributes(which)
        if not faces or not names:
            return
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise InvalidRequestError(f"expected an HxWx3 uint8 BGR image, got {image_bgr.shape} {image_bgr.dtype}")
        landmarks = [np.asarray(f.landmarks, np.float64) for f in faces]
        results: dict[str, list[Any]] = {}
        for task in (a for a in ATTRIBUTES if a in names or (a == "pose" and "quality" in names)):
            t0 = time.perf_counter()
            results[task] = self._compute(task, image_bgr, faces, landmarks, results)
            if timings is not None:
                timings[task] = (time.perf_counter() - t0) * 1000
        for name in names:  # JSON keys in ATTRIBUTES order, only those asked for
            for f, value in zip(faces, results[name]):
                f.attributes[name] = dict(value) if isinstance(value, dict) else value

    def _compute(self, task: str, image_bgr: np.ndarray, faces: Sequence[Face], landmarks: list[np.ndarray],
                 results: dict[str, list[Any]]) -> list[Any]:
        """``task``'s value for every face (``quality`` reuses the poses in ``results``)."""
        if task == "pose":
            return [estimate_pose(lm) for lm in landmarks]
        if task == "quality":
            return [assess_quality(f, image_bgr, gate=self.gate, pose=p) for f, p in zip(faces, results["pose"])]
        net = self._model(task)
        if task == "emotion":
            from .emotion import emotion_crop, emotion_result

            crops = np.stack([emotion_crop(image_bgr, lm) for lm in landmarks])
            return [emotion_result(p) for p in net.probabilities(crops)]
        from .age_gender import age_result, gender_result

        probs = net.probabilities(net.chips(image_bgr, landmarks))
        if task == "gender":
            return [gender_result(p, net.spec.labels) for p in probs]
        return [age_result(p, net.spec.age_weights) for p in probs]

"""The Python API: one object that detects, aligns, embeds, identifies, verifies and enrolls.

    >>> from modules.recognizer import FaceRecognizer
    >>> rec = FaceRecognizer.from_config("configs/sface.yaml", gallery="data/gallery.db")
    >>> rec.enroll("default", "obama", ["obama1.jpg", "obama2.jpg"])
    >>> result = rec.recognize("group.jpg")         # every face, each with a name or "unknown"
    >>> rec.verify("a.jpg", "b.jpg").same

Models load once in the constructor and the object may be shared between threads.
:meth:`FaceRecognizer.recognize` is the one recognition path: the HTTP API, the
folder script and the benchmarks all call it and get a :class:`RecognitionResult`.

Images are decoded within a :class:`~modules.images.DecodeBudget`: one larger than
the budget is detected on a reduced decode, and its faces are cropped from a decode
at the budget's resolution (:meth:`FaceRecognizer.find_faces`).  Boxes and
landmarks in every result are in the original image's pixel coordinates.  With a
:class:`~modules.images.DecodeGate`, every decode and the work on its pixels holds
one of the gate's slots; an enrollment decodes, embeds and drops its images one
at a time.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from .alignment import Aligner
from .attributes import AttributeAnalyzer, parse_attributes
from .attributes.quality import QualityGate
from .config import Config, load_config
from .detection import YuNetDetector
from .embedders import Embedder, build_embedder
from .errors import GalleryNotFoundError, InvalidRequestError, MultipleFacesError, NoFaceError
from .face import NO_FACE, UNKNOWN, Face, Identification
from .images import DecodeBudget, DecodedImage, DecodeGate, decode, read_file
from .matching import Matcher, Verification

ImageInput = np.ndarray | bytes | str | Path | DecodedImage
FacePolicy = Literal["largest", "center", "error"]
R = TypeVar("R")


@dataclass
class RecognizedFace:
    """One face of an image and, when a gallery was searched, who it is."""

    face: Face
    identification: Identification | None = None


@dataclass
class RecognitionResult:
    """Every face of one image (largest first) with the image size, gallery, model and stage timings."""

    faces: list[RecognizedFace]
    width: int
    height: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    gallery: str | None = None
    model: str | None = None

    @property
    def names(self) -> list[str]:
        return [f.identification.name for f in self.faces if f.identification is not None]

    @property
    def name(self) -> str:
        """The single name the original tools gave an image: the largest face's, ``unknown`` or ``no face``."""
        if not self.faces:
            return NO_FACE
        largest = max(self.faces, key=lambda rf: rf.face.width * rf.face.height)
        return largest.identification.name if largest.identification is not None else UNKNOWN


@dataclass
class VerifyResult(Verification):
    face_a: Face | None = None
    face_b: Face | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


class StageTimer:
    """Milliseconds per stage: each :meth:`lap` charges the time since the previous one to ``name``."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t0 = self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] = self.ms.get(name, 0.0) + (now - self._last) * 1000
        self._last = now

    def total(self) -> dict[str, float]:
        self.ms["total"] = (time.perf_counter() - self._t0) * 1000
        return self.ms


def primary_face(faces: Sequence[Face], shape: tuple[int, ...], policy: FacePolicy = "largest") -> Face:
    """The one face an operation that needs exactly one face should use."""
    if not faces:
        raise NoFaceError("no face was found in the image")
    if policy == "error":
        if len(faces) > 1:
            raise MultipleFacesError(f"{len(faces)} faces were found; exactly one is required")
        return faces[0]
    if policy == "center":
        h, w = shape[:2]
        return min(faces, key=lambda f: math.hypot((f.box[0] + f.box[2] - w) / 2, (f.box[1] + f.box[3] - h) / 2))
    return max(faces, key=lambda f: f.width * f.height)


class FaceRecognizer:
    """Detector + aligner + embedder + matcher (+ an optional gallery), loaded once."""

    def __init__(
        self,
        config: Config | str | Path | None = None,
        gallery: Any = None,
        *,
        detector: YuNetDetector | None = None,
        embedder: Embedder | None = None,
        max_image_bytes: int | None = None,
        max_image_pixels: int | None = None,
        decode_budget: DecodeBudget | None = None,
        decode_gate: DecodeGate | None = None,
    ):
        self.config = config if isinstance(config, Config) else load_config(config)
        self.detector = detector or YuNetDetector(self.config.detector)
        self.aligner = Aligner()
        self.embedder = embedder or build_embedder(self.config)
        self.matcher = Matcher(self.config.matching)
        #: computes the attributes :meth:`recognize` is asked for (its networks load on first use)
        self.attribute_analyzer = AttributeAnalyzer()
        q = self.config.enrollment_quality
        self.quality_gate: QualityGate | None = (
            QualityGate(**q.model_dump(exclude={"enabled"})) if q.enabled else None
        )
        if isinstance(gallery, (str, Path)):
            from .storage import open_gallery

            gallery = open_gallery(gallery)
        self.gallery = gallery
        limits = {"max_bytes": max_image_bytes, "max_pixels": max_image_pixels}
        self._limits = {k: v for k, v in limits.items() if v}  # decode's defaults for the others
        self.decode_budget = decode_budget or DecodeBudget()
        #: bounds the decodes (and the work on their pixels) running at once; ``None``: no bound
        self.decode_gate = decode_gate
        #: called as ``listener(operation, result)`` after each :meth:`recognize` (``"recognize"``, or
        #: ``"detect"`` without a gallery) and :meth:`verify` (``"verify"``): the service's metrics
        self.listeners: list[Callable[[str, Any], None]] = []

    @classmethod
    def from_config(cls, config: str | Path | None = None, gallery: Any = None, **kw: Any) -> FaceRecognizer:
        return cls(config, gallery, **kw)

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    def configure_decoding(self, budget: DecodeBudget | None = None, gate: DecodeGate | None = None) -> None:
        """Set the decode budget (``None``: unchanged) and the admission gate (``None``: none)."""
        self.decode_budget = budget or self.decode_budget
        self.decode_gate = gate

    def admitted(self) -> AbstractContextManager[None]:
        """A slot of :attr:`decode_gate` (re-entrant within a thread), to hold while decoded pixels live."""
        return self.decode_gate.slot() if self.decode_gate is not None else nullcontext()

    # --- stages -------------------------------------------------------------------------
    def decode(self, image: ImageInput, *, preview: bool = False) -> DecodedImage:
        """An array, encoded bytes or a file path as a :class:`DecodedImage`, within the limits and the budget.

        ``preview``: a JPEG over the budget is decoded only as large as the detector works
        (``detector.max_side``), refinable with :meth:`DecodedImage.refined`.
        """
        if isinstance(image, DecodedImage):
            return image
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
                raise InvalidRequestError(f"expected a non-empty uint8 image array, got {image.dtype} {image.shape}")
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
            elif image.shape[2] == 4:
                image = np.ascontiguousarray(image[:, :, :3])
            elif image.shape[2] != 3:
                raise InvalidRequestError(f"expected 1, 3 or 4 channels, got {image.shape[2]}")
            return DecodedImage.of_array(image)
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
        elif isinstance(image, (str, Path)):
            data = read_file(image)
        else:
            raise InvalidRequestError(f"unsupported image input of type {type(image).__name__}")
        side = self.detector.config.max_side if preview else None
        return decode(data, **self._limits, budget=self.decode_budget, preview_side=side)

    def load_image(self, image: ImageInput) -> np.ndarray:
        """BGR uint8 array from an array, encoded bytes or a file path (reduced to the decode budget)."""
        return self.decode(image).refined().pixels

    def find_faces(
        self, image: ImageInput, *, crops: bool = True, timer: StageTimer | None = None
    ) -> tuple[DecodedImage, list[Face]]:
        """Decode and detect: the image and its faces (largest first) in the coordinates of its ``pixels``.

        A JPEG over the decode budget is detected on a preview no larger than the detector uses.  With
        ``crops`` and faces found, it is decoded again at the budget's resolution and the faces are moved
        onto that decode: crops, attributes and quality are taken from the best resolution the budget
        allows.  ``timer`` gets ``decode`` and ``detect`` laps.
        """
        img = self.decode(image, preview=True)
        if timer:
            timer.lap("decode")
        sx, sy = img.scale
        faces = self.detector.detect(img.pixels, to_original=1.0 / min(sx, sy))
        if timer:
            timer.lap("detect")
        if crops and faces and img.refine is not None:
            img = img.refined()
            fx, fy = img.scale
            for f in faces:
                f.rescale(fx / sx, fy / sy, img.pixels.shape[1], img.pixels.shape[0])
            if timer:
                timer.lap("decode")
        return img, faces

    def detect(self, image: ImageInput) -> list[Face]:
        """Every face of the image (largest first), in the original image's pixel coordinates."""
        with self.admitted():
            img, faces = self.find_faces(image, crops=False)
            return img.to_original(faces)

    def embed_faces(
        self,
        image: np.ndarray,
        faces: Sequence[Face],
        *,
        query: bool = False,
        flip: bool | None = None,
        timer: StageTimer | None = None,
    ) -> list[Face]:
        """Align and embed ``faces`` of ``image`` in one batch (sets ``aligned``/``embedding``).

        ``query=True`` marks faces that are only identified, never stored: they
        get the embedder's ``flip_queries`` setting (one pass instead of two by
        default), gallery faces and verification the full flip averaging.
        ``flip`` overrides both for this call; ``timer`` gets the ``align`` and ``embed`` laps.
        """
        if not faces:
            return list(faces)
        for f in faces:
            f.aligned = self.aligner.align(image, f.landmarks)
        if timer:
            timer.lap("align")
        if flip is None and query:
            flip = self.embedder.flip_queries
        embs = self.embedder.embed(np.stack([f.aligned for f in faces]), flip=flip)
        for f, e in zip(faces, embs):
            f.embedding = e
            f.embedder = self.embedder.model_id
        if timer:
            timer.lap("embed")
        return list(faces)

    def embed_image(self, image: ImageInput, policy: FacePolicy = "largest", *, timer: StageTimer | None = None
                    ) -> Face:
        """The embedded primary face of an image (:class:`NoFaceError` if none), in the original's coordinates."""
        with self.admitted():
            if timer and self.decode_gate is not None:
                timer.lap("queue")
            img, faces = self.find_faces(image, timer=timer)
            face = primary_face(faces, img.pixels.shape, policy)
            self.embed_faces(img.pixels, [face], timer=timer)
            return img.to_original([face])[0]

    # --- 1:1 --------------------------------------------------------------------------------
    def verify(self, image_a: ImageInput, image_b: ImageInput, policy: FacePolicy = "largest") -> VerifyResult:
        """Whether the primary faces of two images are the same person, decoded one after the other.

        Timings: (queue,) decode, detect, align, embed, verify, total.
        """
        timer = StageTimer()
        with self.admitted():
            fa = self.embed_image(image_a, policy, timer=timer)
            fb = self.embed_image(image_b, policy, timer=timer)
        v = self.matcher.verify(fa.embedding, fb.embedding)
        timer.lap("verify")
        return self._done("verify", VerifyResult(v.similarity, v.same, v.threshold, face_a=fa, face_b=fb,
                                                 timings_ms=timer.total()))

    # --- 1:N --------------------------------------------------------------------------------
    def _require_gallery(self) -> Any:
        if self.gallery is None:
            raise InvalidRequestError("this recognizer has no gallery; pass gallery=... to FaceRecognizer")
        return self.gallery

    def open_set_threshold(self, gallery: str = "default") -> tuple[int, float]:
        """How many people a search of ``gallery`` can return, and the open-set threshold for that many."""
        n = self._require_gallery().num_people(gallery)
        return n, float(self.matcher.decide([], n).threshold)

    def identify_embeddings(
        self, embeddings: np.ndarray, gallery: str = "default", top_k: int | None = None
    ) -> list[Identification]:
        """The identity (or ``unknown``) and top-k candidates of each embedding row."""
        embeddings = np.atleast_2d(np.asarray(embeddings, np.float32))
        return self._identify(embeddings, gallery, top_k) if len(embeddings) else []

    def _identify(
        self, embeddings: np.ndarray, gallery: str, top_k: int | None, missing_gallery_ok: bool = False
    ) -> list[Identification]:
        """One gallery round trip answers the search and the gallery size; no rows still checks the gallery."""
        k = top_k or self.config.matching.top_k
        try:
            found, n_people = self._require_gallery().search_people(gallery, embeddings, self.model_id, k)
        except GalleryNotFoundError:
            if not missing_gallery_ok:
                raise
            found, n_people = [[] for _ in embeddings], 0
        return [self.matcher.decide(cands, n_people, k) for cands in found]

    def recognize(
        self,
        image: ImageInput,
        gallery: str | None = "default",
        *,
        top_k: int | None = None,
        max_faces: int | None = None,
        attributes: str | Iterable[str] | None = None,
        analyzer: AttributeAnalyzer | None = None,
        missing_gallery_ok: bool = False,
        embed: bool = False,
    ) -> RecognitionResult:
        """Every face of the image (largest first), each with its identity or ``unknown`` and top-k candidates.

        ``gallery=None`` only detects (no identification; no embedding unless ``embed``).  ``attributes``
        (e.g. ``"age,gender"``) are computed by ``analyzer`` (default: this recognizer's);
        an unknown name fails before any work.  ``missing_gallery_ok`` treats a gallery that
        does not exist as empty; otherwise it raises :class:`GalleryNotFoundError`, faces or not.
        Timings: (queue,) decode, detect, align, embed, attributes, match, total (ms); ``queue`` is the wait
        for a slot of :attr:`decode_gate`, which is held until the pixels are dropped (before matching).
        """
        which = parse_attributes(attributes)
        if gallery is not None:
            self._require_gallery()
        timer = StageTimer()
        with self.admitted():
            if self.decode_gate is not None:
                timer.lap("queue")
            embed = embed or gallery is not None
            img, faces = self.find_faces(image, crops=embed or bool(which), timer=timer)
            faces = faces[:max_faces]
            if embed:
                self.embed_faces(img.pixels, faces, query=True, timer=timer)
            if which and faces:
                (analyzer or self.attribute_analyzer).analyze(img.pixels, faces, which)
                timer.lap("attributes")
            img.to_original(faces)
            width, height = img.width, img.height
            del img
        idents: list[Identification | None] = [None] * len(faces)
        if gallery is not None:
            embs = np.stack([f.embedding for f in faces]) if faces else np.zeros((0, self.embedder.dim), np.float32)
            idents = list(self._identify(embs, gallery, top_k, missing_gallery_ok))
            timer.lap("match")
        return self._done("detect" if gallery is None else "recognize", RecognitionResult(
            faces=[RecognizedFace(f, i) for f, i in zip(faces, idents, strict=True)],
            width=width,
            height=height,
            timings_ms=timer.total(),
            gallery=gallery,
            model=self.model_id if gallery is not None else None,
        ))

    def _done(self, operation: str, result: R) -> R:
        for listener in self.listeners:
            listener(operation, result)
        return result

    #: the name the README's Python API uses
    identify = recognize

    # --- enrollment -------------------------------------------------------------------------
    def prepare_enrollment(
        self,
        images: Iterable[ImageInput],
        sources: Sequence[str] | None = None,
        policy: FacePolicy = "largest",
        check_quality: bool = True,
    ) -> list[Any]:
        """Detect and embed one face per image, raising before anything is written.

        The images are decoded one at a time (each holding a slot of :attr:`decode_gate`):
        decode, detect, embed, then the pixels are dropped before the next image.
        With ``check_quality`` (the default) the config's ``enrollment_quality``
        gate refuses small, blurred or turned-away faces with
        :class:`~modules.errors.LowQualityFaceError` naming the image and the reasons;
        the gate measures the face in the pixels its crop was taken from.
        ``source_sha256`` is the hash of each file's bytes (of the pixels for arrays).
        """
        from .storage import NewFace

        images = list(images)
        if not images:
            raise InvalidRequestError("no images to enroll")
        if sources is not None and len(sources) != len(images):
            raise InvalidRequestError("sources must name every image")
        new: list[NewFace] = []
        for i, src in enumerate(images):
            name = sources[i] if sources is not None else (str(src) if isinstance(src, (str, Path)) else f"image {i}")
            # a file is read once: its bytes are both hashed and decoded
            raw = read_file(src) if isinstance(src, (str, Path)) else src
            raw = bytes(raw) if isinstance(raw, (bytearray, memoryview)) else raw
            with self.admitted():
                try:
                    img, faces = self.find_faces(raw)
                    face = primary_face(faces, img.pixels.shape, policy)
                except (NoFaceError, MultipleFacesError) as exc:
                    raise type(exc)(f"{name}: {exc.message}") from exc
                self.embed_faces(img.pixels, [face])
                if check_quality and self.quality_gate is not None:
                    self.quality_gate.enforce(face, name, image_bgr=img.pixels)
                hashed = raw if isinstance(raw, bytes) else img.pixels.tobytes()
                img.to_original([face])
                del img  # the pixels go before the next image is decoded
            new.append(NewFace.from_face(face, source=name, source_sha256=hashlib.sha256(hashed).hexdigest()))
        return new

    def enroll(
        self,
        gallery: str,
        person: str,
        images: Iterable[ImageInput],
        sources: Sequence[str] | None = None,
        policy: FacePolicy = "largest",
        check_quality: bool = True,
    ) -> list[int]:
        """Enroll one face from each image for ``person``; all or nothing. Returns face ids."""
        g = self._require_gallery()
        new = self.prepare_enrollment(images, sources, policy, check_quality)
        return g.add_faces(gallery, person, new)

"""Import/export of the original tools' pickled ``{name: embedding(s)}`` galleries.

Unpickling runs code, so an import is refused unless the caller says the file is trusted, and even then a
restricted unpickler rebuilds only numpy arrays and plain containers: any other global (``os.system``,
``eval``...) raises :class:`~modules.errors.UntrustedPickleError` before it is called.  Imported faces carry
no crop (they cannot be re-embedded) and ``source_sha256`` = the pickle's SHA-256 (no second import).
"""
from __future__ import annotations

import codecs
import collections
import contextlib
import hashlib
import io
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy._core import multiarray, numeric

from ..errors import ConflictError, GalleryNotFoundError, InvalidRequestError, UntrustedPickleError
from ..files import private_dir
from .records import NewFace, validate_name, validate_new_name

if TYPE_CHECKING:  # pragma: no cover
    from .gallery import GalleryStore

MAX_PICKLE_BYTES = 1 << 30


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it for bytes, limited to plain text codecs."""
    if not isinstance(obj, str) or codecs.lookup(encoding).name not in ("iso8859-1", "utf-8", "ascii"):
        raise UntrustedPickleError(f"the pickle asks for codec {encoding!r}, which is not allowed")
    return codecs.encode(obj, encoding, errors)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{(f"numpy.{core}.multiarray", name): getattr(multiarray, name)
       for core in ("core", "_core") for name in ("_reconstruct", "scalar")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): numeric._frombuffer for core in ("core", "_core")},
    **{(mod, t.__name__): t for mod in ("builtins", "__builtin__") for t in (list, dict, tuple, float, int)},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dicts, lists and numbers; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise UntrustedPickleError(
                f"the pickle references {module}.{name}, which is not allowed in a legacy gallery"
                " (only numpy arrays, dicts and lists are); refusing to load it",
                details={"global": f"{module}.{name}"},
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UntrustedPickleError("the pickle uses persistent ids, which are not allowed")


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing only numpy arrays and plain containers."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except UntrustedPickleError:
        raise
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            "the pickle holds Python 2 byte strings, which are not supported; re-save it with Python 3"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - malformed data can fail in many ways while unpickling
        raise InvalidRequestError(f"not a valid legacy gallery pickle: {type(exc).__name__}: {exc}") from exc


def _numbers(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, np.number)) and not isinstance(x, bool)
                                                for x in v)


def _vectors(name: str, value: Any) -> list[np.ndarray]:
    """The unit embedding(s) of one entry: an array ``(d,)``/``(n, d)``, a list of numbers, or a list of those."""
    what = f"entry {name!r}"
    if isinstance(value, (list, tuple)) and not value:
        raise InvalidRequestError(f"{what} has no embeddings")
    many = isinstance(value, (list, tuple)) and not _numbers(value)  # else one array, or one list of numbers
    out: list[np.ndarray] = []
    for label, v in [(f"{what}[{i}]", v) for i, v in enumerate(value)] if many else [(what, value)]:
        if isinstance(v, np.ndarray) and v.dtype.kind not in "fiu":
            raise InvalidRequestError(f"{label} has dtype {v.dtype}; expected numbers")
        if not isinstance(v, np.ndarray) and not _numbers(v):
            raise InvalidRequestError(f"{label} is a {type(v).__name__}, not an embedding")
        a = np.asarray(v, dtype=np.float64)
        if a.ndim not in (1, 2) or a.ndim == 2 and a.shape[0] == 0:
            raise InvalidRequestError(f"{label} has shape {a.shape}; expected (d,) or (n, d)")
        for r in a[None] if a.ndim == 1 else a:
            if r.size == 0:
                raise InvalidRequestError(f"{label} is empty")
            if not np.all(np.isfinite(r)):
                raise InvalidRequestError(f"{label} contains NaN or infinite values")
            norm = float(np.linalg.norm(r))
            if not norm > 1e-12:
                raise InvalidRequestError(f"{label} has zero length")
            out.append((r / norm).astype(np.float32))
    return out


def parse_legacy(obj: Any) -> dict[str, list[np.ndarray]]:
    """Validate an unpickled legacy gallery: ``{name: [unit float32 (d,) ...]}`` with one ``d``."""
    if not isinstance(obj, Mapping):
        raise InvalidRequestError(f"a legacy gallery is a dict {{name: embedding}}, got {type(obj).__name__}")
    if not obj:
        raise InvalidRequestError("the legacy gallery is empty")
    people: dict[str, list[np.ndarray]] = {}
    dim: int | None = None
    first_name = None
    for key, value in obj.items():
        if not isinstance(key, str):
            raise InvalidRequestError(f"legacy gallery keys must be names (str), got {type(key).__name__} {key!r}")
        name = validate_new_name(key, "person name")
        vecs = _vectors(key, value)
        for v in vecs:
            if dim is None:
                dim, first_name = v.shape[0], key
            elif v.shape[0] != dim:
                raise InvalidRequestError(
                    f"entry {key!r} has {v.shape[0]}-d embeddings but {first_name!r} has {dim}-d;"
                    " all embeddings must have one dimension"
                )
        people.setdefault(name, []).extend(vecs)  # (NFC-normalised)
    return people


def import_legacy_pickle(
    store: "GalleryStore", path: str | Path, gallery: str, embedder_id: str, *, trusted: bool = False
) -> dict[str, Any]:
    """Import a legacy pickle into ``gallery``, all or nothing; ``embedder_id`` is the model that produced the
    embeddings (the old tools did not record it).  :class:`UntrustedPickleError` unless ``trusted``."""
    path = Path(path)
    if trusted is not True:
        raise UntrustedPickleError(
            f"refusing to load {path.name}: unpickling a file can run arbitrary code. Only import pickles you"
            " created yourself, and say so explicitly (trusted=True / --trust-pickle)",
            details={"path": str(path)},
        )
    gallery = validate_name(gallery, "gallery name")
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise InvalidRequestError(f"{path} is {size} bytes; the limit for a legacy gallery is {MAX_PICKLE_BYTES}")
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidRequestError(f"legacy gallery file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise InvalidRequestError(f"{path} is a directory, not a pickle file") from exc
    except OSError as exc:
        raise InvalidRequestError(f"cannot read {path}: {exc.strerror or exc}") from exc
    sha = hashlib.sha256(data).hexdigest()
    people = parse_legacy(restricted_loads(data))
    try:
        already = store.find_faces_by_source_sha256(gallery, sha)
    except GalleryNotFoundError:  # a gallery that does not exist yet has nothing imported
        already = []
    if already:
        raise ConflictError(
            f"{path.name} (sha256 {sha[:12]}...) was already imported into gallery {gallery!r}"
            f" ({len(already)} faces); delete those people first to import it again",
            details={"gallery": gallery, "source_sha256": sha},
        )
    faces = {name: [NewFace(embedding=v, embedder=embedder_id, source=f"{path.name}:{name}[{i}]", source_sha256=sha)
                    for i, v in enumerate(vecs)] for name, vecs in people.items()}
    ids = store.add_faces_many(gallery, faces, create_missing=True)
    dim = next(iter(people.values()))[0].shape[0]
    return {"gallery": gallery, "people": len(ids), "faces": sum(len(v) for v in ids.values()),
            "embedder": embedder_id, "dim": int(dim), "source_sha256": sha}


def export_legacy_pickle(
    store: "GalleryStore", path: str | Path, gallery: str, embedder_id: str, *, mode: str = "mean"
) -> dict[str, Any]:
    """Write ``gallery`` (people with faces) as the old tools' pickle, atomically: ``mode='mean'``
    ``{name: float32 (d,)}``, the re-normalised mean of the person's embeddings; ``mode='list'``
    ``{name: [float32 (d,), ...]}``.  :class:`EmbedderMismatchError` if they are another model's."""
    if mode not in ("mean", "list"):
        raise InvalidRequestError(f"mode must be 'mean' or 'list', got {mode!r}")
    by_person = store.embeddings_by_person(gallery, embedder_id)
    out: dict[str, Any] = {}
    for name, embs in by_person.items():
        if mode == "mean":
            m = embs.astype(np.float64).mean(axis=0)
            norm = np.linalg.norm(m)
            out[name] = (m / norm if norm > 1e-12 else embs[0]).astype(np.float32)
        else:
            out[name] = [e.astype(np.float32) for e in embs]
    path = Path(path)
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(out, f, protocol=4)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return {"gallery": gallery, "people": len(out), "faces": int(sum(len(e) for e in by_person.values())),
            "mode": mode, "path": str(path)}

"""Decoding untrusted image bytes into BGR uint8 arrays, safely and within a memory budget.

Handles what real uploads contain: EXIF-rotated phone photos, grayscale,
RGBA/palette images with transparency, 16-bit PNGs, CMYK JPEGs, animated
GIFs and WebPs (the first frame only: the others are never read).  Refuses, with
a typed error, empty or truncated files, non-images, unsupported formats and
images declaring more than ``max_pixels``.

Every decision is taken from the header, before any pixel is decoded, against a
:class:`DecodeBudget`:

* ``pixels``: an image larger than this is delivered reduced to fit.  JPEGs are
  decoded reduced by the decoder itself (1/2, 1/4 or 1/8 scale,
  :meth:`PIL.Image.Image.draft`); other formats are reduced by an integer
  factor (box average) right after decoding.
* ``raster_bytes``: the memory the decoder may take for one image, counted at
  its real cost (:func:`decode_cost`): 1 byte per pixel for grey and palette
  images, 3 for 16-bit grey (2, and 1 for its 8-bit copy), 4 for colour and
  alpha (Pillow keeps RGB in 4 bytes), 16 for WebP (libwebp's animation decoder keeps two canvases and a
  frame copy), plus the coefficient buffer of progressive and multi-scan JPEGs
  (2 bytes per sample at full size, whatever the scale).  An image that needs
  more is refused with :class:`~modules.errors.ImageTooLargeError` (413); a JPEG
  is decoded at a smaller scale instead when one fits.

:func:`decode` returns a :class:`DecodedImage`: the pixels plus the original
upright size, so that coordinates found in the pixels can be mapped back.  With
``preview_side``, a JPEG over the budget is first decoded only as large as
detection needs (long side at least ``preview_side``) and
:meth:`DecodedImage.refined` decodes it again at the budget's resolution when
faces must be cropped: a huge image without a face costs a small fraction of a
full decode.  16-bit images are brought to 8 bits by their high byte, with no
floating-point copy.  :class:`DecodeGate` bounds how many decodes (and the work
on their pixels) run at once in a process.
"""
from __future__ import annotations

import io
import math
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import BadImageError, ImageTooLargeError, InvalidRequestError, ServiceBusyError, UnsupportedMediaError

if TYPE_CHECKING:
    from .face import Face

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000  # e.g. 8000x5000
#: decode budget: images above are delivered reduced (12 Mpx phone photos keep their full resolution)
DEFAULT_DECODE_PIXELS = 16_000_000
#: decode budget: the decoder's memory for one image (a 12 Mpx WebP needs 195 MB)
DEFAULT_RASTER_BYTES = 192 * 1024 * 1024
SUPPORTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"}
JPEG_FORMATS = {"JPEG", "MPO"}
JPEG_SCALES = (1, 2, 4, 8)  # what libjpeg can decode directly
MB = 1024 * 1024

#: EXIF orientation -> the numpy view that makes an H x W [x C] array of stored pixels upright
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a.swapaxes(0, 1)[:, ::-1],
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: a.swapaxes(0, 1)[::-1],
}


@dataclass(frozen=True)
class DecodeBudget:
    """What one decode may cost: ``pixels`` delivered at most, ``raster_bytes`` of decoder memory at most."""

    pixels: int = DEFAULT_DECODE_PIXELS
    raster_bytes: int = DEFAULT_RASTER_BYTES


@dataclass(eq=False)
class DecodedImage:
    """Upright BGR ``pixels``, maybe reduced, of an image whose original upright size is ``width`` x ``height``.

    ``refine`` (set on a preview) decodes the same image again at the budget's resolution.
    """

    pixels: np.ndarray
    width: int
    height: int
    refine: Callable[[], np.ndarray] | None = None

    @classmethod
    def of_array(cls, pixels: np.ndarray) -> DecodedImage:
        return cls(pixels, int(pixels.shape[1]), int(pixels.shape[0]))

    @property
    def scale(self) -> tuple[float, float]:
        """Pixels of :attr:`pixels` per original pixel, along x and y (1.0 when not reduced)."""
        return self.pixels.shape[1] / self.width, self.pixels.shape[0] / self.height

    def to_original(self, faces: list[Face]) -> list[Face]:
        """``faces`` found in :attr:`pixels` moved (in place) into the original image's pixel coordinates."""
        sx, sy = self.scale
        if (sx, sy) != (1.0, 1.0):
            for f in faces:
                f.rescale(1.0 / sx, 1.0 / sy, self.width, self.height)
        return faces

    def refined(self) -> DecodedImage:
        """This image at the budget's resolution: itself, or a new decode when this one is a preview."""
        if self.refine is None:
            return self
        return DecodedImage(self.refine(), self.width, self.height)


# --- the cost of a decode, from the header ---------------------------------------------------------
def _bytes_per_pixel(img: Image.Image) -> int:
    """Decoder bytes per pixel: Pillow's storage (16-bit grey: 2, plus its 8-bit copy: 1), WebP's canvases."""
    mode = img.mode
    per = 1 if mode in ("1", "L", "P") else 3 if mode.startswith("I;16") else 4
    return per * (4 if img.format == "WEBP" else 1)


def _first_scan_components(data: bytes) -> int | None:
    """How many components the first scan of a JPEG covers (its header segments are skipped by length)."""
    i = 2
    while i + 4 < len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xDA:
            return data[i + 4]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _coefficient_bytes(img: Image.Image, data: bytes) -> int:
    """The whole-image DCT coefficient buffer libjpeg needs for a progressive or multi-scan JPEG (else 0)."""
    if img.format not in JPEG_FORMATS:
        return 0
    layers = getattr(img, "layer", None) or []
    # progressive, or a first scan covering fewer components than the frame: more scans follow
    first = _first_scan_components(data)
    if not layers or not (img.info.get("progressive") or (first is not None and first < len(layers))):
        return 0
    hmax, vmax = max(layer[1] for layer in layers), max(layer[2] for layer in layers)
    samples = sum(layer[1] * layer[2] for layer in layers) / (hmax * vmax)
    w, h = img.size
    return int(math.ceil(w / 8) * 8 * math.ceil(h / 8) * 8 * samples * 2)


def decode_cost(img: Image.Image, data: bytes, scale: int = 1, pixel_budget: int | None = None) -> int:
    """Bytes the decoder takes for ``img`` (opened, not loaded) decoded at 1/``scale``.

    Palette and bilevel images that must be shrunk to ``pixel_budget`` are converted first: 4 bytes per pixel more.
    """
    w, h = math.ceil(img.width / scale), math.ceil(img.height / scale)
    cost = w * h * _bytes_per_pixel(img) + _coefficient_bytes(img, data)
    if pixel_budget is not None and w * h > pixel_budget and img.mode in ("1", "P", "PA"):
        cost += w * h * 4
    return cost


def _plan(img: Image.Image, data: bytes, budget: DecodeBudget, preview_side: int | None) -> tuple[int, int | None]:
    """``(scale, preview scale or None)``: the JPEG scale that fits the budget, and a coarser one for detection."""
    w, h = img.size
    if img.format not in JPEG_FORMATS:
        cost = decode_cost(img, data, 1, budget.pixels)
        if cost > budget.raster_bytes:
            raise ImageTooLargeError(
                f"decoding this {w}x{h} {img.format} image ({img.mode}) would take {cost / MB:.0f} MB;"
                f" the decode budget is {budget.raster_bytes / MB:.0f} MB"
            )
        return 1, None
    fits = [s for s in JPEG_SCALES if math.ceil(w / s) * math.ceil(h / s) <= budget.pixels
            and decode_cost(img, data, s) <= budget.raster_bytes]
    if not fits:
        raise ImageTooLargeError(
            f"decoding this {w}x{h} JPEG would take {decode_cost(img, data, JPEG_SCALES[-1]) / MB:.0f} MB even at"
            f" 1/{JPEG_SCALES[-1]} scale; the decode budget is {budget.raster_bytes / MB:.0f} MB"
        )
    scale = fits[0]
    if preview_side is None or scale == 1 or _coefficient_bytes(img, data):
        return scale, None  # within the budget; or multi-scan, whose cost is the entropy decoding: decoded once
    coarse = max((s for s in JPEG_SCALES if max(w, h) / s >= preview_side), default=1)
    return scale, (coarse if coarse > scale else None)


# --- decoding -----------------------------------------------------------------------------------
@contextmanager
def _decoding() -> Iterator[None]:
    """Pillow's failures as typed errors (a declared size beyond Pillow's own bomb limit is too large)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"the image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadImageError("the file is not a decodable image") from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise BadImageError(f"the image could not be decoded (truncated or corrupt): {exc}") from exc


def _open(data: bytes, max_pixels: int) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    if img.format not in SUPPORTED_FORMATS:
        raise UnsupportedMediaError(
            f"image format {img.format} is not supported; use one of {', '.join(sorted(SUPPORTED_FORMATS))}"
        )
    w, h = img.size
    if w <= 0 or h <= 0:
        raise BadImageError(f"the image declares an empty size {w}x{h}")
    if w * h > max_pixels:
        raise ImageTooLargeError(f"the image is {w}x{h} pixels; the limit is {max_pixels} pixels")
    return img


def _shrink(img: Image.Image, pixels: int) -> Image.Image:
    """``img`` reduced by the smallest integer factor (box average) that brings it to ``pixels`` at most, or itself."""
    w, h = img.size
    factor = max(1, math.ceil(math.sqrt(w * h / pixels)))
    while math.ceil(w / factor) * math.ceil(h / factor) > pixels:
        factor += 1
    if factor == 1:
        return img
    if img.mode in ("1", "P", "PA"):  # averaging palette indices would be wrong
        img = _to_8bit(img)
    try:
        return img.reduce(factor)
    except ValueError:  # a mode Pillow does not reduce
        return _to_8bit(img).reduce(factor)


def _high_bytes(img: Image.Image, band_bytes: int = 4 * MB) -> Image.Image:
    """A 16-bit grey image as 8 bits (its high byte), converted in bands of rows: no full-size copy, no float."""
    w, h = img.size
    out = np.empty((h, w), np.uint8)
    rows = max(1, band_bytes // (2 * w))
    for y in range(0, h, rows):
        band = np.asarray(img.crop((0, y, w, min(h, y + rows))))
        big = band.dtype.byteorder == ">" or (band.dtype.byteorder in "=|" and sys.byteorder == "big")
        out[y : y + band.shape[0]] = band.view(np.uint8).reshape(*band.shape, 2)[..., 0 if big else 1]
    return Image.fromarray(out)


def _to_8bit(img: Image.Image) -> Image.Image:
    """``img`` as ``L`` or ``RGB``: 16-bit and float scaled, transparency flattened on white."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode.startswith("I;16"):
        return _high_bytes(img)
    if mode in ("I", "F"):
        hi = max(float(img.getextrema()[1]), 1.0)  # type: ignore[arg-type]
        return img.point(lambda v: v * (255.0 / hi)).convert("L")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if mode not in ("RGBA", "LA"):
            img = img.convert("RGBA")
        flat = Image.new("RGB", img.size, (255, 255, 255))
        flat.paste(img, (0, 0), img)
        return flat
    return img.convert("L" if mode == "1" else "RGB")


def _to_bgr(arr: np.ndarray, orientation: int) -> np.ndarray:
    """An ``L`` or ``RGB`` array as an upright, contiguous, writable BGR array (one copy)."""
    upright = _UPRIGHT.get(orientation)
    if arr.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(upright(arr)) if upright else arr, cv2.COLOR_GRAY2BGR)
    if upright is None:
        return cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    return np.ascontiguousarray(upright(arr)[:, :, ::-1])


def _decode_at(
    data: bytes, max_pixels: int, budget: DecodeBudget, preview_side: int | None, scale: int | None
) -> tuple[np.ndarray, tuple[int, int], int | None]:
    """``(upright BGR pixels, original upright size, the budget's JPEG scale when a preview was decoded)``."""
    with _decoding():
        img = _open(data, max_pixels)
        w, h = img.size
        fine, preview = _plan(img, data, budget, preview_side) if scale is None else (scale, None)
        use = preview or fine
        if use > 1:
            img.draft(img.mode, (math.ceil(w / use), math.ceil(h / use)))
        img.load()  # the first frame only
        orientation = int(img.getexif().get(0x0112, 1) or 1)
        if img.mode.startswith("I;16"):  # 8 bits first: Pillow resizes 16-bit slowly
            img = _to_8bit(img)
        img = _shrink(img, budget.pixels)
        img = _to_8bit(img)
        arr = np.asarray(img)
        del img  # the 8-bit copy in ``arr`` is all that is left
        pixels = _to_bgr(arr, orientation)
    size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    return pixels, size, (fine if preview else None)


def decode(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    budget: DecodeBudget | None = None,
    preview_side: int | None = None,
) -> DecodedImage:
    """Decode ``data`` within ``budget``; with ``preview_side``, a JPEG over the budget as a refinable preview."""
    if not data:
        raise BadImageError("the file is empty")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"the file is {len(data)} bytes; the limit is {max_bytes}")
    budget = budget or DecodeBudget()
    pixels, (width, height), fine = _decode_at(data, max_pixels, budget, preview_side, None)
    if fine is None:
        return DecodedImage(pixels, width, height)
    return DecodedImage(pixels, width, height, lambda: _decode_at(data, max_pixels, budget, None, fine)[0])


def decode_image(data: bytes, **limits) -> np.ndarray:
    """Decode ``data`` to an ``(H, W, 3)`` BGR uint8 array, upright per EXIF, reduced to the decode budget."""
    return decode(data, **limits).pixels


def read_file(path: str | Path) -> bytes:
    """The bytes of an image file; unreadable files raise :class:`BadImageError`."""
    p = Path(path)
    try:
        return p.read_bytes()
    except IsADirectoryError as exc:
        raise BadImageError(f"{p} is a directory, not an image") from exc
    except OSError as exc:
        raise BadImageError(f"cannot read {p}: {exc.strerror or exc}") from exc


def read_image(path: str | Path, **limits) -> np.ndarray:
    """Read and decode an image file; unreadable files raise :class:`BadImageError`."""
    return decode_image(read_file(path), **limits)


def encode_png(image_bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image_bgr)
    if not ok:  # pragma: no cover
        raise BadImageError("could not encode image")
    return buf.tobytes()


# --- admission ------------------------------------------------------------------------------------
#: who the current thread decodes for (the API sets a client id per request); ``None``: nobody in particular
decode_owner: ContextVar[Hashable | None] = ContextVar("decode_owner", default=None)


class DecodeGate:
    """At most ``max_concurrent`` threads hold decoded pixels at once; up to ``max_queued`` more wait for a slot.

    :meth:`slot` is a context manager, re-entrant within a thread (nested uses share one slot).  A request
    that finds the queue full, or waits ``wait_s`` seconds without a slot, gets
    :class:`~modules.errors.ServiceBusyError` (503) with a ``retry_after`` estimated from how long slots have
    recently been held and how many requests are queued.  ``max_queued=None``: no bound on the queue; a
    callable: the bound now (e.g. the server's threads not taken by other long work).
    One owner (:data:`decode_owner`: an API key or client address) holds at most ``per_owner`` slots
    (default: all but one), so a client sending many large images at once cannot take every slot.
    """

    def __init__(self, max_concurrent: int, wait_s: float, max_queued: int | Callable[[], int] | None = None,
                 per_owner: int | None = None):
        if max_concurrent < 1 or wait_s < 0 or (isinstance(max_queued, int) and max_queued < 0):
            raise ValueError("max_concurrent must be at least 1, wait_s and max_queued not negative")
        self.max_concurrent, self.wait_s, self.max_queued = max_concurrent, wait_s, max_queued
        self.per_owner = max(1, per_owner if per_owner is not None else max_concurrent - 1)
        self._cond = threading.Condition()
        self._held = 0
        self._by_owner: Counter[Hashable] = Counter()
        self._mine = threading.local()
        self._waiting = 0
        self._mean_hold_s = 0.5

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot now."""
        return self._waiting

    @property
    def queue_bound(self) -> int | None:
        """How many requests may wait for a slot now (``None``: any number)."""
        return self.max_queued() if callable(self.max_queued) else self.max_queued

    def _busy(self, why: str) -> ServiceBusyError:
        after = self.retry_after()
        return ServiceBusyError(
            f"the server is busy decoding other images ({why}); retry in {after} s",
            details={"retry_after_s": after}, retry_after=after,
        )

    def _free(self, owner: Hashable | None) -> bool:
        return self._held < self.max_concurrent and (owner is None or self._by_owner[owner] < self.per_owner)

    def _acquire(self, owner: Hashable | None) -> None:
        with self._cond:
            if not self._free(owner):
                bound = self.queue_bound
                if bound is not None and self._waiting >= bound:
                    raise self._busy(f"{self.max_concurrent} at once and {bound} waiting")
                self._waiting += 1
                try:
                    got = self._cond.wait_for(lambda: self._free(owner), timeout=self.wait_s)
                finally:
                    self._waiting -= 1
                if not got:
                    raise self._busy(f"no decoding slot came free in {self.wait_s:g} s")
            self._held += 1
            if owner is not None:
                self._by_owner[owner] += 1

    def _release(self, owner: Hashable | None, held: float) -> None:
        with self._cond:
            self._held -= 1
            if owner is not None:
                self._by_owner[owner] -= 1
                if self._by_owner[owner] <= 0:
                    del self._by_owner[owner]
            self._mean_hold_s = 0.8 * self._mean_hold_s + 0.2 * held
            self._cond.notify_all()

    @contextmanager
    def slot(self) -> Iterator[None]:
        depth = getattr(self._mine, "depth", 0)
        if depth:
            self._mine.depth = depth + 1
            try:
                yield
            finally:
                self._mine.depth = depth
            return
        owner = decode_owner.get()
        self._acquire(owner)
        self._mine.depth = 1
        t0 = time.monotonic()
        try:
            yield
        finally:
            self._mine.depth = 0
            self._release(owner, time.monotonic() - t0)

    def retry_after(self) -> int:
        """Seconds after which a slot is likely free: the mean hold time times the queue per slot (1..60)."""
        with self._cond:
            queued, hold = self._waiting, self._mean_hold_s
        return max(1, min(60, math.ceil(hold * (1 + queued / self.max_concurrent))))


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def list_people_dir(people_dir: Path) -> dict[str, list[Path]]:
    """``<name>/<images>`` -> {name: [image paths]} (sorted; hidden files skipped)."""
    if not people_dir.is_dir():
        raise InvalidRequestError(f"people folder not found: {people_dir}")
    out: dict[str, list[Path]] = {}
    for sub in sorted(p for p in people_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        imgs = sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if imgs:
            out[sub.name] = imgs
    if not out:
        raise InvalidRequestError(f"{people_dir} holds no <name>/<images> folders")
    return out

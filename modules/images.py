"""Decoding untrusted image bytes into BGR uint8 arrays, safely.

Handles what real uploads contain: EXIF-rotated phone photos, grayscale,
RGBA/palette images with transparency, 16-bit PNGs, CMYK JPEGs, animated
GIFs (first frame).  Refuses, with a typed error, empty or truncated files,
non-images, unsupported formats and decompression bombs (the declared pixel
count is checked before any pixel is decoded).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadImageError, ImageTooLargeError, InvalidRequestError, UnsupportedMediaError

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000  # e.g. 8000x5000
SUPPORTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"}


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode ``data`` to an ``(H, W, 3)`` BGR uint8 array, upright per EXIF."""
    if not data:
        raise BadImageError("the file is empty")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"the file is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            if fmt not in SUPPORTED_FORMATS:
                raise UnsupportedMediaError(
                    f"image format {fmt} is not supported; use one of {', '.join(sorted(SUPPORTED_FORMATS))}"
                )
            w, h = img.size
            if w <= 0 or h <= 0:
                raise BadImageError(f"the image declares an empty size {w}x{h}")
            if w * h > max_pixels:
                raise ImageTooLargeError(f"the image is {w}x{h} pixels; the limit is {max_pixels} pixels")
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"the image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadImageError("the file is not a decodable image") from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise BadImageError(f"the image could not be decoded (truncated or corrupt): {exc}") from exc
    arr = np.asarray(rgb, dtype=np.uint8)
    return np.ascontiguousarray(arr[:, :, ::-1])


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
    import cv2

    ok, buf = cv2.imencode(".png", image_bgr)
    if not ok:  # pragma: no cover
        raise BadImageError("could not encode image")
    return buf.tobytes()


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

"""Bad and unusual image input: a typed error or a correct result, never a crash."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from modules.errors import BadImageError, ImageTooLargeError, UnsupportedMediaError
from modules.images import decode_image, read_image


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def obama_bytes(fr_images) -> bytes:
    return (fr_images / "obama.jpg").read_bytes()


def test_zero_byte_file_is_bad_image():
    with pytest.raises(BadImageError, match="empty"):
        decode_image(b"")


def test_text_is_not_an_image():
    with pytest.raises(BadImageError, match="not a decodable image"):
        decode_image(b"hello, this is not an image at all" * 10)


def test_truncated_jpeg_is_bad_image(obama_bytes):
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        decode_image(obama_bytes[: len(obama_bytes) // 2])


def test_unsupported_format_is_415():
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "ICO")  # an image Pillow reads, but not a photo format we accept
    with pytest.raises(UnsupportedMediaError) as exc:
        decode_image(buf.getvalue())
    assert exc.value.status == 415


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size but carries almost no data (a decompression bomb)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("w,h", [(30000, 30000), (100000, 100000)])
def test_decompression_bomb_is_refused_before_decoding(w, h):
    with pytest.raises(ImageTooLargeError) as exc:
        decode_image(_png_header_only(w, h))
    assert exc.value.status == 413


def test_byte_limit():
    with pytest.raises(ImageTooLargeError):
        decode_image(b"\xff" * 2000, max_bytes=1000)


def test_grayscale_becomes_three_channels(obama_bytes):
    gray = Image.open(io.BytesIO(obama_bytes)).convert("L")
    out = decode_image(_jpeg(gray))
    assert out.shape[2] == 3 and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 1])


def test_rgba_png_is_composited(fr_images):
    out = read_image(fr_images / "tests_32bit.png")
    assert out.ndim == 3 and out.shape[2] == 3


def test_sixteen_bit_png_is_scaled_not_clipped():
    arr = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    out = decode_image(buf.getvalue())
    assert out.shape == (64, 64, 3)
    assert out.max() == 255 and out.min() == 0  # full range, not saturated at 255


def test_cmyk_and_palette_images(obama_bytes):
    img = Image.open(io.BytesIO(obama_bytes))
    assert decode_image(_jpeg(img.convert("CMYK"))).shape[2] == 3
    buf = io.BytesIO()
    img.convert("P").save(buf, "GIF")
    assert decode_image(buf.getvalue()).shape[2] == 3


def test_exif_rotated_photo_is_upright_and_its_face_found(recognizer, obama_bytes):
    upright = Image.open(io.BytesIO(obama_bytes)).convert("RGB")
    # store the pixels rotated and say so in EXIF (Orientation=6: rotate 90 CW to view)
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _jpeg(stored, exif=exif.tobytes(), quality=95)
    out = decode_image(data)
    assert out.shape[:2] == (upright.height, upright.width)
    faces = recognizer.detect(out)
    ref = recognizer.detect(decode_image(_jpeg(upright, quality=95)))
    assert len(faces) == 1 and len(ref) == 1
    assert np.allclose(faces[0].box, ref[0].box, atol=6)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BadImageError):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(BadImageError):
        read_image(tmp_path)

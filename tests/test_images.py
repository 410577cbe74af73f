"""Bad, unusual and hostile image input: a typed error or a correct result within the decode budget, never a crash."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from benchmarks.hostile_memory import jpeg_bomb, png16_bomb, upscaled_jpeg
from modules.errors import BadImageError, ImageTooLargeError, ServiceBusyError, UnsupportedMediaError
from modules.images import DecodeBudget, DecodedImage, DecodeGate, decode, decode_cost, decode_image, read_image


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


# --- the decode budget ------------------------------------------------------------------------------


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def test_bomb_jpeg_preview_is_detection_sized_and_refines_within_the_budget():
    data = jpeg_bomb(6400, 6200)
    assert len(data) < 1000
    img = decode(data, preview_side=800)
    assert (img.width, img.height) == (6400, 6200)
    assert img.pixels.shape == (775, 800, 3)  # 1/8 scale, straight from the decoder
    assert img.refine is not None
    fine = img.refined()
    assert fine.pixels.shape == (3100, 3200, 3)  # 1/2 scale: the largest that fits 16 Mpx
    assert fine.scale == (0.5, 0.5)
    assert decode_image(data).shape == (3100, 3200, 3)  # without a preview: the budget's resolution
    assert decode(data, budget=DecodeBudget(pixels=50_000_000)).pixels.shape == (6200, 6400, 3)


def test_photos_within_the_budget_keep_their_full_resolution(obama_bytes):
    img = decode(obama_bytes, preview_side=800)
    assert img.refine is None and img.scale == (1.0, 1.0)
    phone = _jpeg(Image.new("RGB", (4032, 3024), (90, 120, 150)))  # a 12 Mpx phone photo
    assert decode(phone, preview_side=800).pixels.shape == (3024, 4032, 3)


def test_other_formats_are_reduced_by_an_integer_factor_after_decoding():
    out = decode(_png(Image.new("RGB", (3000, 2000), (10, 200, 30))), budget=DecodeBudget(pixels=1_000_000))
    assert out.pixels.shape == (667, 1000, 3) and (out.width, out.height) == (3000, 2000)  # factor 3
    assert tuple(out.pixels[5, 5]) == (30, 200, 10)
    # palette images are converted before they are averaged: indices 0 and 2 must not average to index 1
    checker = (np.indices((100, 200)).sum(axis=0) % 2 * 2).astype(np.uint8)
    pal = Image.fromarray(checker, "P")
    pal.putpalette([0, 0, 0, 0, 255, 0, 200, 0, 0] + [0] * 759)
    out = decode(_png(pal), budget=DecodeBudget(pixels=5_000))
    assert out.pixels.shape == (50, 100, 3) and tuple(out.pixels[3, 3]) == (0, 0, 100)


def test_cost_counts_bytes_per_sample_webp_canvases_and_progressive_coefficients():
    def opened(data: bytes) -> Image.Image:
        return Image.open(io.BytesIO(data))

    rgb = Image.new("RGB", (1000, 800), (1, 2, 3))
    assert decode_cost(opened(_png(rgb)), b"") == 1000 * 800 * 4
    assert decode_cost(opened(_png(rgb.convert("L"))), b"") == 1000 * 800
    sixteen = _png(Image.fromarray(np.zeros((800, 1000), np.uint16)))
    assert decode_cost(opened(sixteen), sixteen) == 1000 * 800 * 3  # 2 bytes a sample + the 8-bit copy
    buf = io.BytesIO()
    rgb.save(buf, "WEBP", lossless=True)
    assert decode_cost(opened(buf.getvalue()), buf.getvalue()) == 1000 * 800 * 16
    base, prog = _jpeg(rgb, quality=90), _jpeg(rgb, quality=90, progressive=True)
    assert decode_cost(opened(base), base) == 1000 * 800 * 4
    # 4:2:0: 1.5 samples a pixel, 2 bytes each, at full size even when decoded at 1/8
    assert decode_cost(opened(prog), prog, scale=8) == 125 * 100 * 4 + 1000 * 800 * 3


def test_over_budget_images_are_refused_before_decoding():
    # the PNG carries no pixel data: reaching the decoder would fail as truncated, not as too large
    with pytest.raises(ImageTooLargeError, match="decode budget is 64 MB"):
        decode(_png_header_only(5000, 4000), budget=DecodeBudget(raster_bytes=64 * 1024 * 1024))
    data = png16_bomb(6300)
    with pytest.raises(ImageTooLargeError, match="would take 114 MB"):
        decode(data, budget=DecodeBudget(raster_bytes=100 * 1024 * 1024))
    # a progressive JPEG whose coefficients alone exceed the budget cannot be rescued by scaling
    prog = _jpeg(Image.new("RGB", (3000, 2000)), progressive=True)
    with pytest.raises(ImageTooLargeError, match="even at 1/8 scale"):
        decode(prog, budget=DecodeBudget(raster_bytes=10 * 1024 * 1024))


def test_sixteen_bit_in_both_byte_orders_becomes_its_high_byte():
    arr = (np.arange(300 * 40).reshape(40, 300) * 5).astype(np.uint16)
    little = _png(Image.fromarray(arr))
    big = Image.frombytes("I;16B", (300, 40), arr.astype(">u2").tobytes())
    buf = io.BytesIO()
    big.save(buf, "TIFF")
    for data in (little, buf.getvalue()):
        out = decode_image(data)
        assert np.array_equal(out[..., 0], (arr >> 8).astype(np.uint8))


def test_a_large_sixteen_bit_png_is_reduced_without_a_float_copy():
    out = decode(png16_bomb(6300))
    assert out.pixels.shape == (3150, 3150, 3) and (out.width, out.height) == (6300, 6300)
    assert out.pixels.max() == 0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(orientation):
    from PIL import ImageOps

    rng = np.random.default_rng(orientation)
    stored = Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _png(stored, exif=exif.tobytes())
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))[:, :, ::-1]
    out = decode(data)
    assert np.array_equal(out.pixels, ref)
    assert (out.height, out.width) == ref.shape[:2]


def test_only_the_first_frame_of_an_animation_is_read():
    frames = [Image.new("RGB", (64, 48), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    gif = buf.getvalue()
    second = gif.index(b"\x21\xf9\x04", gif.index(b"\x21\xf9\x04") + 1)  # the second frame's control block
    broken = gif[:second] + b"\x2c" + b"\xff" * 64  # later frames corrupt: never read, so never a failure
    assert tuple(decode_image(broken)[10, 10]) == (0, 0, 255)
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 3
    assert tuple(decode_image(buf.getvalue())[10, 10]) == (0, 0, 255)


def test_to_original_moves_faces_into_the_original_pixels():
    from modules.face import Face

    img = DecodedImage(np.zeros((100, 200, 3), np.uint8), 800, 400)
    face = Face(box=np.array([10, 20, 50, 60], np.float32), landmarks=np.full((5, 2), 30, np.float32),
                det_score=0.9)
    img.to_original([face])
    assert face.box.tolist() == [40, 80, 200, 240] and face.landmarks[0].tolist() == [120, 120]


# --- faces in large images: original coordinates, crops at the budget's resolution ---------------------
def test_upscaled_photo_is_detected_in_original_coordinates_and_cropped_at_the_budget(recognizer, fr_images):
    photo = (fr_images / "obama2.jpg").read_bytes()  # 626x1200
    big = upscaled_jpeg(photo, 5)  # 3130x6000, 18.8 Mpx: over the 16 Mpx budget
    ref = recognizer.detect(photo)
    faces = recognizer.detect(big)
    assert len(ref) == len(faces) == 1
    assert np.allclose(faces[0].box, ref[0].box * 5, atol=0.03 * ref[0].width * 5)
    assert np.allclose(faces[0].landmarks, ref[0].landmarks * 5, atol=0.03 * ref[0].width * 5)
    img, found = recognizer.find_faces(big)
    assert len(found) == 1 and img.pixels.shape[:2] == (3000, 1565)  # the crops come from the 1/2-scale decode, not the preview
    ref_face = recognizer.embed_image(photo)
    big_face = recognizer.embed_image(big)
    assert np.allclose(big_face.box, ref_face.box * 5, atol=0.03 * ref_face.width * 5)
    assert float(big_face.embedding @ ref_face.embedding) > 0.9


def test_min_face_size_counts_original_pixels(recognizer, fr_images):
    from modules.recognizer import FaceRecognizer

    photo = (fr_images / "obama2.jpg").read_bytes()
    big = upscaled_jpeg(photo, 5)
    face = recognizer.detect(big)[0]
    strict = FaceRecognizer(recognizer.config.model_copy(update={"detector": recognizer.config.detector.model_copy(
        update={"min_face_size": int(face.size * 0.8)})}), detector=None, embedder=recognizer.embedder)
    assert len(strict.detect(big)) == 1  # measured on the preview it would be 4x smaller


# --- admission --------------------------------------------------------------------------------------
def test_gate_admits_max_concurrent_is_reentrant_and_refuses_with_retry_after():
    import threading

    gate = DecodeGate(1, wait_s=0.0)
    with gate.slot(), gate.slot():  # nested in one thread: one slot
        errors: list[BaseException] = []

        def other():
            try:
                with gate.slot():
                    pass
            except ServiceBusyError as exc:
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and errors[0].status == 503 and errors[0].retry_after >= 1
    assert errors[0].details["retry_after_s"] == errors[0].retry_after
    with gate.slot():  # free again
        pass


def test_gate_queue_bound_refuses_at_once():
    import threading
    import time

    gate = DecodeGate(1, wait_s=30.0, max_queued=1)
    release, queued = threading.Event(), threading.Event()
    results: list[str] = []

    def holder():
        with gate.slot():
            queued.wait(10)
            release.wait(10)

    def waiter():
        with gate.slot():
            results.append("waited")

    h = threading.Thread(target=holder)
    h.start()
    time.sleep(0.05)
    w = threading.Thread(target=waiter)
    w.start()
    deadline = time.monotonic() + 5
    while gate.waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    queued.set()
    t0 = time.monotonic()
    with pytest.raises(ServiceBusyError, match="1 waiting"), gate.slot():
        pass
    assert time.monotonic() - t0 < 1.0  # refused at once, not after wait_s
    release.set()
    h.join()
    w.join()
    assert results == ["waited"]

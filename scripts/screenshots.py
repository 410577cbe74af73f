#!/usr/bin/env python
"""Screenshots of the browser pages for the docs (docs/screenshots/*.png).

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--shared-data ../shared/data]

Starts the app (API + video jobs + pages) on a loopback port with a fresh data
directory, enrolls six people from the shared dev data through the API, then
drives Debian's Chromium (Playwright, ``executable_path``) through the gallery,
photo, video and webcam pages (the webcam is Chromium's fake camera playing a
photo) and saves palette PNGs (small enough to commit).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


#: person -> photos (relative to face_recognition_examples/)
PEOPLE = {
    "barack_obama": ["images/obama.jpg", "images/obama2.jpg"],
    "joe_biden": ["images/biden.jpg", "images/knn_train__biden__biden2.jpg"],
    "lin_manuel_miranda": ["video_short_hamilton_clip/enroll/lin_manuel_miranda.png"],
    "alex_lacamoire": ["video_short_hamilton_clip/enroll/alex_lacamoire.png", "images/knn_train__alex_lacamoire__img1.jpg"],
    "kit_harington": ["images/knn_train__kit_harington__john1.jpeg", "images/knn_train__kit_harington__john2.jpeg"],
    "rose_leslie": ["images/knn_train__rose_leslie__img1.jpg", "images/knn_train__rose_leslie__img2.jpg"],
}


def chromium_path() -> str:
    for cand in (os.environ.get("FACEREC_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if cand and Path(cand).is_file():
            return cand
    sys.exit("no chromium found: run scripts/install_browser.sh (or set FACEREC_CHROMIUM)")


def fake_camera(photo: Path, dest: Path) -> Path:
    """A still photo, letterboxed to 640x480, as a Y4M file for Chromium's fake camera."""
    import cv2
    import numpy as np

    img = cv2.imread(str(photo))
    W, H = 640, 480
    s = min(W / img.shape[1], H / img.shape[0])
    r = cv2.resize(img, (int(img.shape[1] * s) // 2 * 2, int(img.shape[0] * s) // 2 * 2))
    frame = np.zeros((H, W, 3), np.uint8)
    y, x = (H - r.shape[0]) // 2, (W - r.shape[1]) // 2
    frame[y : y + r.shape[0], x : x + r.shape[1]] = r
    yuv = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes()
    with open(dest, "wb") as fh:
        fh.write(f"YUV4MPEG2 W{W} H{H} F5:1 Ip A1:1 C420jpeg\n".encode())
        fh.writelines(b"FRAME\n" + yuv for _ in range(5))
    return dest


def shrink(path: Path, max_height: int | None = None, colors: int = 128) -> int:
    """Crop to ``max_height`` and store as an optimized palette PNG; returns the size in bytes."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if max_height and im.height > max_height:
            im = im.crop((0, 0, im.width, max_height))
        im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, optimize=True
        )
    return path.stat().st_size


def enroll(url: str, fr_dir: Path) -> None:
    import requests

    for person, rels in PEOPLE.items():
        files = [("file", (Path(r).name, (fr_dir / r).read_bytes())) for r in rels]
        r = requests.post(f"{url}/api/v1/galleries/default/people/{person}/faces", files=files, timeout=60)
        r.raise_for_status()


def take(page, out: Path, name: str, *, full_page: bool = True, max_height: int | None = None) -> None:
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    size = shrink(path, max_height)
    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {size // 1024} KB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    args = ap.parse_args(argv)
    fr_dir = args.shared_data / "face_recognition_examples"
    clip = fr_dir / "video_short_hamilton_clip" / "short_hamilton_clip.mp4"
    if not clip.is_file():
        sys.exit(f"the shared dev data is not in {args.shared_data}")
    args.out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    from modules.settings import Settings
    from modules.web import create_app
    from modules.ui.server import CHROMIUM_ARGS, close_app, serve_in_thread

    with tempfile.TemporaryDirectory(prefix="facerec-shots-") as tmp:
        tmp = Path(tmp)
        app = create_app(Settings(data_dir=tmp / "data"))
        srv = serve_in_thread(app)
        url = srv.url
        try:
            enroll(url, fr_dir)
            camera = fake_camera(fr_dir / "images" / "knn_test__kit_with_rose.jpg", tmp / "camera.y4m")
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=chromium_path(),
                    headless=True,
                    args=[*CHROMIUM_ARGS, "--hide-scrollbars", f"--use-file-for-fake-video-capture={camera}"],
                )
                ctx = browser.new_context(viewport={"width": 1024, "height": 768})
                ctx.set_default_timeout(60_000)
                page = ctx.new_page()

                # gallery
                page.goto(url + "/ui/gallery")
                page.wait_for_selector('.person[data-person="rose_leslie"] img.crop[src^="blob:"]')
                page.wait_for_timeout(800)  # the last crops decode
                take(page, args.out, "gallery", max_height=1000)

                # photo: names, similarity and two attributes drawn on the picture
                page.goto(url + "/ui/photo")
                page.wait_for_selector("#gallery-select option", state="attached")
                for attr in ("age", "pose"):
                    page.check(f'input[name="attributes"][value="{attr}"]')
                page.set_input_files("#photo-file", str(fr_dir / "images" / "two_people.jpg"))
                page.wait_for_selector("#photo-result:not([hidden])")
                take(page, args.out, "photo", max_height=940)

                # video: progress, annotated video, timeline
                page.goto(url + "/ui/video")
                page.wait_for_selector("#gallery-select option", state="attached")
                page.set_input_files("#video-file", str(clip))
                page.click("#video-submit")
                page.wait_for_selector("#timeline-panel:not([hidden])", timeout=180_000)
                # the finished job's annotated video, paused on a frame of the Miranda close-up
                page.wait_for_selector("#annotated:not([hidden])")
                page.eval_on_selector("#annotated", "v => { v.muted = true; v.currentTime = 5.0; }")
                page.wait_for_function("() => { const v = document.querySelector('#annotated');"
                                       " return v.readyState >= 2 && !v.seeking && v.currentTime >= 4.9; }")
                page.wait_for_timeout(500)
                take(page, args.out, "video", max_height=1500)

                # webcam: the fake camera plays knn_test__kit_with_rose.jpg
                page.goto(url + "/ui/webcam")
                page.wait_for_selector("#gallery-select option", state="attached")
                page.click("#webcam-start")
                page.wait_for_selector("#webcam-overlay[data-names*=kit_harington]", state="attached")
                page.wait_for_timeout(1500)
                take(page, args.out, "webcam", max_height=960)
                page.click("#webcam-stop")
                ctx.close()

                # a phone: the video timeline at 390 px
                phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1,
                                            is_mobile=True, has_touch=True)
                page = phone.new_page()
                page.goto(url + "/ui/video")
                page.wait_for_selector("#jobs li a")
                page.click("#jobs li a")
                page.wait_for_selector("#timeline-panel:not([hidden])")
                page.wait_for_timeout(1500)
                take(page, args.out, "phone-video", max_height=1700)
                phone.close()
                browser.close()
        finally:
            srv.close()
            close_app(app)
    total = sum(p.stat().st_size for p in args.out.glob("*.png"))
    print(f"total {total // 1024} KB in {args.out}")
    return 0


if __name__ == "__main__":
    t0 = time.monotonic()
    rc = main()
    print(f"{time.monotonic() - t0:.0f} s")
    sys.exit(rc)

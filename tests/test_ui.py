"""The browser pages (modules/ui), end to end in a real headless Chromium driven by Playwright.

Chromium is Debian's ``chromium`` package (``scripts/install_browser.sh``), never
a Playwright download: ``executable_path`` points at it (``$FACEREC_CHROMIUM``
or ``chromium`` on the PATH).  Under ``CI=true`` a missing browser or
``playwright`` package fails the module; elsewhere it is skipped.

The app (API + video jobs + pages) is served by waitress over loopback on a
thread, on the session's models; each test opens a fresh browser context
(empty ``sessionStorage``).  The pages keep their Content-Security-Policy, so
waits use selectors (``data-*`` attributes the pages set), not string
predicates that the policy would refuse to evaluate.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from modules.ui.server import CHROMIUM_ARGS

IN_CI = os.environ.get("CI", "").lower() == "true"
CLIP_DIR = Path("face_recognition_examples") / "video_short_hamilton_clip"
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 30_000
VIDEO_TIMEOUT_MS = 90_000


def _missing(msg: str):
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def chromium_path() -> str | None:
    for cand in (os.environ.get("FACEREC_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


@contextmanager
def launched_chromium(*extra_args: str) -> Iterator[Any]:
    """Debian's chromium driven by Playwright, with a fresh temporary profile (user-data dir)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install playwright)")
    path = chromium_path()
    if path is None:
        _missing("no chromium executable (run scripts/install_browser.sh, or set FACEREC_CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield b
        finally:
            b.close()


# --- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_dir(shared_data) -> Path:
    d = shared_data / CLIP_DIR
    if not d.is_dir():
        _missing(f"the labelled clip is not in {d}")
    return d


@pytest.fixture(scope="module")
def fake_camera(images, tmp_path_factory) -> Path:
    """two_people.jpg (Obama and Biden) letterboxed to 640x480, as a Y4M file for Chromium's fake camera."""
    import cv2
    import numpy as np

    img = cv2.imread(str(images / "two_people.jpg"))
    W, H = 640, 480
    s = min(W / img.shape[1], H / img.shape[0])
    r = cv2.resize(img, (int(img.shape[1] * s) // 2 * 2, int(img.shape[0] * s) // 2 * 2))
    frame = np.zeros((H, W, 3), np.uint8)
    y, x = (H - r.shape[0]) // 2, (W - r.shape[1]) // 2
    frame[y : y + r.shape[0], x : x + r.shape[1]] = r
    yuv = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes()
    path = tmp_path_factory.mktemp("camera") / "camera.y4m"
    with open(path, "wb") as fh:
        fh.write(f"YUV4MPEG2 W{W} H{H} F5:1 Ip A1:1 C420jpeg\n".encode())
        fh.writelines(b"FRAME\n" + yuv for _ in range(5))
    return path


@pytest.fixture(scope="module")
def browser(fake_camera):
    with launched_chromium(f"--use-file-for-fake-video-capture={fake_camera}") as b:
        yield b


def _serve(api_models, data_dir: Path, **settings):
    from modules.settings import Settings
    from modules.web import create_app
    from modules.ui.server import serve_in_thread

    app = create_app(Settings(data_dir=data_dir, **settings), recognizer=api_models, TESTING=True)
    return app, serve_in_thread(app)


@pytest.fixture(scope="module")
def server(api_models, tmp_path_factory):
    """The app with keys off: (app, base URL)."""
    from modules.ui.server import close_app

    app, srv = _serve(api_models, tmp_path_factory.mktemp("ui") / "data")
    yield app, srv.url
    srv.close()
    close_app(app)


@pytest.fixture(scope="module")
def keyed_server(api_models, tmp_path_factory):
    """The app with API keys on: (app, base URL, a key for the default gallery)."""
    from modules.ui.server import close_app

    app, srv = _serve(api_models, tmp_path_factory.mktemp("ui-keys") / "data", api_keys=True)
    key, _ = app.extensions["facerec"].keys.create(["default"], label="ui test")
    yield app, srv.url, key
    srv.close()
    close_app(app)


@pytest.fixture()
def people(server, images, clip_dir):
    """The people the photo, video and webcam pages look for, enrolled server-side if an earlier test has not.

    The gallery test enrolls the same photos through the page; this keeps every test runnable on its own.
    """
    app, _ = server
    svc = app.extensions["facerec"]
    have = {p.name for p in svc.gallery.list_people("default", offset=0, limit=1000)[0]} if (
        "default" in {g.name for g in svc.gallery.list_galleries()}) else set()
    photos = {
        "barack_obama": [images / "obama.jpg", images / "obama2.jpg"],
        "lin_manuel_miranda": [clip_dir / "enroll" / "lin_manuel_miranda.png"],
        "alex_lacamoire": [clip_dir / "enroll" / "alex_lacamoire.png"],
    }
    for name, files in photos.items():
        if name not in have:
            svc.recognizer.enroll("default", name, [f.read_bytes() for f in files], sources=[f.name for f in files])
    return server


@pytest.fixture()
def new_page(browser):
    """new_page(**context_options) -> a page in a fresh context; uncaught page errors fail the test."""
    contexts = []
    errors: list[str] = []  # uncaught JavaScript exceptions

    def _new(**opts):
        ctx = browser.new_context(accept_downloads=True, **opts)
        ctx.set_default_timeout(TIMEOUT_MS)
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("dialog", lambda d: d.accept())  # confirm() of the delete buttons
        return page

    yield _new
    for ctx in contexts:
        ctx.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def _enroll(page, name: str, *photos: Path) -> None:
    page.fill("#person-name", name)
    page.set_input_files("#person-photos", [str(p) for p in photos])
    page.click("#add-person")
    # the card, with its crops fetched (with the key when keys are on) and decoded
    page.wait_for_selector(f'.person[data-person="{name}"] img.crop[src^="blob:"]')
    crops = page.locator(f'.person[data-person="{name}"] img.crop')
    _poll(page, lambda: all(w > 0 for w in crops.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")),
          f"the face crops of {name} did not load")


def _poll(page, check, what: str, timeout_ms: int = TIMEOUT_MS) -> None:
    """Wait until ``check()`` is true (page.wait_for_function would need eval, which the pages' CSP forbids)."""
    for _ in range(max(1, timeout_ms // 100)):
        if check():
            return
        page.wait_for_timeout(100)
    raise AssertionError(what)


def _no_horizontal_overflow(page) -> None:
    sw, cw = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert sw <= cw, f"{page.url}: the page is {sw}px wide in a {cw}px viewport"


def _alert_text(page) -> str:
    page.wait_for_selector("#alert:not([hidden])")
    return page.inner_text("#alert-text")


# --- tests -----------------------------------------------------------------------------------
def test_pages_are_public_served_locally_and_not_in_the_spec(make_app):
    """No browser needed: the blueprint itself (keys on, so every page must be public)."""
    from modules.ui import register_ui

    app = register_ui(make_app(api_keys=True))
    register_ui(app)  # idempotent
    c = app.test_client()
    r = c.get("/")
    assert r.status_code == 302 and r.headers["Location"].endswith("/ui/gallery")
    for path in ("/ui/gallery", "/ui/photo", "/ui/video", "/ui/webcam"):
        r = c.get(path)
        assert r.status_code == 200 and r.mimetype == "text/html", path
        html = r.get_data(as_text=True)
        assert 'data-keys-required="true"' in html
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        # nothing from elsewhere: every script and stylesheet is ours
        assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    # without the video blueprint the video page says so instead of failing
    video_page = c.get("/ui/video").get_data(as_text=True)
    assert ("Video processing is not enabled" in video_page) == ("videos" not in app.blueprints)
    for name in ("app.css", "common.js", "gallery.js", "photo.js", "video.js", "webcam.js"):
        r = c.get(f"/ui/static/{name}")
        assert r.status_code == 200 and r.data, name
    assert c.get("/ui/static/../__init__.py").status_code == 404
    assert c.get("/ui/static/nope.js").status_code == 404
    assert c.get("/api/v1/galleries").status_code == 401  # the API itself still needs the key
    paths = c.get("/openapi.json").get_json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")]


def test_gallery_add_rename_delete_person(server, new_page, images, clip_dir):
    _, url = server
    page = new_page()
    page.goto(url + "/")
    assert page.url.endswith("/ui/gallery")
    _enroll(page, "barack_obama", images / "obama.jpg", images / "obama2.jpg")
    assert page.locator('.person[data-person="barack_obama"] img.crop').count() == 2
    assert "Added barack_obama with 2 faces" in page.inner_text("#notice")
    enroll = clip_dir / "enroll"
    _enroll(page, "lin_manuel_miranda", enroll / "lin_manuel_miranda.png")
    _enroll(page, "alex_lacamoire", enroll / "alex_lacamoire.png")
    # rename, then delete, a person
    _enroll(page, "jo", images / "biden.jpg")
    card = page.locator('.person[data-person="jo"]')
    card.get_by_role("button", name="Rename").click()
    card.locator(".rename-form input").fill("joe_biden")
    card.locator(".rename-form").get_by_role("button", name="Save").click()
    page.wait_for_selector('.person[data-person="joe_biden"]')
    assert page.locator('.person[data-person="jo"]').count() == 0
    page.locator('.person[data-person="joe_biden"]').get_by_role("button", name="Delete", exact=True).click()
    page.wait_for_selector('.person[data-person="joe_biden"]', state="detached")
    assert "People in default (3)" in page.inner_text("#people-title")


def test_photo_shows_names_boxes_attributes_and_json(people, new_page, images):
    _, url = people
    page = new_page()
    page.goto(url + "/ui/photo")
    page.wait_for_selector("#gallery-select option", state="attached")
    page.check('input[name="attributes"][value="age"]')
    page.set_input_files("#photo-file", str(images / "obama2.jpg"))  # not one of the enrolled photos
    page.wait_for_selector("#photo-result:not([hidden])")
    item = page.locator('.face-item[data-name="barack_obama"]')
    assert item.count() == 1
    assert "age ~" in item.inner_text()
    canvas = page.locator("#photo-canvas")
    assert canvas.get_attribute("data-names") == "barack_obama"
    assert "barack_obama" in canvas.get_attribute("aria-label")
    # the photo was drawn (the canvas is not blank)
    drawn = canvas.evaluate(
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0; for (let i = 0; i < d.length; i += 4 * 97) if (d[i] || d[i + 1] || d[i + 2]) n++;
                  return n; }"""
    )
    assert drawn > 100
    page.click("#json-details summary")
    assert '"name": "barack_obama"' in page.inner_text("#photo-json")


def test_invalid_uploads_show_plain_errors(server, new_page, tmp_path):
    _, url = server
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    page = new_page()
    page.goto(url + "/ui/photo")
    page.wait_for_selector("#gallery-select option", state="attached")
    page.set_input_files("#photo-file", str(text))
    msg = _alert_text(page)
    assert "could not be read" in msg and "not a decodable image" in msg
    assert page.locator("#photo-result").is_hidden()

    page.goto(url + "/ui/gallery")
    page.wait_for_selector("#gallery-select option", state="attached")
    page.fill("#person-name", "someone")
    page.set_input_files("#person-photos", str(text))
    page.click("#add-person")
    assert "could not be read" in _alert_text(page)

    page.goto(url + "/ui/video")
    page.wait_for_selector("#gallery-select option", state="attached")
    page.set_input_files("#video-file", str(text))
    page.click("#video-submit")
    msg = _alert_text(page)
    assert "not supported" in msg and ".txt" in msg


def test_video_upload_progress_stream_and_timeline(people, new_page, clip_dir, tmp_path):
    _, url = people
    page = new_page()
    page.goto(url + "/ui/video")
    page.wait_for_selector("#gallery-select option", state="attached")
    page.set_input_files("#video-file", str(clip_dir / "short_hamilton_clip.mp4"))
    page.click("#video-submit")
    page.wait_for_selector("#video-progress:not([hidden])")
    page.wait_for_selector("#stream-panel:not([hidden])")
    page.wait_for_selector("#timeline-panel:not([hidden])", timeout=VIDEO_TIMEOUT_MS)
    assert page.inner_text("#progress-text").startswith("Done")
    people = page.get_attribute("#timeline", "data-people").split(",")
    assert {"lin_manuel_miranda", "barack_obama"} <= set(people)
    # labels.json: Miranda on screen in frames 82-210, Obama in 211-274 (29.97 fps)
    segs = page.locator('.tl-row[data-person="lin_manuel_miranda"] .tl-seg')
    spans = [(float(s.get_attribute("data-start")), float(s.get_attribute("data-end"))) for s in segs.all()]
    assert any(a <= 82 / 29.97 + 0.5 and b >= 210 / 29.97 - 0.5 for a, b in spans), spans
    obama = page.locator('.tl-row[data-person="barack_obama"] .tl-seg').first
    assert float(obama.get_attribute("data-start")) >= 205 / 29.97
    # the finished job plays its annotated H.264 video in a <video> tag; a timeline bar seeks it
    assert page.evaluate("document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.42E01E\"')")
    _poll(page, lambda: page.eval_on_selector("#annotated", "v => v.readyState >= 1 && v.videoWidth") == 640,
          "the annotated video does not load")
    assert page.is_hidden("#stream") and page.is_visible("#annotated")
    duration = page.eval_on_selector("#annotated", "v => v.duration")
    assert abs(duration - 275 / 29.97) < 0.2, duration
    obama_start = float(obama.get_attribute("data-start"))
    obama.click()
    seeked = f"v => v.readyState >= 2 && v.currentTime >= {obama_start - 0.05}"
    _poll(page, lambda: page.eval_on_selector("#annotated", seeked), "the timeline does not seek")
    page.eval_on_selector("#annotated", "v => v.pause()")
    # the MJPEG stream (for <img> tags, like the original /video_feed) shows the annotated frames
    job_path = "location.hash.replace('#job=', '/api/v1/videos/')"
    stream_url = page.evaluate(f"async () => (await FR.api({job_path})).stream_url")
    add_img = "u => { const i = document.createElement('img'); i.id = 'probe'; i.src = u; document.body.append(i); }"
    page.evaluate(add_img, stream_url)
    _poll(page, lambda: page.eval_on_selector("#probe", "i => i.naturalWidth") == 640, "the stream shows no frame")
    page.evaluate("document.getElementById('probe').remove()")
    # the annotated video downloads
    with page.expect_download() as dl:
        page.click("#video-download")
    assert dl.value.suggested_filename == "short_hamilton_clip-annotated.mp4"
    assert Path(dl.value.path()).stat().st_size > 10_000
    # the timeline exports
    with page.expect_download() as dl:
        page.click("#export-csv")
    csv = Path(dl.value.path()).read_text().splitlines()
    assert csv[0] == "person,segment,start_frame,end_frame,start_s,end_s,duration_s"
    assert any(line.startswith("lin_manuel_miranda,") for line in csv)
    with page.expect_download() as dl:
        page.click("#export-json")
    data = json.loads(Path(dl.value.path()).read_text())
    assert {"lin_manuel_miranda", "barack_obama"} <= {p["name"] for p in data["people"]}
    assert data["frames"] == 275
    # the finished job is listed and reopens from its link; on a phone the timeline still fits
    page.set_viewport_size(PHONE)
    page.reload()
    page.wait_for_selector("#timeline-panel:not([hidden])")
    page.wait_for_selector('.tl-row[data-person="lin_manuel_miranda"]')
    assert page.locator("#jobs li a").first.inner_text() == "short_hamilton_clip.mp4"
    _no_horizontal_overflow(page)


def test_webcam_sends_frames_and_draws_names(people, new_page):
    _, url = people
    page = new_page()
    page.goto(url + "/ui/webcam")
    page.wait_for_selector("#gallery-select option", state="attached")
    page.click("#webcam-start")
    page.wait_for_selector("#webcam-overlay[data-names*=barack_obama]", state="attached")
    assert page.locator('#webcam-faces .face-item[data-name="barack_obama"]').count() == 1
    assert "frames/s" in page.inner_text("#webcam-stats")
    page.click("#webcam-stop")
    assert page.locator("#webcam-start").is_enabled()


def test_pages_fit_a_phone_screen(server, new_page, images):
    _, url = server
    page = new_page(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page.goto(url + "/ui/gallery")
    page.wait_for_selector(".person img.crop")
    _no_horizontal_overflow(page)
    page.goto(url + "/ui/photo")
    page.wait_for_selector("#gallery-select option", state="attached")
    page.set_input_files("#photo-file", str(images / "two_people.jpg"))
    page.wait_for_selector("#photo-result:not([hidden])")
    _no_horizontal_overflow(page)
    box = page.locator("#photo-canvas").bounding_box()
    assert box["width"] <= PHONE["width"]
    for path in ("/ui/video", "/ui/webcam"):
        page.goto(url + path)
        page.wait_for_selector("#gallery-select option", state="attached")
        _no_horizontal_overflow(page)


def test_with_api_keys_the_page_asks_for_a_key(keyed_server, new_page, images, clip_dir):
    _, url, key = keyed_server
    page = new_page()
    page.goto(url + "/ui/gallery")
    page.wait_for_selector("#key-form:not([hidden])")
    page.fill("#key-input", "not-a-key")
    page.click("#key-submit")
    assert "API key was not accepted" in _alert_text(page)
    page.fill("#key-input", key)
    page.click("#key-submit")
    page.wait_for_selector("#key-form", state="hidden")
    page.wait_for_selector("#key-status:not([hidden])")
    # crops and every other call carry X-API-Key
    _enroll(page, "lin_manuel_miranda", clip_dir / "enroll" / "lin_manuel_miranda.png")
    # the key is kept for the tab: the next page does not ask again
    page.goto(url + "/ui/photo")
    page.wait_for_selector("#gallery-select option", state="attached")
    assert page.locator("#key-form").is_hidden()
    page.set_input_files("#photo-file", str(images / "lin-manuel-miranda.png"))
    page.wait_for_selector('.face-item[data-name="lin_manuel_miranda"]')
    # the MJPEG <img> cannot send the header: it uses the job's stream token
    page.goto(url + "/ui/video")
    page.wait_for_selector("#gallery-select option", state="attached")
    page.set_input_files("#video-file", str(clip_dir / "short_hamilton_clip.mp4"))
    page.click("#video-submit")
    page.wait_for_selector("#stream-panel:not([hidden])")
    assert "token=" in page.get_attribute("#stream", "src")
    page.wait_for_selector('.tl-row[data-person="lin_manuel_miranda"]', timeout=VIDEO_TIMEOUT_MS)
    # nor can the <video> tag of the finished job: its URL carries the token too
    assert "token=" in page.get_attribute("#annotated", "src")
    _poll(page, lambda: page.eval_on_selector("#annotated", "v => v.readyState >= 1 && v.videoWidth") == 640,
          "the annotated video does not load")
    # a key that stops working brings the prompt back with the reason
    page.evaluate("sessionStorage.setItem('facerec.apiKey', 'revoked-key')")
    page.goto(url + "/ui/gallery")
    assert "API key was not accepted" in _alert_text(page)
    page.wait_for_selector("#key-form:not([hidden])")

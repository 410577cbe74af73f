"""Browser safety, end to end: no page of another site writes to the service, DNS rebinding reads nothing,
CORS only for listed origins, expiring link tokens, the docs page's headers (modules/api/security.py,
modules/api/url_tokens.py; docs/security.md).

The attacks run in a real headless Chromium (Debian's ``chromium``, driven by Playwright, as in test_ui.py):
a page served by a second HTTP server on another port and another name (``attacker.test``, which Chromium's
host resolver maps to 127.0.0.1) calls the API, served by waitress on 127.0.0.1, with ``fetch``.
"""
from __future__ import annotations

import base64
import http.server
import io
import threading
import time

import cv2
import numpy as np
import pytest
import requests

from tests.test_ui import launched_chromium

TIMEOUT_MS = 30_000
RESOLVER = "--host-resolver-rules=MAP attacker.test 127.0.0.1, MAP rebind.test 127.0.0.1"
ENROLL = "/api/v1/galleries/{g}/people/{p}/faces"

#: the attacker's page: its script calls the API of another origin
ATTACK_PAGE = b"""<!doctype html><html><head><title>somewhere else</title></head><body><script>
window.noCorsWrites = async (api, jpegB64) => {
  const bytes = Uint8Array.from(atob(jpegB64), c => c.charCodeAt(0));
  const form = new FormData();
  form.append("file", new Blob([bytes], {type: "image/jpeg"}), "face.jpg");
  const out = [];
  for (const [path, body] of [["/api/v1/galleries/default/people/mallory/faces", form],
                              ["/api/v1/galleries/legacy/reembed", null]]) {
    const r = await fetch(api + path, {method: "POST", mode: "no-cors", body});
    out.push(r.type);
  }
  return out;
};
window.corsCall = async (api, path, method, json) => {
  try {
    const opts = {method, headers: {"X-API-Key": "frk_000000000000_none"}};
    if (json !== null) { opts.body = JSON.stringify(json); opts.headers["Content-Type"] = "application/json"; }
    const r = await fetch(api + path, opts);
    return {status: r.status, body: await r.json()};
  } catch (e) { return {error: String(e)}; }
};
</script></body></html>"""


# --- fixtures --------------------------------------------------------------------------------
class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(ATTACK_PAGE)))
        self.end_headers()
        self.wfile.write(ATTACK_PAGE)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def attacker():
    """The other site: ``(http://attacker.test:PORT, http://127.0.0.1:PORT)`` (cross-site, same-site)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    port = srv.server_address[1]
    yield f"http://attacker.test:{port}", f"http://127.0.0.1:{port}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser():
    with launched_chromium(RESOLVER) as b:
        yield b


@pytest.fixture()
def page(browser):
    ctx = browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx.new_page()
    ctx.close()


@pytest.fixture(scope="module")
def serve(api_models, tmp_path_factory):
    """serve(**settings) -> (app, base URL): the API and pages on waitress, closed at the end of the module."""
    from modules.settings import Settings
    from modules.storage import NewFace
    from modules.ui.server import close_app, serve_in_thread
    from modules.web import create_app

    running = []

    def _serve(**settings):
        app = create_app(Settings(data_dir=tmp_path_factory.mktemp("safety") / "data", **settings),
                         recognizer=api_models, TESTING=True)
        # a face of an older model: a re-embed would visibly change the gallery's embedders
        png = cv2.imencode(".png", np.random.default_rng(1).integers(0, 256, (112, 112, 3), np.uint8))[1].tobytes()
        app.extensions["facerec"].gallery.add_faces(
            "legacy", "ada", [NewFace(np.ones(8, np.float32) / np.sqrt(8), "old-model", crop_png=png)])
        srv = serve_in_thread(app)
        running.append((app, srv))
        return app, srv.url

    yield _serve
    for app, srv in running:
        srv.close()
        close_app(app)


def _state(url: str) -> tuple[list[str], dict[str, int]]:
    """(people of ``default``, embedders of ``legacy``), read through the API."""
    people = requests.get(url + "/api/v1/galleries/default/people", timeout=10).json()["people"]
    legacy = requests.get(url + "/api/v1/galleries/legacy", timeout=10).json()
    return [p["name"] for p in people], legacy["embedders"]


# --- (a) no page of another site writes; CORS for listed origins only ----------------------------
def test_pages_of_other_sites_cannot_write_or_read(serve, attacker, page, obama_jpg):
    _, url = serve()
    before = _state(url)
    assert before == ([], {"old-model": 1})
    face = base64.b64encode(obama_jpg).decode()
    for origin in attacker:  # cross-site (another name) and same-site (same address, another port)
        page.goto(origin + "/")
        # the requests reach the server (an opaque answer, not a network error) and write nothing
        assert page.evaluate("([api, img]) => noCorsWrites(api, img)", [url, face]) == ["opaque", "opaque"]
        assert _state(url) == before
        # without CORS headers the page cannot read either
        answer = page.evaluate("([api]) => corsCall(api, '/api/v1/galleries', 'GET', null)", [url])
        assert "error" in answer
    # the same requests from a client that is not a browser still work
    r = requests.post(url + ENROLL.format(g="default", p="mallory"),
                      files={"file": ("face.jpg", obama_jpg, "image/jpeg")}, timeout=60)
    assert r.status_code == 201
    # a browser's request with a foreign Origin, as the server sees it
    r = requests.post(url + "/api/v1/galleries", json={"name": "x"}, timeout=10,
                      headers={"Origin": attacker[0], "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site_request"
    assert "Access-Control-Allow-Origin" not in r.headers


def test_a_listed_origin_reads_and_writes_through_cors(serve, attacker, page):
    _, url = serve(http={"cors_origins": [attacker[0]]})
    page.goto(attacker[0] + "/")
    # a preflighted write (JSON, X-API-Key among the allowed headers) and a simple one; both answers readable
    answer = page.evaluate("([api]) => corsCall(api, '/api/v1/galleries', 'POST', {name: 'team'})", [url])
    assert answer.get("status") == 201 and answer["body"]["name"] == "team", answer
    answer = page.evaluate("([api]) => corsCall(api, '/api/v1/galleries/legacy/reembed', 'POST', null)", [url])
    assert answer.get("status") == 200 and answer["body"]["reembedded"] == 1, answer
    assert _state(url)[1] == {"sface_2021dec": 1}
    # the preflight itself
    r = requests.options(url + "/api/v1/galleries", timeout=10, headers={
        "Origin": attacker[0], "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key"})
    assert r.headers["Access-Control-Allow-Origin"] == attacker[0]
    assert "x-api-key" in r.headers["Access-Control-Allow-Headers"].lower()
    # an origin that is not listed gets no CORS headers and cannot write
    page.goto(attacker[1] + "/")
    answer = page.evaluate("([api]) => corsCall(api, '/api/v1/galleries', 'POST', {name: 'other'})", [url])
    assert "error" in answer
    names = [g["name"] for g in requests.get(url + "/api/v1/galleries", timeout=10).json()["galleries"]]
    assert "team" in names and "other" not in names


# --- (b) Host allow-list -------------------------------------------------------------------------
def _untrusted(r) -> None:
    """A 400 ``untrusted_host`` envelope (a test client's or a ``requests`` response)."""
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/json"), r.text[:200]
    body = r.get_json() if hasattr(r, "get_json") else r.json()
    assert set(body) == {"error"} and body["error"]["code"] == "untrusted_host"


def test_only_allowed_host_names_are_answered(make_app, serve, page):
    client = make_app().test_client()
    for path in ("/api/v1/galleries", "/docs", "/ui/gallery", "/nope"):
        _untrusted(client.get(path, headers={"Host": "rebind.test:5000"}))
    _untrusted(client.post("/api/v1/galleries", json={"name": "x"}, headers={"Host": "evil.example"}))
    for host in ("localhost", "127.0.0.1:5000", "[::1]:5000", "LOCALHOST."):
        assert client.get("/api/v1/galleries", headers={"Host": host}).status_code == 200, host
    # liveness and readiness answer any name (probes use the machine's address)
    assert client.get("/health", headers={"Host": "10.1.2.3:5000"}).status_code == 200
    assert client.get("/ready", headers={"Host": "10.1.2.3:5000"}).status_code == 200
    named = make_app("named", http={"allowed_hosts": ["faces.example.org", ".corp.example"]}).test_client()
    assert named.get("/api/v1/galleries", headers={"Host": "faces.example.org"}).status_code == 200
    assert named.get("/api/v1/galleries", headers={"Host": "a.corp.example:8443"}).status_code == 200
    _untrusted(named.get("/api/v1/galleries", headers={"Host": "localhost"}))
    anyhost = make_app("any", http={"allowed_hosts": ["*"]}).test_client()
    assert anyhost.get("/api/v1/galleries", headers={"Host": "rebind.test"}).status_code == 200

    # a real server, over the wire and through a browser that reached it under a foreign name
    _, url = serve()
    _untrusted(requests.get(url + "/api/v1/galleries/default/people", headers={"Host": "rebind.test"}, timeout=10))
    assert requests.get(url + "/api/v1/galleries", timeout=10).status_code == 200
    port = url.rsplit(":", 1)[1]
    r = page.goto(f"http://rebind.test:{port}/api/v1/galleries")
    assert r.status == 400 and "untrusted_host" in page.content()
    _, url = serve(http={"allowed_hosts": ["*"]})
    assert requests.get(url + "/api/v1/galleries", headers={"Host": "rebind.test"}, timeout=10).status_code == 200


def test_http_settings_parse_and_refuse_garbage(monkeypatch):
    from modules.errors import ConfigError
    from modules.settings import load_settings

    monkeypatch.setenv("FACEREC_HTTP_ALLOWED_HOSTS", "Faces.Example.org:443, [::1], *")
    monkeypatch.setenv("FACEREC_HTTP_CORS_ORIGINS", "https://App.example.com/ , http://127.0.0.1:8080")
    monkeypatch.setenv("FACEREC_HTTP_TOKEN_TTL_S", "60")
    http = load_settings().http
    assert http.allowed_hosts == ["faces.example.org", "::1", "*"]
    assert http.cors_origins == ["https://app.example.com", "http://127.0.0.1:8080"]
    assert http.token_ttl_s == 60
    monkeypatch.setenv("FACEREC_HTTP_CORS_ORIGINS", "app.example.com")
    with pytest.raises(ConfigError, match="FACEREC_HTTP_CORS_ORIGINS"):
        load_settings()
    monkeypatch.delenv("FACEREC_HTTP_CORS_ORIGINS")
    monkeypatch.setenv("FACEREC_HTTP_ALLOWED_HOSTS", "https://faces.example.org/")
    with pytest.raises(ConfigError, match="FACEREC_HTTP_ALLOWED_HOSTS"):
        load_settings()


# --- (c) expiring link tokens --------------------------------------------------------------------
def _tiny_video() -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tiny.mp4"
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
        for i in range(10):
            w.write(np.full((64, 96, 3), 20 * i, np.uint8))
        w.release()
        return path.read_bytes()


@pytest.fixture()
def keyed_app(make_app):
    """An app with API keys on and 2-minute link tokens; its video jobs stopped at the end."""
    from modules.api import videos

    app = make_app(api_keys=True, http={"token_ttl_s": 120})
    yield app
    app.extensions[videos.EXTENSION].shutdown(wait=True, cancel_running=True)


def test_link_tokens_expire_and_die_with_their_key(keyed_app):
    from modules.api import url_tokens, videos

    app = keyed_app
    svc, mgr = app.extensions["facerec"], app.extensions[videos.EXTENSION]
    user, record = svc.keys.create(["default"], label="user")
    _, other_record = svc.keys.create(["elsewhere"], label="other")
    c = app.test_client()
    r = c.post("/api/v1/videos", data={"file": (io.BytesIO(_tiny_video()), "tiny.mp4")},
               content_type="multipart/form-data", headers={"X-API-Key": user})
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["job_id"]
    assert mgr.wait(job_id, timeout=60)["status"] == "done"
    job = c.get(f"/api/v1/videos/{job_id}", headers={"X-API-Key": user}).get_json()
    token = job["video_url"].split("token=")[1]
    assert job["stream_url"].endswith("?token=" + token)
    # the link stands for this key, for this job, until now + token_ttl_s
    _, key_id, expires, _ = token.split(".")
    assert key_id == record.id and 100 <= int(expires) - time.time() <= 121
    vpath, spath = f"/api/v1/videos/{job_id}/video", f"/api/v1/videos/{job_id}/stream"
    assert c.get(job["video_url"]).status_code == 200
    st = c.get(job["stream_url"])
    assert st.status_code == 200 and st.mimetype == "multipart/x-mixed-replace"
    st.close()

    def refused(token: str, status: int = 401) -> None:
        for path in (vpath, spath):
            r = c.get(path, query_string={"token": token})
            assert r.status_code == status and set(r.get_json()) == {"error"}, (path, r.status_code)

    secret = url_tokens.load_secret(mgr.dir)
    refused(url_tokens.make_token(secret, job_id, record.id, int(time.time()) - 1))  # expired
    refused(url_tokens.make_token(b"another installation", job_id, record.id, int(time.time()) + 60))
    refused(url_tokens.make_token(secret, "00000000-0000-4000-8000-000000000000", record.id, int(time.time()) + 60))
    refused("t0k3n")  # a stored stream_token of an earlier version
    refused(f"v1.{record.id}.\u00b2\u00b3.\u00e9")  # not ASCII
    refused(url_tokens.make_token(secret, job_id, other_record.id, int(time.time()) + 60), 403)  # out of its scope
    # the secret file: private, made once, shared by every process on this storage folder
    path = mgr.dir / url_tokens.SECRET_FILE
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text()) == 64
    # a revoked key's links stop working at once
    svc.keys.revoke(record.id)
    refused(token)
    assert c.get(vpath, headers={"X-API-Key": user}).status_code == 401


def test_the_token_secret_is_made_once_however_many_start_together(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from modules.api import url_tokens

    load = url_tokens.load_secret.__wrapped__  # uncached: each call goes to the file, as another process would
    with ThreadPoolExecutor(8) as pool:
        made = set(pool.map(lambda _: load(tmp_path / "jobs"), range(32)))
    assert len(made) == 1 and len(made.pop()) == 64
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == [url_tokens.SECRET_FILE]


# --- (d) the docs page -----------------------------------------------------------------------------
def test_docs_have_the_page_headers_and_render(serve, page, make_app):
    client = make_app().test_client()
    html = client.get("/docs/swagger")
    assert html.status_code == 200 and html.mimetype == "text/html"
    csp = html.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "'unsafe-inline'" not in csp and "'sha256-" in csp
    for path in ("/docs/swagger", "/openapi.json", "/docs/openapi.json"):
        r = client.get(path)
        assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["Referrer-Policy"] == "same-origin", path
        assert "Content-Security-Policy" in r.headers, path
    assert client.get("/openapi.json").headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert client.get("/api/v1/galleries").headers["X-Content-Type-Options"] == "nosniff"

    _, url = serve()
    blocked = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(url + "/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "Face recognition service" in page.inner_text(".swagger-ui .info .title")
    assert page.locator(".opblock").count() >= 20
    # "Try it out" works: a read, and a write from the docs' own origin (the example body names gallery "string")
    assert _try_it_out(page, "operations-health-health") == "200"
    assert _try_it_out(page, "operations-galleries-create_gallery") == "201"
    assert "string" in [g["name"] for g in requests.get(url + "/api/v1/galleries", timeout=10).json()["galleries"]]
    assert not blocked, blocked


def _try_it_out(page, operation: str) -> str:
    """Open an operation of the Swagger UI, run it with its example input, return the status it shows."""
    op = f"#{operation}"
    page.click(f"{op} .opblock-summary")
    page.click(f"{op} .try-out__btn")
    page.click(f"{op} .execute")
    return page.inner_text(f"{op} .live-responses-table tbody .response-col_status").strip()

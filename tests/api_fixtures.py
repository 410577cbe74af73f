"""Fixtures shared by the API tests: apps on the session's models, test images, request helpers.

Import the fixtures into a test module with ``from tests.api_fixtures import *``.
The models load once per session (``api_models``); every ``make_app`` app gets
its own data directory (gallery, keys).
"""
from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

__all__ = [
    "ServerProcess",
    "api_models",
    "app",
    "b64",
    "biden_jpg",
    "client",
    "frame_640x480",
    "free_port",
    "images",
    "img_bytes",
    "make_app",
    "multipart_files",
    "no_face_jpg",
    "obama2_jpg",
    "obama_jpg",
    "two_people_jpg",
]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def multipart_files(*images: bytes, field: str = "file", **fields: Any) -> dict[str, Any]:
    """``data=`` for the Flask test client: one or more file parts plus plain fields."""
    data: dict[str, Any] = {k: str(v) for k, v in fields.items()}
    data[field] = [(io.BytesIO(img), f"img{i}.jpg") for i, img in enumerate(images)]
    return data


@pytest.fixture(scope="session")
def api_models(recognizer):
    """Detector + embedder loaded once per session (conftest's ``recognizer``, no gallery attached)."""
    return recognizer


@pytest.fixture()
def make_app(api_models, tmp_path) -> Iterator[Callable[..., Any]]:
    """``make_app(**settings)`` -> an app on the session's models with a fresh data directory."""
    from modules.settings import Settings
    from modules.web import create_app

    apps = []

    def _make(sub: str = "data", **settings: Any):
        s = Settings(data_dir=tmp_path / sub, **settings)
        app = create_app(s, recognizer=api_models, TESTING=True)
        apps.append(app)
        return app

    yield _make
    for app in apps:
        app.extensions["facerec"].close()


@pytest.fixture()
def app(make_app):
    return make_app()


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def images() -> Path:
    root = SHARED_DATA / "face_recognition_examples" / "images"
    if not root.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"dev data not found at {root}")
        pytest.skip(f"dev data not found at {root}")
    return root


def _read(images: Path, name: str) -> bytes:
    return (images / name).read_bytes()


@pytest.fixture(scope="session")
def img_bytes(images) -> Callable[[str], bytes]:
    return lambda name: _read(images, name)


@pytest.fixture(scope="session")
def obama_jpg(images) -> bytes:
    return _read(images, "obama.jpg")


@pytest.fixture(scope="session")
def obama2_jpg(images) -> bytes:
    return _read(images, "obama2.jpg")


@pytest.fixture(scope="session")
def biden_jpg(images) -> bytes:
    return _read(images, "biden.jpg")


@pytest.fixture(scope="session")
def two_people_jpg(images) -> bytes:
    return _read(images, "two_people.jpg")


@pytest.fixture(scope="session")
def frame_640x480(images) -> bytes:
    """A one-face 640x480 JPEG (obama.jpg letterboxed), like a video frame."""
    from benchmarks.load import one_face_jpeg

    return one_face_jpeg(images / "obama.jpg")


@pytest.fixture(scope="session")
def no_face_jpg() -> bytes:
    import cv2

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (9, 9), 0)
    return cv2.imencode(".jpg", img)[1].tobytes()


# --- real server processes -------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python app.py`` (or gunicorn) on a loopback port, stopped with :meth:`stop` / :meth:`kill`."""

    def __init__(self, data_dir: Path, *, gunicorn: bool = False, workers: int = 2, extra: list[str] | None = None):
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if gunicorn:
            env.update(
                FACEREC_DATA_DIR=str(self.data_dir),
                FACEREC_BIND=f"127.0.0.1:{self.port}",
                FACEREC_WORKERS=str(workers),
                FACEREC_THREADS="4",
            )
            cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")]
        else:
            cmd = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(self.port),
                   "--data-dir", str(self.data_dir), "--log-level", "WARNING", *(extra or [])]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 60.0) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL
            self.proc.wait()

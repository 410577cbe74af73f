"""Serving an app with waitress on a background thread (browser tests, screenshots, demos).

``python app.py`` is the way to serve the API and the pages; this is for code
that needs a real server inside its own process (the same waitress options:
:func:`modules.server.serve_in_thread`).
"""
from __future__ import annotations

from typing import Any

from ..server import ThreadedServer, serve_in_thread

__all__ = ["CHROMIUM_ARGS", "ThreadedServer", "close_app", "serve_in_thread"]

#: Debian chromium driven by Playwright (tests, screenshots): headless, no sandbox (root), no
#: background networking (the machine's network is closed), a fake camera for the webcam page.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]


def close_app(app: Any) -> None:
    """Stop the app's video jobs and close its gallery and key store."""
    mgr = app.extensions.get("facerec_videos")
    if mgr is not None:
        mgr.shutdown(wait=True, cancel_running=True)
    svc = app.extensions.get("facerec")
    if svc is not None:
        svc.close()

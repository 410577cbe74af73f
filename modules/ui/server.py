"""Serving an app with waitress on a background thread (browser tests, screenshots, demos).

``python app.py`` is the way to serve the API and the pages; this is for code
that needs a real server inside its own process.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

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


@dataclass
class ThreadedServer:
    """A waitress server on a loopback port, run by a daemon thread."""

    server: Any
    thread: threading.Thread
    url: str

    def close(self) -> None:
        """Close the listening socket and every connection (open MJPEG streams too), then the worker threads."""
        from waitress import wasyncore

        wasyncore.close_all(self.server._map)
        self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        self.thread.join(timeout=5)


def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, threads: int = 8) -> ThreadedServer:
    from waitress import create_server

    server = create_server(app, host=host, port=port, threads=threads, channel_timeout=30, ident="facerec-ui")
    t = threading.Thread(target=server.run, name="facerec-ui-server", daemon=True)
    t.start()
    return ThreadedServer(server, t, f"http://{host}:{server.effective_port}")

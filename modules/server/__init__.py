"""Serving the app: the options of ``python app.py`` (waitress), of ``gunicorn.conf.py`` and of the in-process
server of the browser tests, all from :class:`~modules.settings.ServerSettings` (docs/serving.md).

What keeps slow, idle and long-lived clients from taking every request thread:

- waitress reads a request's head and body in its event loop and gives a thread only complete requests; idle
  connections cost a socket each, up to ``connection_limit``, and are closed after ``client_timeout_s``;
- gunicorn runs :class:`modules.server.gthread.HeadFirstWorker`: gthread, but a connection reaches a thread
  only once its request head is in (within ``client_timeout_s``), and a body read that stalls that long ends
  the request;
- MJPEG streams and video downloads, which hold a thread while they last, are bounded per process, job and
  client (``stream_*``, :class:`modules.jobs.stream.StreamSlots`), so half the threads stay free;
- one request body limit: Flask answers JSON 413 above the route's limit (an image or a video as base64
  JSON); waitress' own limit is above the largest of them, and its errors use the same JSON envelope;
- each computation uses ``compute_threads`` OpenCV/onnxruntime threads, so that the threads of concurrent
  requests do not oversubscribe the cores.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from ..api.common import body_limit
from ..api.errors import HTTP_CODES
from ..api.schemas import ErrorBody, ErrorResponse
from ..resources import return_freed_memory, set_compute_threads
from ..settings import ServerSettings, Settings

#: waitress answers bodies above the largest route limit plus this itself (Flask answers below it)
WAITRESS_BODY_MARGIN = 1 << 20


def largest_body(settings: Settings) -> int:
    """The largest request body any route accepts (a video upload, as base64 JSON, by default)."""
    return body_limit(max(settings.max_upload_bytes, settings.video.max_upload_bytes))


def compute_threads(server: ServerSettings, processes: int = 1) -> int:
    """OpenCV/onnxruntime threads per computation: ``cv_threads``, else the cores shared out among every
    request thread of every process (at least 1)."""
    return server.cv_threads or max(1, (os.cpu_count() or 1) // (processes * server.threads))


def prepare_process(settings: Settings, processes: int = 1) -> None:
    """Process-wide set-up before the models load: the threads of one computation, and freed image
    buffers handed back to the system (:func:`~modules.resources.return_freed_memory`)."""
    set_compute_threads(compute_threads(settings.server, processes))
    return_freed_memory()


def serving_settings(settings: Settings) -> Settings:
    """``settings`` for a process whose requests each take one of ``server.threads`` threads: unless set,
    at most ``threads - decode.max_concurrent - 1`` requests wait for a decoding slot (the others get 503
    ``busy`` at once), so a burst of large images always leaves a thread for ``/health``."""
    decode = settings.decode
    if decode.max_queued is not None:
        return settings
    bound = max(0, settings.server.threads - decode.max_concurrent - 1)
    return settings.replace(decode=decode.model_copy(update={"max_queued": bound}))


# --- waitress --------------------------------------------------------------------------------------------------
def waitress_options(settings: Settings, threads: int | None = None) -> dict[str, Any]:
    server = settings.server
    return {
        "threads": threads or server.threads,
        "connection_limit": server.connection_limit,
        "channel_timeout": server.client_timeout_s,
        "cleanup_interval": max(1.0, min(30.0, server.client_timeout_s / 2)),
        "max_request_body_size": largest_body(settings) + WAITRESS_BODY_MARGIN,
        "asyncore_use_poll": True,  # select() stops at 1024 sockets
        "ident": "facerec",
    }


def _json_error_channel() -> type:
    """waitress' channel whose own errors (bad request, body or headers too large) are JSON in the envelope."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):
        def execute(self) -> None:
            e = self.request.error
            code = HTTP_CODES.get(e.code, f"http_{e.code}")
            message = f"{e.reason}: {e.body}" if e.body else e.reason
            body = ErrorResponse(error=ErrorBody(code=code, message=message)).model_dump_json(exclude_none=True)
            self.status = f"{e.code} {e.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            data = body.encode()
            self.content_length = len(data)
            self.write(data)

    class JsonErrorChannel(HTTPChannel):
        error_task_class = JsonErrorTask

    return JsonErrorChannel


@dataclass
class Waitress:
    """A waitress server (its listening sockets in ``sockets``)."""

    server: Any
    sockets: dict[int, Any]

    @property
    def port(self) -> int:
        return self.server.effective_port

    def run(self) -> None:
        self.server.run()

    def close(self) -> None:
        """Close the listening sockets and every connection (open MJPEG streams too), then the threads."""
        from waitress import wasyncore

        wasyncore.close_all(self.sockets)
        self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)


def create_waitress(app: Any, settings: Settings, host: str = "127.0.0.1", port: int = 0,
                    threads: int | None = None) -> Waitress:
    """A waitress server for ``app`` with :func:`waitress_options` (not yet running: call ``run()``)."""
    from waitress import create_server
    from waitress.server import BaseWSGIServer

    sockets: dict[int, Any] = {}
    server = create_server(app, map=sockets, host=host, port=port, **waitress_options(settings, threads))
    channel = _json_error_channel()
    for listener in list(sockets.values()):
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = channel
    return Waitress(server, sockets)


@dataclass
class ThreadedServer:
    """A waitress server on a loopback port, run by a daemon thread (browser tests, screenshots, demos)."""

    waitress: Waitress
    thread: threading.Thread
    url: str

    def close(self) -> None:
        self.waitress.close()
        self.thread.join(timeout=5)


def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, threads: int = 8) -> ThreadedServer:
    settings = app.config.get("FACEREC_SETTINGS") or Settings()
    w = create_waitress(app, settings, host, port, threads=threads)
    t = threading.Thread(target=w.run, name="facerec-server", daemon=True)
    t.start()
    return ThreadedServer(w, t, f"http://{host}:{w.port}")


# --- gunicorn --------------------------------------------------------------------------------------------------
def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """The variables of ``gunicorn.conf.py``."""
    from .gthread import HeadFirstWorker

    server = settings.server
    return {
        "wsgi_app": "app:app",
        "bind": server.bind,
        # CPU-bound inference: one process per core; threads overlap decoding, I/O, streams and health checks
        "workers": server.worker_count,
        "worker_class": HeadFirstWorker.configured(server.client_timeout_s),
        "threads": server.threads,
        "worker_connections": server.connection_limit,
        # each worker imports ``app`` itself after the fork: no model or SQLite connection shared across processes
        "preload_app": False,
        # the control socket is one file per user ($HOME/.gunicorn/gunicorn.ctl): several instances would collide
        "control_socket_disable": True,
        "timeout": server.timeout,
        "graceful_timeout": 30,
        "keepalive": server.keepalive_s,
        # header limits (the body limit is Flask's, answered as JSON 413)
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "accesslog": server.access_log,
        "errorlog": "-",
        "loglevel": server.log_level,
    }

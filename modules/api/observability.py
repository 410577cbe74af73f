"""What the service tells its operators about each request: one access-log line and the Prometheus metrics.

The access log is the ``facerec.access`` logger at INFO, one line per answer::

    method=POST route=/api/v1/galleries/<gallery>/people/<person>/faces status=201 ms=183.2 key=3f9c... client=10.0.0.7

``route`` is the URL rule, never the path (no gallery or person names), and neither the query string (video
stream tokens) nor any part of a body is logged; ``key`` is the API key's id (``-`` without one); ``ms`` runs
to the answer's headers (a streamed video or MJPEG body goes on after).  The same fields are on the log
record as ``record.access`` (a dict) for structured log handlers.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, g, request

from ..settings import Settings
from .auth import current_key
from .metrics import Metrics, register_metrics

access_log = logging.getLogger("facerec.access")

UNMATCHED = "<unmatched>"  # the route of a request no URL rule matched (404, 405)
_START = "_facerec_start"


def install(app: Flask, settings: Settings, recognizer: Any) -> Metrics | None:
    """The request hooks (the first ``before_request``, so a request refused by a later hook is timed too),
    the access log if on, and ``/metrics`` with its recognizer listener if metrics are on."""
    metrics = None
    if settings.metrics.enabled:
        from .videos import EXTENSION as VIDEOS

        metrics = Metrics(lambda: getattr(app.extensions.get(VIDEOS), "store", None))
        recognizer.listeners.append(metrics.observe_result)
        register_metrics(app, metrics, require_key=settings.metrics.require_key)
    log_requests = settings.metrics.access_log_on(settings.server)
    if metrics is None and not log_requests:
        return None

    def start() -> None:
        setattr(g, _START, time.perf_counter())

    def finish(response: Response) -> Response:
        started = g.get(_START)
        seconds = None if started is None else time.perf_counter() - started
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        if metrics is not None:
            metrics.observe_request(route, request.method, response.status_code, seconds)
            if response.status_code >= 400 and response.is_json and not response.is_streamed:
                error = (response.get_json(silent=True) or {}).get("error")
                if isinstance(error, dict) and isinstance(error.get("code"), str):
                    metrics.observe_error(error["code"])
        if log_requests:
            key = current_key()
            fields = {"method": request.method, "route": route, "status": response.status_code,
                      "ms": None if seconds is None else round(seconds * 1000, 1),
                      "key": key.id if key is not None else None, "client": request.remote_addr}
            access_log.info(" ".join(f"{k}={'-' if v is None else v}" for k, v in fields.items()),
                            extra={"access": fields})
        return response

    app.before_request_funcs.setdefault(None, []).insert(0, start)
    app.after_request(finish)
    return metrics

"""Request budgets per client (Flask-Limiter): per API key when keys are on, per client address otherwise.

Every client has two budgets, each shared by all routes (``FACEREC_RATE_*``, :class:`~modules.settings.
RateLimitSettings`): ``default`` counts every request, ``heavy`` also counts POST, PUT and PATCH requests (they
run the models or write).  A request over a budget is answered ``429`` ``rate_limited`` with ``Retry-After``
(seconds until the budget has room again) through the one error handler.  Liveness, readiness, metrics, the
OpenAPI document, the docs and CORS preflights are never counted.

Who a request counts against (:func:`client_id`): ``key:<id>`` when it carries a valid API key, else
``addr:<client address>`` (``request.remote_addr``: behind a reverse proxy, the proxy must pass the client's
address on, or every client shares one budget).  The key is checked here, before the key check of
:mod:`.auth`, so requests refused with 401 count against their address too (guessing keys costs budget).

Counters live in ``rate.storage_url``: ``memory://`` (one process: each gunicorn worker counts alone), or
Redis (``queue_url``'s, when set), shared by every worker and server.  Should Redis go away, each process
counts in memory until it is back.  The video job quota (``rate.video_jobs``) is counted in the job store
instead: see :mod:`modules.jobs.manager`.
"""
from __future__ import annotations

import math
import time

from flask import Flask, Response, current_app, g, request
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded
from limits.errors import ConfigurationError

from ..errors import ConfigError, RateLimitedError
from ..images import decode_owner
from ..settings import Settings
from .auth import HEADER, current_key
from .errors import handle_facerec_error
from .service import EXTENSION as SERVICE
from .service import get_service

EXTENSION = "facerec_limiter"
#: never counted: liveness, readiness, metrics, the OpenAPI document and the docs
EXEMPT_PATHS = frozenset({"/health", "/ready", "/metrics", "/openapi.json", "/docs"})
EXEMPT_PREFIXES = ("/docs/",)
#: methods that also count against the ``heavy`` budget
HEAVY_METHODS = frozenset({"POST", "PUT", "PATCH"})
KEY_PREFIX = "facerec"
#: a Redis counter store that does not answer within this many seconds counts as down
REDIS_TIMEOUT_S = 2


def client_id() -> str:
    """Who the request counts against: ``key:<id>`` for a valid API key, else ``addr:<client address>``."""
    cached = g.get("facerec_client")
    if cached is not None:
        return cached
    key = current_key()
    keys = get_service().keys
    if key is None and keys is not None and (presented := request.headers.get(HEADER)):
        key = keys.verify(presented)
    ident = f"key:{key.id}" if key is not None else f"addr:{request.remote_addr or 'unknown'}"
    g.facerec_client = ident
    return ident


def mark_decode_owner() -> None:
    """``before_request``: the decoding slots this request takes count against its client
    (:data:`modules.images.decode_owner`), so one client cannot take them all."""
    decode_owner.set(client_id())


def storage_url(settings: Settings) -> str:
    """Where the counters live: ``rate.storage_url``, else the queue's Redis, else this process's memory."""
    url = settings.rate.storage_url or settings.queue_url or "memory://"
    if url.startswith("unix://"):  # a Redis socket as the queue spells it; the limits package: redis+unix://
        url = "redis+unix://" + url[len("unix://"):]
    return url


def _exempt() -> bool:
    path = request.path
    return request.method == "OPTIONS" or path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


def _identify() -> None:
    """``before_request``, ahead of the limiter's own hook: the client, once per request."""
    if not _exempt():
        client_id()


def _on_rate_limited(exc: RateLimitExceeded) -> Response:
    """Flask-Limiter's breach -> :class:`RateLimitedError` through the one error handler."""
    limiter: Limiter = current_app.extensions[EXTENSION]
    current = limiter.current_limit
    retry = max(1, math.ceil(current.reset_at - time.time())) if current is not None else 1
    who = "API key" if client_id().startswith("key:") else "client address"
    what = "POST/PUT/PATCH requests" if exc.limit.scope == "heavy" else "requests"
    return handle_facerec_error(RateLimitedError(
        f"too many {what}: the limit is {exc.description} per {who}; retry in {retry} s",
        details={"limit": exc.description, "retry_after_s": retry}, retry_after=retry,
    ))


def init_limits(app: Flask) -> Limiter | None:
    """Count requests per client on ``app`` (its settings' ``rate`` branch); ``None`` when they are off.

    Call before the key check's ``before_request`` hook is registered (see the module docstring).
    """
    settings: Settings = app.extensions[SERVICE].settings
    rate = settings.rate
    if not rate.enabled:
        return None
    budgets = []
    if rate.default:
        budgets.append(ApplicationLimit(rate.default, scope="all"))
    if rate.heavy:
        budgets.append(ApplicationLimit(rate.heavy, scope="heavy", exempt_when=lambda: request.method not in
                                        HEAVY_METHODS))
    url = storage_url(settings)
    redis = url.startswith(("redis://", "rediss://", "redis+unix://"))
    options = {"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S} if redis else {}
    app.before_request(_identify)
    try:
        limiter = Limiter(
            client_id, application_limits=budgets, storage_uri=url, storage_options=options,
            strategy="sliding-window-counter", key_prefix=KEY_PREFIX, in_memory_fallback_enabled=True,
            request_identifier=lambda: request.endpoint or "unrouted",  # 404s and 405s count too
        )
        limiter.request_filter(_exempt)
        limiter.init_app(app)
    except (ConfigurationError, ValueError) as exc:
        raise ConfigError(f"rate limits: cannot use the counter store {url.split('@')[-1]!r}: {exc}") from exc
    app.extensions[EXTENSION] = limiter
    app.register_error_handler(RateLimitExceeded, _on_rate_limited)
    return limiter

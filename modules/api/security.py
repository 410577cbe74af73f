"""Browser safety: no web page of another site may write to the service or read it through DNS rebinding.

    install(app)        # in create_app, once app.config["FACEREC_SETTINGS"] is set

Three request checks and the pages' response headers (docs/security.md tells what each protects against):

* **Host allow-list** (``FACEREC_HTTP_ALLOWED_HOSTS``, default the loopback names): a request whose ``Host``
  header names another host is answered 400 ``untrusted_host`` before anything else runs.  A page that made
  its own domain name resolve to this server (DNS rebinding) always sends that name, so it reads nothing.
  Views marked :func:`any_host` (liveness and readiness, which reveal nothing) answer whatever the name.
* **Cross-site write refusal**: a ``POST``, ``PUT``, ``PATCH`` or ``DELETE`` sent by a browser on behalf of a
  page of another origin is answered 403 ``cross_site_request`` before the view runs, keys on or off.  The
  ``Origin`` header, when sent, must be the service's own origin (its host and port equal the ``Host``, or the
  ``X-Forwarded-Host`` of a proxy) or one of ``FACEREC_HTTP_CORS_ORIGINS``; ``Sec-Fetch-Site: cross-site`` or
  ``same-site`` is refused unless the ``Origin`` is one of those origins.  Clients that are not browsers send
  neither header and pass.
* **CORS** (flask-cors) for the origins of ``FACEREC_HTTP_CORS_ORIGINS`` only; none listed: no CORS headers.
* :func:`set_page_headers`: Content-Security-Policy, ``nosniff``, ``Referrer-Policy`` for HTML pages (the
  browser pages of :mod:`modules.ui` call it too); the Swagger UI (``/docs``) and ``/openapi.json`` get them
  here, with the hashes of the Swagger page's inline script and style in its policy.  Every response is
  ``nosniff``.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, request
from flask_cors import CORS

from ..errors import ForbiddenError, InvalidRequestError
from ..settings import HttpSettings
from .auth import HEADER, PUBLIC_BLUEPRINTS

__all__ = ["CrossSiteRequestError", "UntrustedHostError", "any_host", "install", "set_page_headers"]

F = TypeVar("F", bound=Callable[..., Any])

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: the OpenAPI document and the Swagger UI: flask-openapi3's blueprints and the app's own two routes
DOCS_ENDPOINTS = frozenset({"openapi_json", "docs"})
#: a page's policy; ``{script}``/``{style}``: extra sources (hashes of inline blocks)
PAGE_CSP = (
    "default-src 'self'; script-src 'self'{script}; style-src 'self'{style}; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'self'"
)
#: anything of the docs that is not HTML (the JSON document, scripts, styles, images): loads and runs nothing
DATA_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL | re.IGNORECASE)
#: the ``<style>`` blocks Swagger UI's script inserts (the colours of its logo), allowed by hash like the page's own
SWAGGER_UI_STYLES = (".logo_small_svg__cls-2{fill:#fff}.logo_small_svg__cls-3{fill:#85ea2d}",)
CORS_ALLOW_HEADERS = ["Content-Type", HEADER, "Range"]
CORS_EXPOSE_HEADERS = ["Location", "Retry-After", "Content-Disposition", "Content-Range", "Accept-Ranges"]


class UntrustedHostError(InvalidRequestError):
    code = "untrusted_host"


class CrossSiteRequestError(ForbiddenError):
    code = "cross_site_request"


def _http() -> HttpSettings:
    return current_app.config["FACEREC_SETTINGS"].http


def any_host(func: F) -> F:
    """Mark a view as answering whatever ``Host`` a request names (it must reveal nothing)."""
    func._facerec_any_host = True  # type: ignore[attr-defined]
    return func


def set_page_headers(response: Response, csp: str = PAGE_CSP.format(script="", style="")) -> Response:
    """The security headers of an HTML page: ``csp``, ``nosniff``, same-origin referrers, revalidated caching."""
    response.headers.update({"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "same-origin"})
    response.headers.setdefault("Cache-Control", "no-cache")
    return response


# --- Host --------------------------------------------------------------------------------------------------
def host_name(value: str) -> str:
    """``Example.COM:8080`` -> ``example.com``, ``[::1]:5000`` -> ``::1`` (the form of the settings' list)."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:v.find("]")] if "]" in v else v
    return (v.rsplit(":", 1)[0] if v.count(":") == 1 else v).rstrip(".")


def host_allowed(name: str, allowed: list[str]) -> bool:
    return any(a == "*" or a == name or (a.startswith(".") and (name == a[1:] or name.endswith(a)))
               for a in allowed)


def check_host() -> None:
    """``before_request``: 400 ``untrusted_host`` unless the ``Host`` header is allowed (or absent: no browser)."""
    allowed = _http().allowed_hosts
    raw = request.environ.get("HTTP_HOST")
    if raw is None or "*" in allowed or host_allowed(host_name(raw), allowed):
        return
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "_facerec_any_host", False):
        return
    raise UntrustedHostError(f"this server does not answer for host {raw[:100]!r}: add its name to "
                             "FACEREC_HTTP_ALLOWED_HOSTS")


# --- cross-site writes ---------------------------------------------------------------------------------------
def _own_origin(origin: str) -> bool:
    """Whether ``origin``'s host and port are the ones the browser sent this request to."""
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        return False
    hosts = [request.headers.get("Host", ""), request.headers.get("X-Forwarded-Host", "").split(",")[0]]
    return bool(netloc) and any(netloc == h.strip().lower() for h in hosts)


def refuse_cross_site_writes() -> None:
    """``before_request``: 403 ``cross_site_request`` for a write a browser sends on behalf of another site."""
    if request.method not in WRITE_METHODS:
        return
    origin = request.headers.get("Origin")
    site = (request.headers.get("Sec-Fetch-Site") or "").strip().lower()
    listed = _http().cors_origins
    if origin is not None and origin != "null" and ("*" in listed or origin.lower().rstrip("/") in listed):
        return
    if site in ("cross-site", "same-site") or (origin is not None and not _own_origin(origin)):
        raise CrossSiteRequestError(
            f"a page of another site ({(origin or site)[:200]}) may not write to this service; list trusted origins in"
            " FACEREC_HTTP_CORS_ORIGINS", details={"origin": origin[:200]} if origin else None)


# --- response headers ----------------------------------------------------------------------------------------
def _hashes(kind: str, blocks: list[tuple[str, str]]) -> str:
    return "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
                   for k, body in blocks if k.lower() == kind)


@functools.lru_cache(maxsize=8)
def html_csp(html: str, styles: tuple[str, ...] = ()) -> str:
    """:data:`PAGE_CSP` allowing exactly the inline ``<script>`` and ``<style>`` blocks of ``html`` (and ``styles``)."""
    blocks = _INLINE.findall(html) + [("style", css) for css in styles]
    return PAGE_CSP.format(script=_hashes("script", blocks), style=_hashes("style", blocks))


def add_response_headers(response: Response) -> Response:
    """``after_request``: ``nosniff`` on everything; the page headers on the docs and the OpenAPI document."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.blueprint in PUBLIC_BLUEPRINTS or request.endpoint in DOCS_ENDPOINTS:
        html = response.mimetype == "text/html" and not response.is_streamed
        set_page_headers(response, html_csp(response.get_data(as_text=True), SWAGGER_UI_STYLES) if html else DATA_CSP)
    return response


def install(app: Flask) -> None:
    """The Host and cross-site checks first among the app's ``before_request`` hooks, the headers, CORS."""
    settings = app.config["FACEREC_SETTINGS"].http
    hooks = app.before_request_funcs.setdefault(None, [])
    hooks[:0] = [check_host, refuse_cross_site_writes]
    app.after_request(add_response_headers)
    if settings.cors_origins:
        CORS(app, origins=settings.cors_origins, allow_headers=CORS_ALLOW_HEADERS,
             expose_headers=CORS_EXPOSE_HEADERS, supports_credentials=False, max_age=600)

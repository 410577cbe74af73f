"""Optional API keys (``X-API-Key``, or Azure's ``Ocp-Apim-Subscription-Key``), each scoped to galleries; admin keys may also delete and re-embed.

When keys are on, every endpoint but the public ones (health, readiness,
``/openapi.json``, the docs) needs a valid key: 401 when it is missing or
wrong, 403 when the gallery it names is out of the key's scope.  A route's
``<gallery>`` path parameter is checked before the view runs; galleries named
in a body or query (``/recognition``) are checked by the view with
:func:`authorize_gallery`.
"""
from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from flask import current_app, g, request

from ..errors import ForbiddenError, UnauthorizedError
from .keys import ApiKey
from .service import get_service

F = TypeVar("F", bound=Callable[..., Any])

HEADER = "X-API-Key"
#: the key header of Azure's SDKs, accepted as well (``X-API-Key`` wins when both are sent)
AZURE_HEADER = "Ocp-Apim-Subscription-Key"
PUBLIC_BLUEPRINTS = {"openapi", "swagger"}  # flask-openapi3's docs blueprints


def public(func: F) -> F:
    """Mark a view as reachable without a key."""
    func._facerec_public = True  # type: ignore[attr-defined]
    return func


def admin_only(func: F) -> F:
    """Mark a view as needing an admin key (when keys are on)."""
    func._facerec_admin = True  # type: ignore[attr-defined]
    return func


def current_key() -> ApiKey | None:
    """The caller's key record; ``None`` when keys are off."""
    return g.get("api_key")


def authorize_gallery(gallery: str) -> None:
    key = current_key()
    if key is not None and not key.allows(unicodedata.normalize("NFC", gallery)):
        raise ForbiddenError(f"this API key may not use gallery {gallery!r}", details={"gallery": gallery})


def visible(galleries: Iterable[Any]) -> list[Any]:
    """The galleries (objects with ``.name``) the caller's key may see."""
    key = current_key()
    return [x for x in galleries if key is None or key.allows(x.name)]


def authenticate() -> ApiKey | None:
    """Check the request's key header and remember the key (``None`` when keys are off).

    Called for every non-public view; public views that also accept a key call it themselves.
    """
    service = get_service()
    if service.keys is None:
        return None
    presented = request.headers.get(HEADER) or request.headers.get(AZURE_HEADER)
    if not presented:
        raise UnauthorizedError(f"this endpoint needs an API key in the {HEADER} header")
    key = service.keys.verify(presented)
    if key is None:
        raise UnauthorizedError("the API key is not valid (unknown, malformed or revoked)")
    g.api_key = key
    return key


def check_request() -> None:
    """Flask ``before_request`` hook: the key and gallery checks of every non-public view."""
    service = get_service()
    if service.keys is None or request.endpoint is None:  # keys off, or 404/405 on the way
        return
    if request.method == "OPTIONS" or request.blueprint in PUBLIC_BLUEPRINTS or request.endpoint == "static":
        return
    view = current_app.view_functions.get(request.endpoint)
    if view is None or getattr(view, "_facerec_public", False):
        return
    key = authenticate()
    gallery = (request.view_args or {}).get("gallery")
    if isinstance(gallery, str):
        authorize_gallery(gallery)
    if getattr(view, "_facerec_admin", False) and not key.admin:
        raise ForbiddenError("this operation needs an admin API key")

"""How the API answers: JSON everywhere, errors as ``{"error": text}`` (or ``{"errors":
[{"path", "message"}]}`` for an invalid spec or body) and never a traceback, and who
asks: the principal of the ``Authorization: Bearer <key>`` header."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable

from aiohttp import web

from ..batch import jsonable
from ..errors import SpecError
from .keys import Principal

logger = logging.getLogger(__name__)

MAX_BODY = 2**20
PRINCIPAL = web.RequestKey("principal", Principal)
_MESSAGES = {404: "not found", 405: "method not allowed", 413: f"request body too large (at most {MAX_BODY} bytes)"}


def json_response(data, status: int = 200, **kwargs) -> web.Response:
    """JSON with NaN and Infinity as null (JSON has neither)."""
    return web.json_response(jsonable(data), status=status,
                             dumps=lambda d: json.dumps(d, allow_nan=False, default=str), **kwargs)


def error(status: int, message: str, **kwargs) -> web.Response:
    return json_response({"error": message}, status, **kwargs)


def spec_errors(exc: SpecError) -> web.Response:
    return json_response({"errors": [{"path": e.path, "message": e.reason} for e in getattr(exc, "errors", [exc])]},
                         400)


def bad_request(message: str) -> web.HTTPBadRequest:
    """An error to raise from deep in a handler: 400 ``{"error": message}``."""
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every error as JSON: aiohttp's own (404, 405, 413 ...) by their status, an
    unexpected one as 500 in one line, its traceback logged here."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.content_type == "application/json" and exc.text:   # raised with its JSON body already
            return json_response(json.loads(exc.text), exc.status)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error(exc.status, _MESSAGES.get(exc.status, exc.reason.lower()), headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - logged here with its traceback; the client gets one line
        logger.exception("%s %s failed", request.method, request.path)
        return error(500, "internal error (the server's log has the details)")


def authenticated(principal_of: Callable[[web.Request, str], Principal | None], public: Callable[[str], bool]):
    """A middleware answering 401 unless the bearer key is live (``principal_of(request,
    key)``), except on ``public`` paths; the principal is ``request[PRINCIPAL]``."""
    @web.middleware
    async def middleware(request: web.Request, handler):
        if public(request.path):
            return await handler(request)
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        principal = principal_of(request, key.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            return error(401, "a valid API key is required: Authorization: Bearer <key>",
                         headers={"WWW-Authenticate": 'Bearer realm="etl-actors"'})
        request[PRINCIPAL] = principal
        return await handler(request)
    return middleware


def customer_of(request: web.Request) -> str | None:
    """The customer a customer key is limited to; None for an admin."""
    principal = request[PRINCIPAL]
    return None if principal.is_admin else principal.customer_id


def is_admin(request: web.Request) -> bool:
    return request[PRINCIPAL].is_admin


async def read_body(request: web.Request, allowed: tuple[str, ...] | None = None) -> dict:
    """The JSON object of the body ({} for none); 400 when it is not one, or (with
    ``allowed``) when it has another key."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    for key in body:
        if allowed is not None and key not in allowed:
            raise web.HTTPBadRequest(text=json.dumps({"errors": [{"path": key, "message": "unknown key"}]}),
                                     content_type="application/json")
    return body

"""Every error the service returns, and the one place that maps them to HTTP.

Handlers raise a `ServiceError`; `error_response` turns it into
`{"error": {"type", "message", "param"}}` with its status, or into OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` on the OpenAI-compatible paths, with the same
status. Pydantic's own validation errors are mapped to 400 here too (never 422), naming the
offending field.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from common.protocol import AUTH_SCHEME, OPENAI_PATHS

log = logging.getLogger("sampler_service")


class ServiceError(Exception):
    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class InvalidRequest(ServiceError):
    status_code = 400
    error_type = "invalid_request"


class AdapterRejected(InvalidRequest):
    """An uploaded adapter failed validation or loading; the previous version keeps serving."""


class NotFound(ServiceError):
    status_code = 404
    error_type = "not_found"


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "unauthorized"

    def __init__(self, message: str):
        super().__init__(message, headers={"WWW-Authenticate": AUTH_SCHEME})


class Forbidden(ServiceError):
    status_code = 403
    error_type = "forbidden"


class RetryLater(ServiceError):
    """An error that says when to try again: a `Retry-After` header, which the clients honour."""

    default_retry_after_s = 1

    def __init__(self, message: str, retry_after_s: int | None = None):
        wait = self.default_retry_after_s if retry_after_s is None else retry_after_s
        super().__init__(message, headers={"Retry-After": str(wait)})


class TooManyRequests(RetryLater):
    status_code = 429
    error_type = "too_many_requests"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "payload_too_large"


class Overloaded(RetryLater):
    status_code = 503
    error_type = "overloaded"


class EngineUnavailable(RetryLater):
    status_code = 503
    error_type = "engine_unavailable"
    default_retry_after_s = 5


# OpenAI's `type` for each status; our own `error_type` becomes OpenAI's `code`.
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                 429: "rate_limit_error", 503: "service_unavailable_error"}


def is_openai_path(path: str) -> bool:
    return path.rstrip("/") in OPENAI_PATHS


def error_response(exc: ServiceError, path: str = "") -> JSONResponse:
    if is_openai_path(path):
        body = {"error": {"message": exc.message, "type": _OPENAI_TYPES.get(exc.status_code, "server_error"),
                          "param": exc.param, "code": exc.error_type}}
    else:
        body = {"error": {"type": exc.error_type, "message": exc.message, "param": exc.param}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_union_tag(part: object) -> bool:
    """pydantic names the union member that failed in `loc` (`str`, `list[int]`, `function-after[...]`);
    the field a client sent is the path without those."""
    return isinstance(part, str) and ("[" in part or "-" in part or part in _UNION_TAGS)


def invalid_request_from(errors: Sequence[Any]) -> InvalidRequest:
    """Turn pydantic's error list into one 400 that names the first offending field."""
    first = errors[0] if errors else {}
    # loc looks like ("body", "temperature") or ("query", "limit") or ("prompts", 3, "id").
    parts = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path") and not _is_union_tag(p)]
    param = ".".join(parts) or None
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return InvalidRequest(f"{param}: {message}" if param else message, param=param)


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(invalid_request_from(exc.errors()), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: NotFound, 413: PayloadTooLarge}
        cls = kinds.get(exc.status_code, InvalidRequest if exc.status_code < 500 else ServiceError)
        # Keep the exception's headers; a 405's `Allow` lists every method of the path, across routes.
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        error = cls(str(exc.detail), headers=headers)
        error.status_code = exc.status_code
        return error_response(error, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(ServiceError(f"internal error: {type(exc).__name__}: {exc}"), request.url.path)

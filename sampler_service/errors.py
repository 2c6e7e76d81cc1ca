"""Every error the service returns, and the one place that maps them to HTTP.

Handlers raise a `ServiceError`; `error_response` turns it into
`{"error": {"type", "message", "param"}}` with its status. Pydantic's own validation errors are
mapped to 400 here too (never 422), naming the offending field.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "payload_too_large"


class Overloaded(ServiceError):
    status_code = 503
    error_type = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class EngineUnavailable(ServiceError):
    status_code = 503
    error_type = "engine_unavailable"

    def __init__(self, message: str, retry_after_s: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


def error_response(exc: ServiceError) -> JSONResponse:
    body = {"error": {"type": exc.error_type, "message": exc.message, "param": exc.param}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def invalid_request_from(errors: list[dict]) -> InvalidRequest:
    """Turn pydantic's error list into one 400 that names the first offending field."""
    first = errors[0] if errors else {}
    # loc looks like ("body", "temperature") or ("query", "limit") or ("prompts", 3, "id").
    parts = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(parts) or None
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return InvalidRequest(f"{param}: {message}" if param else message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(invalid_request_from(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: NotFound, 413: PayloadTooLarge}
        cls = kinds.get(exc.status_code, InvalidRequest if exc.status_code < 500 else ServiceError)
        error = cls(str(exc.detail))
        error.status_code = exc.status_code
        return error_response(error)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(ServiceError(f"internal error: {type(exc).__name__}: {exc}"))

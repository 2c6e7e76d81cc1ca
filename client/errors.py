"""Exceptions the client raises. Each carries the server's own error message and field."""

from __future__ import annotations

from common.errors import SSDError


class SSDClientError(SSDError):
    """Base class for every error the client raises."""


class ServiceUnavailable(SSDClientError):
    """The server could not be reached, or kept answering 503 after every retry."""


class JobStalled(SSDClientError):
    """A followed job made no progress for longer than the caller's stall timeout."""


class APIError(SSDClientError):
    """The server answered with an error status. `param` names the offending field, if any."""

    def __init__(self, status_code: int, error_type: str, message: str, param: str | None = None):
        self.status_code = status_code
        self.error_type = error_type
        self.message = message
        self.param = param
        where = f" (field: {param})" if param else ""
        super().__init__(f"HTTP {status_code} {error_type}: {message}{where}")


class BadRequest(APIError):
    pass


class NotFound(APIError):
    pass

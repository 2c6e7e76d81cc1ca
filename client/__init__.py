"""Client library for the SSD sampling service, and the `ssd` command."""

from client.api import AsyncSamplerClient, SamplerClient
from client.errors import APIError, BadRequest, NotFound, ServiceUnavailable, SSDClientError

__all__ = ["SamplerClient", "AsyncSamplerClient", "APIError", "BadRequest", "NotFound",
           "ServiceUnavailable", "SSDClientError"]

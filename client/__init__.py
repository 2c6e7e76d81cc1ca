"""The HTTP client library for the SSD sampling service: one core, sync and async."""

from client.api import AsyncSamplerClient, SamplerClient
from client.errors import APIError, BadRequest, JobStalled, NotFound, ServiceTimeout, ServiceUnavailable, SSDClientError

__all__ = ["SamplerClient", "AsyncSamplerClient", "APIError", "BadRequest", "JobStalled", "NotFound",
           "ServiceTimeout", "ServiceUnavailable", "SSDClientError"]

"""API keys with scopes, and a cap on each key's requests in flight.

Keys come from `--api-keys-file FILE` and/or the `SSD_API_KEYS` environment variable, one key a
line as `KEY SCOPE[,SCOPE] [MAX_IN_FLIGHT]` (lines separated by `;` in the variable). Scopes:
`sample` (sampling, the OpenAI endpoints, reading jobs, samples and adapters) and `admin` (creating
and cancelling jobs, uploading and deleting adapters); `admin` includes `sample`.

With no key configured the service is open, which `check_bind` allows on a loopback address only.
A key is never logged and never echoed in an error: errors about a key line name the line number.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from common.config import ConfigError, require
from common.protocol import API_KEYS_ENV, API_SCOPES, MIN_API_KEY_CHARS, SCOPE_ADMIN
from sampler_service.errors import Forbidden, TooManyRequests, Unauthorized

RETRY_AFTER_S = 1           # a key at its cap waits for one of its own requests to finish
RELEASES_SCOPE_KEY = "ssd_in_flight_releases"   # an ASGI scope key of ours
_HOW_TO_ADD_KEYS = (f"add keys with `ssd serve --api-keys-file FILE` (one `KEY sample,admin` line per key) "
                    f"or {API_KEYS_ENV}='KEY1 sample,admin;KEY2 sample'")


@dataclass(frozen=True)
class ApiKey:
    secret: str = field(repr=False)
    scopes: frozenset[str]
    max_in_flight: int | None    # None: the server's max_in_flight_per_key
    label: str                   # "api-keys.txt line 3": what logs and metrics may show instead of the key

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or SCOPE_ADMIN in self.scopes


def parse_key_lines(lines: list[str], source: str) -> list[ApiKey]:
    """Parse `KEY SCOPE[,SCOPE] [MAX_IN_FLIGHT]` lines; blank lines and `#` comments are skipped."""
    keys: list[ApiKey] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        parts = line.split()
        require(len(parts) in (2, 3), f"{where}: expected `KEY SCOPE[,SCOPE] [MAX_IN_FLIGHT]`, got "
                                      f"{len(parts)} fields")
        secret, scope_text = parts[0], parts[1]
        require(len(secret) >= MIN_API_KEY_CHARS, f"{where}: a key needs at least {MIN_API_KEY_CHARS} characters")
        scopes = frozenset(s for s in scope_text.split(",") if s)
        unknown = sorted(scopes - set(API_SCOPES))
        require(bool(scopes) and not unknown, f"{where}: unknown scope(s) {unknown}; known: {list(API_SCOPES)}")
        cap = None
        if len(parts) == 3:
            require(parts[2].isdigit() and int(parts[2]) >= 1, f"{where}: MAX_IN_FLIGHT must be an integer >= 1")
            cap = int(parts[2])
        require(all(not hmac.compare_digest(secret, k.secret) for k in keys), f"{where}: the key appears twice")
        keys.append(ApiKey(secret=secret, scopes=scopes, max_in_flight=cap, label=where))
    return keys


def load_keys(api_keys_file: Path | None, environ: Mapping[str, str] | None = None) -> list[ApiKey]:
    """The keys of the file and of `SSD_API_KEYS`, together."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    keys: list[ApiKey] = []
    if api_keys_file is not None:
        try:
            text = Path(api_keys_file).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the API keys file {api_keys_file}: {exc.strerror}") from None
        keys += parse_key_lines(text.splitlines(), str(api_keys_file))
    keys += parse_key_lines(env.get(API_KEYS_ENV, "").split(";"), API_KEYS_ENV)
    secrets = [k.secret for k in keys]
    require(len(set(secrets)) == len(secrets), f"a key appears both in {api_keys_file} and in {API_KEYS_ENV}")
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False   # a hostname may resolve to anything: treat it as public


def check_bind(host: str, keys: list[ApiKey]) -> None:
    """Refuse to serve an open API on an address other machines can reach."""
    require(bool(keys) or is_loopback(host),
            f"refusing to bind {host} with no API keys: anyone who can reach the port could upload adapters, "
            f"cancel jobs and sample. {_HOW_TO_ADD_KEYS}; or bind 127.0.0.1.")


class KeyRing:
    """The configured keys and each one's requests in flight."""

    def __init__(self, keys: list[ApiKey], default_max_in_flight: int):
        self.keys = keys
        self.default_max_in_flight = default_max_in_flight
        self.in_flight: dict[str, int] = {k.label: 0 for k in keys}

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def lookup(self, presented: str) -> ApiKey | None:
        """Constant time in the key's content: every configured key is compared, with no early exit."""
        found = None
        for key in self.keys:
            if hmac.compare_digest(presented.encode(), key.secret.encode()):
                found = key
        return found

    def acquire(self, key: ApiKey) -> Callable[[], None]:
        cap = key.max_in_flight or self.default_max_in_flight
        if self.in_flight[key.label] >= cap:
            raise TooManyRequests(f"this API key already has {cap} requests in flight; retry when one finishes",
                                  retry_after_s=RETRY_AFTER_S)
        self.in_flight[key.label] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight[key.label] -= 1
        return release


# auto_error=False: a missing header is our 401 (in the endpoint's error shape), not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer KEY`; see docs/api.md, \"API keys\"")


def require_scope(scope: str) -> Any:
    """A route dependency: authenticate the caller, check `scope`, and count the request against the
    key's cap until the response is fully sent (`InFlightReleaser` gives the slot back)."""

    async def check(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        ring: KeyRing = request.app.state.ssd.keyring
        if not ring.enabled:
            return
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthorized("an API key is required: send `Authorization: Bearer KEY`")
        key = ring.lookup(credentials.credentials)
        if key is None:
            raise Unauthorized("the API key is not valid")
        if not key.allows(scope):
            raise Forbidden(f"this API key lacks the `{scope}` scope")
        request.scope[RELEASES_SCOPE_KEY].append(ring.acquire(key))

    return Depends(check)


class InFlightReleaser:
    """Pure ASGI middleware: hands back the per-key slots a request took once its response is fully
    sent, streamed bodies and client disconnects included, whatever order FastAPI runs dependency
    clean-up in."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        releases: list[Callable[[], None]] = []
        scope[RELEASES_SCOPE_KEY] = releases
        try:
            await self.app(scope, receive, send)
        finally:
            for release in releases:
                release()

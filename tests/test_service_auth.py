"""API keys, scopes, the public-bind guard and the OpenAPI schema, at the FastAPI app level.

The engine is not started here (the app's lifespan never runs), so engine-facing routes answer 503
once auth has let a request through; what is under test is what happens before that. The same
rules against the real engine are in tests/engine/test_openai.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from common.config import ConfigError
from common.protocol import API_KEYS_ENV
from sampler_service.auth import KeyRing, check_bind, load_keys, parse_key_lines
from sampler_service.errors import TooManyRequests

ADMIN = "admin-key-0123456789abcdef"
SAMPLER = "sample-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from sampler_service.api import create_app
    from sampler_service.config import ServiceConfig

    root = tmp_path_factory.mktemp("auth")
    (root / "keys.txt").write_text(f"# comment\n\n{ADMIN} sample,admin\n{SAMPLER} sample\n")
    return create_app(ServiceConfig(data_dir=root / "data", api_keys_file=root / "keys.txt",
                                    metrics_require_key=False))


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("line, fragment", [
    ("short sample", "at least"),
    (f"{ADMIN} root", "unknown scope"),
    (f"{ADMIN}", "expected"),
    (f"{ADMIN} sample 0", "MAX_IN_FLIGHT"),
    (f"{ADMIN} sample many", "MAX_IN_FLIGHT"),
])
def test_bad_key_lines_name_the_line_but_never_the_key(line, fragment):
    with pytest.raises(ConfigError) as err:
        parse_key_lines(["# first", line], "keys.txt")
    assert fragment in str(err.value) and "keys.txt line 2" in str(err.value)
    assert ADMIN not in str(err.value)


def test_keys_come_from_the_file_and_the_environment(tmp_path):
    (tmp_path / "keys").write_text(f"{ADMIN} admin\n")
    keys = load_keys(tmp_path / "keys", {API_KEYS_ENV: f"{SAMPLER} sample; other-key-0123456789ab sample 3"})
    assert [sorted(k.scopes) for k in keys] == [["admin"], ["sample"], ["sample"]]
    assert keys[2].max_in_flight == 3
    assert keys[0].allows("sample") and keys[0].allows("admin") and not keys[1].allows("admin")
    with pytest.raises(ConfigError, match="twice"):
        load_keys(None, {API_KEYS_ENV: f"{SAMPLER} sample;{SAMPLER} admin"})
    assert SAMPLER not in repr(keys[1])


@pytest.mark.parametrize("host, has_keys, allowed", [
    ("127.0.0.1", False, True), ("localhost", False, True), ("::1", False, True),
    ("0.0.0.0", False, False), ("::", False, False), ("sampler.example.org", False, False),
    ("0.0.0.0", True, True),
])
def test_public_bind_needs_keys(host, has_keys, allowed):
    keys = parse_key_lines([f"{ADMIN} admin"], "x") if has_keys else []
    if allowed:
        check_bind(host, keys)
    else:
        with pytest.raises(ConfigError, match="--api-keys-file"):
            check_bind(host, keys)


def test_serving_a_public_address_with_no_keys_is_refused_at_start(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != API_KEYS_ENV}
    proc = subprocess.run([sys.executable, "-m", "sampler_service", "--host", "0.0.0.0", "--data-dir",
                           str(tmp_path / "data")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "refusing to bind 0.0.0.0" in proc.stderr and "--api-keys-file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_per_key_cap_answers_429_with_retry_after():
    key = parse_key_lines([f"{ADMIN} sample 2"], "x")[0]
    ring = KeyRing([key], default_max_in_flight=64)
    releases = [ring.acquire(key), ring.acquire(key)]
    with pytest.raises(TooManyRequests) as err:
        ring.acquire(key)
    assert err.value.status_code == 429 and int(err.value.headers["Retry-After"]) >= 1
    releases[0]()
    releases[0]()  # a release is idempotent
    assert ring.in_flight[key.label] == 1
    ring.acquire(key)
    assert ring.lookup(ADMIN) is key and ring.lookup(ADMIN + "x") is None and ring.lookup("") is None


@pytest.mark.parametrize("method, path", [
    ("post", "/v1/samples"), ("get", "/v1/jobs"), ("post", "/v1/jobs"), ("delete", "/v1/jobs/j1"),
    ("get", "/v1/jobs/j1/samples"), ("post", "/v1/adapters"), ("delete", "/v1/adapters/a"),
    ("get", "/v1/models"), ("post", "/v1/completions"), ("post", "/v1/chat/completions"),
])
def test_every_keyed_route_answers_401_without_a_valid_key(client, method, path):
    for headers in ({}, bearer("not-a-key-0123456789"), {"Authorization": f"Basic {ADMIN}"}):
        response = client.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["message"]


@pytest.mark.parametrize("method, path", [
    ("post", "/v1/jobs"), ("delete", "/v1/jobs/j1"), ("post", "/v1/adapters"), ("delete", "/v1/adapters/a")])
def test_a_sample_key_gets_403_on_admin_routes(client, method, path):
    response = client.request(method, path, headers=bearer(SAMPLER), json={})
    assert response.status_code == 403
    assert "admin" in response.json()["error"]["message"]
    # the admin key passes auth and reaches the handler (400 or 404 or 503: not 401/403)
    assert client.request(method, path, headers=bearer(ADMIN), json={}).status_code not in (401, 403)


def test_openai_paths_answer_in_openai_error_shape(client):
    error = client.post("/v1/chat/completions", json={}).json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "authentication_error"
    error = client.post("/v1/completions", headers=bearer(SAMPLER), json={"model": "demo", "prompt": "x",
                                                                          "temperature": -1}).json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "temperature"


def test_health_and_metrics_are_open_and_metrics_can_be_protected(client, tmp_path):
    from sampler_service.api import create_app
    from sampler_service.config import ServiceConfig

    assert client.get("/health").status_code == 503          # engine not started, but no 401
    assert client.get("/metrics").status_code == 200
    (tmp_path / "keys").write_text(f"{SAMPLER} sample\n")
    guarded = TestClient(create_app(ServiceConfig(data_dir=tmp_path / "data", api_keys_file=tmp_path / "keys",
                                                  metrics_require_key=True)))
    assert guarded.get("/metrics").status_code == 401
    assert guarded.get("/metrics", headers=bearer(SAMPLER)).status_code == 200
    assert guarded.get("/health").status_code == 503


def test_405_lists_every_method_of_the_path(client):
    response = client.put("/v1/jobs", headers=bearer(ADMIN))
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


def test_openapi_declares_bodies_errors_and_security(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/v1/models", "/v1/completions", "/v1/chat/completions"):
        assert path in paths
    for path, method in (("/v1/samples", "post"), ("/v1/jobs", "post"), ("/v1/completions", "post"),
                         ("/v1/chat/completions", "post")):
        operation = paths[path][method]
        assert "application/json" in operation["requestBody"]["content"]
        assert {"400", "401", "403", "404", "429", "503"} <= set(operation["responses"])
        assert "422" not in operation["responses"] and operation["security"]
    assert set(paths["/v1/adapters"]["post"]["requestBody"]["content"]) == {"multipart/form-data",
                                                                             "application/json"}
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert "security" not in paths["/health"]["get"]
    assert "text/event-stream" in paths["/v1/chat/completions"]["post"]["responses"]["200"]["content"]

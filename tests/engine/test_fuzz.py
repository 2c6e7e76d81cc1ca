"""schemathesis fuzzes every operation of the live service's OpenAPI schema (the native API and the
OpenAI-compatible one) with the real engine behind it. It must find no server error and no answer
that breaks the schema (status code, content type, headers, body), and the engine must still serve
afterwards.

The fuzzer explores request shapes, not workloads: before a generated request goes out, its
generation length, `n` and prompt count are capped (`_bounded`), so that the run fits CI on two CPU
cores. Every other field goes out as generated.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server_harness import auth_headers

pytestmark = pytest.mark.engine

EXAMPLES_PER_OPERATION = 20
REQUEST_TIMEOUT_S = 120
MAX_FUZZ_TOKENS = 8
MAX_FUZZ_N = 2
MAX_FUZZ_PROMPTS = 3
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


def _bounded(body: object) -> None:
    """Cap the work one generated request asks of the engine, in place."""
    if not isinstance(body, dict):
        return
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(name), int) and not isinstance(body[name], bool) and body[name] > MAX_FUZZ_TOKENS:
            body[name] = MAX_FUZZ_TOKENS
    if isinstance(body.get("n"), int) and not isinstance(body["n"], bool) and body["n"] > MAX_FUZZ_N:
        body["n"] = MAX_FUZZ_N
    for name in ("prompts", "messages", "prompt"):
        if isinstance(body.get(name), list) and len(body[name]) > MAX_FUZZ_PROMPTS:
            body[name] = body[name][:MAX_FUZZ_PROMPTS]
    asks_for_text = any(name in body for name in ("prompts", "messages"))
    if asks_for_text and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_FUZZ_TOKENS   # the native and chat default is the rest of the context


def test_fuzz_finds_no_server_error_and_no_schema_violation(sampler_url):
    schema = schemathesis.openapi.from_url(sampler_url + "/openapi.json")
    failures: dict[str, str] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14, [op.label for op in operations]   # the OpenAI routes are in the schema

    for operation in operations:
        # No shrinking: a failure is reported as generated, and the run stays bounded.
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck), database=None, derandomize=True)
        @given(case=operation.as_strategy())
        def run(case) -> None:
            _bounded(case.body)
            response = case.call(headers=auth_headers(), timeout=REQUEST_TIMEOUT_S)
            case.validate_response(response, checks=CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failures, report them all
            failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:2000]}"
    assert failures == {}


def test_the_engine_serves_after_fuzzing(sampler_url):
    with httpx.Client(base_url=sampler_url, timeout=300, headers=auth_headers()) as http:
        assert http.get("/health").json()["status"] == "ok"
        response = http.post("/v1/chat/completions", json={"model": "demo", "max_tokens": 4,
                                                           "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] is not None

"""Shared fixtures. `sampler_server` starts the one real server of the session, on first use."""

from __future__ import annotations

import os

import pytest

from client.local_server import LocalServer
from common.protocol import API_KEY_ENV
from tests.pg_server import PostgresTestServer
from tests.server_harness import TEST_ADMIN_KEY, make_test_server

# Tests that train or run models share two cores with the engine; more threads only thrash.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def sampler_server(tmp_path_factory: pytest.TempPathFactory) -> LocalServer:
    root = tmp_path_factory.mktemp("sampler")
    # Adapters by path may come from anywhere under this session's temporary folders.
    server = make_test_server(root / "data", root / "server.log", adapter_dir=tmp_path_factory.getbasetemp())
    previous_key = os.environ.get(API_KEY_ENV)
    os.environ[API_KEY_ENV] = TEST_ADMIN_KEY  # SamplerClient, `ssd` subprocesses and the trainer read it
    server.start()
    yield server
    server.stop()
    if previous_key is None:
        os.environ.pop(API_KEY_ENV, None)
    else:
        os.environ[API_KEY_ENV] = previous_key


@pytest.fixture(scope="session")
def postgres_server() -> PostgresTestServer:
    """One real PostgreSQL for the session, started on first use."""
    server = PostgresTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresTestServer) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    return postgres_server.create_database()


@pytest.fixture(scope="session")
def sampler_url(sampler_server: LocalServer) -> str:
    return sampler_server.url


@pytest.fixture(scope="session")
def demo_model_path() -> str:
    from common.models import resolve_model

    return resolve_model("demo")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the real-engine tests last: the session server starts at their first use and holds
    several GiB until the session ends, which the model-training unit tests would rather have."""
    items.sort(key=lambda item: item.get_closest_marker("engine") is not None)

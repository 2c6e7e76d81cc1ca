"""Two real sampler replicas over one real PostgreSQL: a replica killed mid-job loses and duplicates
nothing, any replica serves the same pages, and an adapter swap while both serve fails no request.

Each replica is a full `python -m sampler_service` with its own small vLLM engine on one of the
two cores. The module starts three engines in all (A, B, and B's successor after the kill).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from client.local_server import LocalServer
from sampler_service.store import open_store
from tests.engine.test_adapters import PROMPT, make_adapter, upload

pytestmark = pytest.mark.engine

LEASE_S = 3
N = 2
PROMPTS = 24


def _replica(root: Path, name: str, store_url: str, core: int) -> LocalServer:
    return LocalServer("demo", root / name, root / f"{name}.log", extra_args=[
        "--store", store_url, "--replica-id", name, "--lease-s", str(LEASE_S), "--cpu-threads", str(core),
        "--enforce-eager", "true", "--kv-cache-gb", "0.5", "--max-model-len", "512", "--max-num-seqs", "16",
        "--job-concurrency", "4", "--max-lora-rank", "16", "--log-level", "warning"])


@pytest.fixture(scope="module")
def cluster(postgres_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    url = postgres_server.create_database()
    servers = {"A": _replica(root, "A", url, 0), "B": _replica(root, "B", url, 1)}
    with ThreadPoolExecutor(2) as pool:  # the two engines load side by side
        list(pool.map(LocalServer.start, servers.values()))
    state = {"url": url, "root": root, "servers": servers}
    yield state
    for server in state["servers"].values():
        server.stop()


def _prompts(count: int) -> list[dict]:
    return [{"id": f"task-{i}", "messages": [{"role": "user", "content": f"Write a Python function number {i}."}]}
            for i in range(count)]


def _pull_all(url: str, job_id: str, limit: int = 5) -> list[list[dict]]:
    pages, cursor = [], 0
    with httpx.Client(base_url=url, timeout=60) as http:
        while True:
            page = http.get(f"/v1/jobs/{job_id}/samples",
                            params={"after": cursor, "limit": limit, "include_filtered": True}).json()
            assert page["job_status"] == "completed"
            pages.append(page["samples"])
            cursor = page["next_cursor"]
            if not page["has_more"]:
                return pages


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_replica_killed_mid_job_loses_and_duplicates_nothing(cluster):
    a, b = cluster["servers"]["A"], cluster["servers"]["B"]
    store = open_store(cluster["url"], cluster["root"])
    try:
        with httpx.Client(base_url=a.url, timeout=60) as http:
            job_id = http.post("/v1/jobs", json={"prompts": _prompts(PROMPTS), "n": N, "temperature": 1.2,
                                                  "max_tokens": 48, "filters": {"drop_empty": False}}).json()["id"]
        # Both replicas work on the job (B found it through the store), and some prompts are done.
        _wait(lambda: {"A", "B"} <= set(store.lease_owners(job_id).values()), 120, "both replicas to lease")
        _wait(lambda: store.get_job(job_id)["prompts_done"] >= 2, 300, "two prompts done")
        held_by_b = [idx for idx, owner in store.lease_owners(job_id).items() if owner == "B"]
        assert held_by_b and store.get_job(job_id)["status"] == "running"
        b.kill9()

        # A takes B's prompts over once B's leases expire, and the last write completes the job.
        _wait(lambda: store.get_job(job_id)["status"] == "completed", 600, "the job to complete on A")
        samples = store.samples_page(job_id, 0, 10_000, include_filtered=True)
        keys = [(s["prompt_id"], s["sample_index"]) for s in samples]
        assert len(keys) == len(set(keys)) == PROMPTS * N  # every prompt exactly its n samples, none twice
        assert {s["prompt_id"] for s in samples} == {p["id"] for p in _prompts(PROMPTS)}
        job = store.get_job(job_id)
        assert (job["prompts_done"], job["samples_written"]) == (PROMPTS, PROMPTS * N)
    finally:
        store.close()

    # A new replica (B's successor) answers the pull API with the very same pages as A.
    successor = _replica(cluster["root"], "B2", cluster["url"], 1).start()
    cluster["servers"]["B"] = successor
    pages_a, pages_b = _pull_all(a.url, job_id), _pull_all(successor.url, job_id)
    assert pages_a == pages_b
    assert sum(len(p) for p in pages_a) == PROMPTS * N


def test_an_adapter_swap_while_both_replicas_serve_fails_no_request(cluster, tmp_path, demo_model_path):
    a, b = cluster["servers"]["A"], cluster["servers"]["B"]
    first = make_adapter(demo_model_path, tmp_path / "first", seed=1)
    second = make_adapter(demo_model_path, tmp_path / "second", seed=2)
    with httpx.Client(base_url=a.url, timeout=300) as http:
        response = upload(http, "swap", first)
        assert response.status_code == 201, response.text
        v1 = response.json()["version"]

    failures: list[str] = []
    seen: dict[str, list[tuple[float, int]]] = {"A": [], "B": []}
    stop = threading.Event()

    def hammer(name: str, url: str) -> None:
        with httpx.Client(base_url=url, timeout=300) as client:
            while not stop.is_set():
                sent = time.monotonic()
                response = client.post("/v1/samples", json={"prompts": [PROMPT], "adapter": "swap",
                                                            "max_tokens": 8, "temperature": 1.0})
                if response.status_code != 200:
                    failures.append(f"{name}: {response.status_code} {response.text[:300]}")
                else:
                    seen[name].append((sent, response.json()["adapter"]["version"]))

    threads = [threading.Thread(target=hammer, args=(n, s.url)) for n, s in (("A", a), ("B", b), ("B", b))]
    for thread in threads:
        thread.start()
    try:
        _wait(lambda: len(seen["A"]) >= 2 and len(seen["B"]) >= 2 or bool(failures), 120, "requests on v1")
        with httpx.Client(base_url=b.url, timeout=300) as http:  # uploaded through the other replica
            response = upload(http, "swap", second)
        moved_at = time.monotonic()
        assert response.status_code == 201, response.text
        v2 = response.json()["version"]
        _wait(lambda: sum(t > moved_at for t, _ in seen["A"]) >= 2 and sum(t > moved_at for t, _ in seen["B"]) >= 2
              or bool(failures), 120, "requests after the swap")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert v2 == v1 + 1
    for name in ("A", "B"):
        assert {v for t, v in seen[name] if t < moved_at} <= {v1, v2}
        # Once the alias has moved, each replica serves only the new version.
        assert {v for t, v in seen[name] if t > moved_at} == {v2}, name
        assert v1 in {v for _, v in seen[name]}  # and it really served the old one before
    listed = httpx.get(f"{a.url}/v1/adapters", timeout=30).json()["adapters"]
    assert [x["alias"] for x in listed if x["name"] == "swap"] == [f"swap@v{v2}"]

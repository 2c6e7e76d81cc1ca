"""The adapter registry across replicas, on a real PostgreSQL: a new version is loaded by every live
replica before the alias moves, a failure on one replica leaves the alias and names that replica,
and a replica that starts later loads the current version (its files come from the database).

The registry and the store are the things under test. The engine is a small recorder that accepts
or refuses `add_lora`, because starting several vLLM engines per case would take minutes; the
real engine does the same swap in tests/engine/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from common.protocol import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from sampler_service.adapters import AdapterRegistry
from sampler_service.errors import AdapterRejected
from sampler_service.store import open_store

LEASE_S = 30.0


class RecordingEngine:
    """Stands in for vLLM's add_lora/remove_lora only; `refuse` makes every load fail."""

    def __init__(self, refuse: str | None = None):
        self.loaded: dict[int, str] = {}
        self.refuse = refuse

    async def add_lora(self, request) -> None:
        if self.refuse:
            raise RuntimeError(self.refuse)
        assert Path(request.lora_path, ADAPTER_WEIGHTS_FILE).is_file()
        self.loaded[request.lora_int_id] = request.lora_name

    async def remove_lora(self, lora_id: int) -> None:
        self.loaded.pop(lora_id)


def make_adapter(folder: Path, rank: int = 4, fill: float = 0.5) -> Path:
    folder.mkdir(parents=True)
    (folder / ADAPTER_CONFIG_FILE).write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 8}))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": np.full((rank, 16), fill, np.float32),
               f"{prefix}.lora_B.weight": np.zeros((16, rank), np.float32)}, str(folder / ADAPTER_WEIGHTS_FILE))
    return folder


class Replica:
    def __init__(self, url: str, root: Path, name: str, *, refuse: str | None = None, max_rank: int = 16,
                 timeout_s: float = 20.0):
        self.name = name
        self.store = open_store(url, root)
        self.engine = RecordingEngine(refuse)
        # base_model_path names no local folder: validation checks the files, not the shapes.
        self.registry = AdapterRegistry(self.store, self.engine, root / name, str(root / "no-base-model"), max_rank,
                                        replica_id=name, lease_s=LEASE_S, sync_timeout_s=timeout_s)

    async def start(self) -> Replica:
        await asyncio.to_thread(self.store.heartbeat, self.name, LEASE_S)
        await self.registry.restore()
        return self

    async def stop(self) -> None:
        await self.registry.shutdown()
        self.store.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


async def eventually(predicate, timeout_s: float = 20.0) -> None:
    """Watchers look at the store once a second; give a loaded machine some slack."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "the watcher did not catch up"
        await asyncio.sleep(0.1)


def test_every_live_replica_loads_a_version_before_the_alias_moves(pg_url, tmp_path):
    async def scenario() -> None:
        a, b = await Replica(pg_url, tmp_path, "A").start(), await Replica(pg_url, tmp_path, "B").start()
        try:
            v1 = await a.registry.upload("ssd", make_adapter(tmp_path / "up1"))
            assert (v1.version, a.store.alias_of("ssd")) == (1, 1)
            # B loaded it from the database (its own folder), before the upload returned.
            assert list(b.engine.loaded.values()) == ["ssd@v1"]
            assert (tmp_path / "B" / "ssd" / "v1" / ADAPTER_WEIGHTS_FILE).read_bytes() == \
                (tmp_path / "up1" / ADAPTER_WEIGHTS_FILE).read_bytes()
            assert (await b.registry.resolve_latest("ssd")).version == 1

            await b.registry.upload("ssd", make_adapter(tmp_path / "up2", fill=0.25))
            assert (await a.registry.resolve_latest("ssd")).version == 2
            assert list(b.engine.loaded.values()) == ["ssd@v2"]  # B moved the alias: retired v1 at once
            await eventually(lambda: list(a.engine.loaded.values()) == ["ssd@v2"])  # A's watcher follows
        finally:
            await a.stop()
            await b.stop()

    run(scenario())


def test_a_failure_on_one_replica_leaves_the_alias_and_names_the_replica(pg_url, tmp_path):
    async def scenario() -> None:
        a = await Replica(pg_url, tmp_path, "A").start()
        await a.registry.upload("ssd", make_adapter(tmp_path / "up1"))
        b = await Replica(pg_url, tmp_path, "B-broken", refuse="out of LoRA slots").start()
        try:
            with pytest.raises(AdapterRejected) as caught:
                await a.registry.upload("ssd", make_adapter(tmp_path / "up2"))
            assert "B-broken" in caught.value.message and "out of LoRA slots" in caught.value.message
            assert a.store.alias_of("ssd") == 1
            assert {v["version"]: v["state"] for v in a.store.adapter_versions()} == {1: "ready", 2: "failed"}
            assert list(a.engine.loaded.values()) == ["ssd@v1"]  # the failed version is unloaded
            assert (await a.registry.resolve_latest("ssd")).version == 1
        finally:
            await a.stop()
            await b.stop()

    run(scenario())


def test_a_rank_one_replica_refuses_is_named(pg_url, tmp_path):
    async def scenario() -> None:
        a = await Replica(pg_url, tmp_path, "A", max_rank=16).start()
        b = await Replica(pg_url, tmp_path, "B-small", max_rank=2).start()
        try:
            with pytest.raises(AdapterRejected) as caught:
                await a.registry.upload("ssd", make_adapter(tmp_path / "up", rank=8))
            assert "B-small" in caught.value.message and "max_lora_rank" in caught.value.message
            assert a.store.alias_of("ssd") is None
        finally:
            await a.stop()
            await b.stop()

    run(scenario())


def test_a_live_replica_that_never_answers_times_the_upload_out_and_a_dead_one_is_ignored(pg_url, tmp_path):
    async def scenario() -> None:
        a = await Replica(pg_url, tmp_path, "A", timeout_s=2.0).start()
        try:
            a.store.heartbeat("gone", 1.0)
            a.store.remove_replica("gone")  # a stopped replica does not block an upload
            await a.registry.upload("ssd", make_adapter(tmp_path / "up1"))
            a.store.heartbeat("silent", LEASE_S)  # beats, but never loads anything
            with pytest.raises(AdapterRejected) as caught:
                await a.registry.upload("ssd", make_adapter(tmp_path / "up2"))
            assert "silent" in caught.value.message and "did not load" in caught.value.message
            assert a.store.alias_of("ssd") == 1
        finally:
            await a.stop()

    run(scenario())


def test_a_replica_that_starts_later_loads_the_current_version(pg_url, tmp_path):
    async def scenario() -> None:
        a = await Replica(pg_url, tmp_path, "A").start()
        await a.registry.upload("ssd", make_adapter(tmp_path / "up1"))
        await a.registry.upload("ssd", make_adapter(tmp_path / "up2"))
        late = await Replica(pg_url, tmp_path, "late").start()
        try:
            assert list(late.engine.loaded.values()) == ["ssd@v2"]
            assert late.registry.resolve("ssd").version == 2
            described = late.registry.describe()
            assert described[0]["alias"] == "ssd@v2" and described[0]["versions"][1]["loaded"]
            await a.registry.delete("ssd")
            await eventually(lambda: late.engine.loaded == {})  # the late replica's watcher follows the delete
        finally:
            await a.stop()
            await late.stop()

    run(scenario())


def test_sqlite_single_replica_upload_and_restart(tmp_path):
    async def scenario() -> None:
        url = str(tmp_path / "store.sqlite3")
        a = await Replica(url, tmp_path, "A").start()
        await a.registry.upload("ssd", make_adapter(tmp_path / "up1"))
        await a.stop()
        again = await Replica(url, tmp_path, "A").start()  # same folder: the files are local
        try:
            assert list(again.engine.loaded.values()) == ["ssd@v1"]
        finally:
            await again.stop()

    run(scenario())

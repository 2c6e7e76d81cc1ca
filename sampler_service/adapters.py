"""Adapter versions, the alias that points at the serving one, and draining of old versions.

The registry and the alias live in the store, so every replica sees the same ones. The life of an
upload, on the replica that receives it:

1. validate the files (they parse, rank <= max_lora_rank, base model matches, every targeted
   module exists with matching shapes), so the engine never sees a bad adapter;
2. register the next version in the store, copy the files to `data_dir/adapters/<name>/v<N>/`
   and, with PostgreSQL, into the database (so no replica needs a shared filesystem), mark the
   version *staged* once its files are stored, and load them under a *new* engine id (never vLLM's `load_inplace`, which
   reuses stale prefix-cache blocks and re-reads the files from disk on every step; docs/api.md);
3. wait until every live replica (one whose heartbeat is recent) has loaded the version too: each
   replica's watcher loads staged versions and records an ack, or the error it got;
4. move the alias `name -> name@vN` in the store, in one step. A request reads the alias once, when
   it is admitted, and holds a lease on that version until it finishes, so in-flight requests end
   on the version they started with; a replica unloads an old version once the alias has moved
   and its last lease is returned.

A failure at step 1 or 2, any replica's failure at step 3, or a replica that does not answer within
`adapter_sync_timeout_s`, raises `AdapterRejected` (400) naming the replica, marks the version
failed and leaves the alias where it was. A replica that starts later loads the alias targets at
start, and any replica loads the current target on first use if it has missed it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import struct
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.protocol import ADAPTER_CONFIG_FILE, ADAPTER_FILES, ADAPTER_WEIGHTS_FILE, adapter_ref
from sampler_service.errors import AdapterRejected, EngineUnavailable, NotFound
from sampler_service.store import ADAPTER_FAILED, ADAPTER_STAGED, Store

log = logging.getLogger("sampler_service.adapters")

MAX_ADAPTER_CONFIG_BYTES = 1024 * 1024
SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024


@dataclass
class AdapterVersion:
    name: str
    version: int
    lora_id: int
    path: str
    rank: int
    created_at: float = 0.0
    leases: int = 0
    loaded: bool = False
    retired: bool = False        # no longer the alias target: unload once leases reach 0

    @property
    def ref(self) -> str:
        return adapter_ref(self.name, self.version)

    def lora_request(self) -> Any:
        from vllm.lora.request import LoRARequest

        return LoRARequest(lora_name=self.ref, lora_int_id=self.lora_id, lora_path=self.path)


WATCH_S = 1.0           # how often a replica looks for staged versions and alias moves
ACK_POLL_S = 0.2        # how often an upload looks for the other replicas' acks


class AdapterRegistry:
    def __init__(self, store: Store, engine: Any, root: Path, base_model_path: str, max_rank: int, *,
                 replica_id: str = "local", lease_s: float = 30.0, sync_timeout_s: float = 300.0):
        self.store = store
        self.engine = engine
        self.root = root
        self.base_model_path = base_model_path
        self.max_rank = max_rank
        self.replica_id = replica_id
        self.lease_s = lease_s
        self.sync_timeout_s = sync_timeout_s
        self._versions: dict[tuple[str, int], AdapterVersion] = {}   # what this replica has loaded
        self._current: dict[str, int] = {}                           # the alias, as last applied here
        self._attempted: set[tuple[str, int]] = set()                # staged versions already acked
        self._load_locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._upload_lock = asyncio.Lock()
        self._base_shapes: dict[str, list[int]] | None = None
        self._watcher: asyncio.Task | None = None

    # -- start-up and the watcher ------------------------------------------------------------
    async def restore(self) -> None:
        """Load every alias target (and the staged versions an upload waits on), then keep up
        with other replicas' uploads, alias moves and deletes."""
        await self.sync()
        self._watcher = asyncio.create_task(self._watch(), name="adapter-watcher")

    async def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("adapter watcher: could not sync with the store")

    async def sync(self) -> None:
        rows = await asyncio.to_thread(self.store.adapter_versions)
        aliases = await asyncio.to_thread(self.store.aliases)
        for row in rows:
            key = (row["name"], row["version"])
            if row["state"] == ADAPTER_STAGED and key not in self._attempted:
                await self._load_and_ack(row)
            elif aliases.get(row["name"]) == row["version"] and key not in self._versions:
                try:
                    await self._ensure_loaded(row)
                except Exception as exc:  # requests will retry the load, and say why it fails
                    log.error("could not load adapter %s: %s", adapter_ref(*key), exc)
        await self._apply_aliases(aliases, rows)

    async def _refresh(self) -> None:
        rows = await asyncio.to_thread(self.store.adapter_versions)
        await self._apply_aliases(await asyncio.to_thread(self.store.aliases), rows)

    async def _load_and_ack(self, row: dict) -> None:
        key = (row["name"], row["version"])
        error = None
        try:
            await self._ensure_loaded(row)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.error("could not load staged adapter %s: %s", adapter_ref(*key), error)
        self._attempted.add(key)
        await asyncio.to_thread(self.store.ack_adapter, row["name"], row["version"], self.replica_id, error)

    async def _ensure_loaded(self, row: dict) -> AdapterVersion:
        """Load a version into this replica's engine, fetching its files from the store if they
        are not here yet. One load per version at a time."""
        key = (row["name"], row["version"])
        async with self._load_locks.setdefault(key, asyncio.Lock()):
            version = self._versions.get(key)
            if version is not None and version.loaded:
                return version
            target = self.root / row["name"] / f"v{row['version']}"
            if not all((target / f).is_file() for f in ADAPTER_FILES):
                await asyncio.to_thread(_fetch_adapter, self.store, row["name"], row["version"], target)
            await asyncio.to_thread(self.validate, target)  # this replica's limits may differ
            version = AdapterVersion(name=row["name"], version=row["version"], lora_id=row["lora_id"],
                                     path=str(target), rank=row["rank"], created_at=row["created_at"])
            await self.engine.add_lora(version.lora_request())
            version.loaded = True
            self._versions[key] = version
            return version

    async def _apply_aliases(self, aliases: dict[str, int], rows: list[dict]) -> None:
        """Follow alias moves, failures and deletes made anywhere: retire what no longer serves."""
        self._current = dict(aliases)
        staged = {(r["name"], r["version"]) for r in rows if r["state"] == ADAPTER_STAGED}
        for key, version in list(self._versions.items()):
            name, number = key
            if aliases.get(name) == number or key in staged:
                continue  # serving, or staged for an upload still waiting on acks
            version.retired = True
            if version.leases == 0:
                await self._unload(version)

    # -- resolving ---------------------------------------------------------------------------
    def resolve(self, ref: str) -> AdapterVersion:
        """This replica's view, without asking the store (see `resolve_latest`)."""
        name, _, pinned = ref.partition("@v")
        if name not in self._current:
            raise NotFound(f"unknown adapter {name!r}", param="adapter")
        number = int(pinned) if pinned else self._current[name]
        version = self._versions.get((name, number))
        if version is None or not version.loaded:
            raise NotFound(f"adapter {name!r} has no loaded version {number}", param="adapter")
        return version

    async def resolve_latest(self, ref: str) -> AdapterVersion:
        """Resolve against the alias in the store: another replica may have just moved it. The
        alias target is loaded here on first use if this replica has missed it."""
        name, _, pinned = ref.partition("@v")
        current = await asyncio.to_thread(self.store.alias_of, name) if self.store.shared else self._current.get(name)
        if current is None:
            raise NotFound(f"unknown adapter {name!r}", param="adapter")
        number = int(pinned) if pinned else current
        version = self._versions.get((name, number))
        if version is not None and version.loaded:
            return version
        if number != current:
            raise NotFound(f"adapter {name!r} has no loaded version {number}", param="adapter")
        row = next((r for r in await asyncio.to_thread(self.store.adapter_versions)
                    if (r["name"], r["version"]) == (name, number)), None)
        if row is None:
            raise NotFound(f"unknown adapter {name!r}", param="adapter")
        try:
            return await self._ensure_loaded(row)
        except Exception as exc:
            raise EngineUnavailable(f"replica {self.replica_id} could not load adapter "
                                    f"{adapter_ref(name, number)}: {exc}") from exc

    @asynccontextmanager
    async def lease(self, ref: str | None) -> AsyncIterator[AdapterVersion | None]:
        """Pin the version `ref` resolves to now, for the duration of one request."""
        if ref is None:
            yield None
            return
        version = await self.resolve_latest(ref)
        version.leases += 1
        try:
            yield version
        finally:
            version.leases -= 1
            if version.retired and version.leases == 0:
                await self._unload(version)

    # -- upload ------------------------------------------------------------------------------
    async def upload(self, name: str, source_dir: Path) -> AdapterVersion:
        async with self._upload_lock:
            rank = await asyncio.to_thread(self.validate, source_dir)
            number, lora_id = await asyncio.to_thread(self.store.create_adapter_version, name, rank, str(self.root))
            self._attempted.add((name, number))  # this replica acks below, not from its watcher
            target = self.root / name / f"v{number}"
            try:
                await asyncio.to_thread(_copy_adapter, source_dir, target)
                await asyncio.to_thread(self.store.save_adapter_files, name, number, target)
                # Only now may other replicas fetch the files: staged is their signal to load.
                await asyncio.to_thread(self.store.set_adapter_state, name, number, ADAPTER_STAGED)
                row = {"name": name, "version": number, "lora_id": lora_id, "rank": rank, "created_at": time.time()}
                version = await self._ensure_loaded(row)
            except Exception as exc:
                shutil.rmtree(target, ignore_errors=True)
                await self._reject(name, number, f"the engine could not load the adapter: {exc}")
            await asyncio.to_thread(self.store.ack_adapter, name, number, self.replica_id, None)
            await self._await_acks(name, number)
            await asyncio.to_thread(self.store.move_alias, name, number)
            await self._refresh()
            return version

    async def _await_acks(self, name: str, number: int) -> None:
        """Return once every live replica has loaded the version; raise naming those that failed
        or did not answer in time."""
        deadline = time.monotonic() + self.sync_timeout_s
        while True:
            acks = await asyncio.to_thread(self.store.adapter_acks, name, number)
            failed = {replica: error for replica, error in acks.items() if error}
            if failed:
                detail = "; ".join(f"replica {r}: {e}" for r, e in sorted(failed.items()))
                await self._reject(name, number, f"{adapter_ref(name, number)} failed to load on {detail}")
            live = await asyncio.to_thread(self.store.live_replicas, self.lease_s)
            missing = sorted(set(live) - set(acks))
            if not missing:
                return
            if time.monotonic() > deadline:
                await self._reject(name, number, f"replica(s) {', '.join(missing)} did not load "
                                                 f"{adapter_ref(name, number)} within {self.sync_timeout_s:.0f} s")
            await asyncio.sleep(ACK_POLL_S)

    async def _reject(self, name: str, number: int, message: str) -> None:
        """Mark the version failed (every replica unloads it), leave the alias, and raise."""
        await asyncio.to_thread(self.store.set_adapter_state, name, number, ADAPTER_FAILED, message)
        version = self._versions.get((name, number))
        if version is not None:
            version.retired = True
            if version.leases == 0:
                await self._unload(version)
        raise AdapterRejected(message, param="adapter")

    async def _unload(self, version: AdapterVersion) -> None:
        if version.loaded:
            version.loaded = False
            self._versions.pop((version.name, version.version), None)
            await self.engine.remove_lora(version.lora_id)

    async def delete(self, name: str) -> dict:
        if await asyncio.to_thread(self.store.alias_of, name) is None and \
                not any(r["name"] == name for r in await asyncio.to_thread(self.store.adapter_versions)):
            raise NotFound(f"unknown adapter {name!r}", param="name")
        await asyncio.to_thread(self.store.delete_adapter, name)
        await self._refresh()
        return {"name": name, "deleted": True}

    def describe(self) -> list[dict]:
        """The registry as the store holds it, with this replica's load state and in-flight counts."""
        rows = self.store.adapter_versions()
        aliases = self.store.aliases()
        out = []
        for name in sorted({r["name"] for r in rows}):
            versions = []
            for row in (r for r in rows if r["name"] == name):
                local = self._versions.get((name, row["version"]))
                versions.append({"version": row["version"], "rank": row["rank"], "created_at": row["created_at"],
                                 "state": row["state"], "error": row["error"],
                                 "loaded": bool(local and local.loaded), "in_flight": local.leases if local else 0})
            current = aliases.get(name)
            out.append({"name": name, "current_version": current,
                        "alias": adapter_ref(name, current) if current else None, "versions": versions})
        return out

    # -- validation --------------------------------------------------------------------------
    def validate(self, adapter_dir: Path) -> int:
        """Check the files before the engine sees them. Returns the adapter's rank."""
        config = _read_adapter_config(adapter_dir / ADAPTER_CONFIG_FILE)
        rank = config.get("r")
        if not isinstance(rank, int) or rank < 1:
            raise AdapterRejected(f"{ADAPTER_CONFIG_FILE}: `r` must be a positive integer, got {rank!r}",
                                  param="adapter")
        if rank > self.max_rank:
            raise AdapterRejected(f"adapter rank {rank} exceeds the server's max_lora_rank {self.max_rank}",
                                  param="adapter")
        self._check_base_model(config)
        tensors = _read_safetensors_shapes(adapter_dir / ADAPTER_WEIGHTS_FILE)
        self._check_targets(tensors, rank)
        return rank

    def _check_base_model(self, config: dict) -> None:
        declared = config.get("base_model_name_or_path")
        if not declared:
            return
        if Path(str(declared).rstrip("/")).name != Path(self.base_model_path.rstrip("/")).name:
            raise AdapterRejected(
                f"the adapter was trained on {declared!r}, but this server serves {self.base_model_path!r}",
                param="adapter")

    def _check_targets(self, tensors: dict[str, list[int]], rank: int) -> None:
        base = self._base_weight_shapes()
        lora_tensors = {k: v for k, v in tensors.items() if ".lora_A." in k or ".lora_B." in k}
        if not lora_tensors:
            raise AdapterRejected(f"{ADAPTER_WEIGHTS_FILE} holds no lora_A/lora_B tensors", param="adapter")
        for key, shape in lora_tensors.items():
            module = _base_module_name(key)
            if base is None:
                continue  # hub model not on disk: the engine's own checks have to do
            weight = base.get(module + ".weight")
            if weight is None:
                raise AdapterRejected(f"target module {module!r} does not exist in the base model "
                                      f"(tensor {key})", param="adapter")
            expected = [rank, weight[1]] if ".lora_A." in key else [weight[0], rank]
            if list(shape) != expected:
                raise AdapterRejected(f"tensor {key} has shape {shape}, expected {expected} for the base "
                                      f"model's {module}", param="adapter")

    def _base_weight_shapes(self) -> dict[str, list[int]] | None:
        if self._base_shapes is None:
            folder = Path(self.base_model_path)
            files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
            if not files:
                return None
            shapes: dict[str, list[int]] = {}
            for file in files:
                shapes.update(_read_safetensors_shapes(file))
            self._base_shapes = shapes
        return self._base_shapes


def _base_module_name(lora_key: str) -> str:
    # "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" -> "model.layers.0.self_attn.q_proj"
    module = lora_key.split(".lora_A.")[0].split(".lora_B.")[0]
    return module.removeprefix("base_model.model.")


def _read_adapter_config(path: Path) -> dict:
    if not path.is_file():
        raise AdapterRejected(f"{ADAPTER_CONFIG_FILE} is missing", param="adapter")
    if path.stat().st_size > MAX_ADAPTER_CONFIG_BYTES:
        raise AdapterRejected(f"{ADAPTER_CONFIG_FILE} is too large", param="adapter")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterRejected(f"{ADAPTER_CONFIG_FILE} is not valid JSON: {exc}", param="adapter") from exc
    if not isinstance(config, dict):
        raise AdapterRejected(f"{ADAPTER_CONFIG_FILE} must hold a JSON object", param="adapter")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterRejected(f"only LoRA adapters are served, got peft_type {config.get('peft_type')!r}",
                              param="adapter")
    return config


def _read_safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Parse a safetensors header (8-byte length + JSON) and check the data size matches."""
    if not path.is_file():
        raise AdapterRejected(f"{path.name} is missing", param="adapter")
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > min(SAFETENSORS_HEADER_LIMIT, size - 8):
                raise ValueError("header length is out of range")
            header = json.loads(handle.read(header_len))
        header.pop("__metadata__", None)
        end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
        if 8 + header_len + end != size:
            raise ValueError(f"the file is {size} bytes, its header describes {8 + header_len + end}")
        return {name: list(t["shape"]) for name, t in header.items()}
    except AdapterRejected:
        raise
    except Exception as exc:
        raise AdapterRejected(f"{path.name} is not a valid safetensors file: {exc}", param="adapter") from exc


def _copy_adapter(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".upload-"))
    for name in ADAPTER_FILES:
        shutil.copyfile(source / name, staging / name)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _fetch_adapter(store: Store, name: str, number: int, target: Path) -> None:
    """Copy a version's files out of the store into `target`, whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".fetch-"))
    try:
        store.fetch_adapter_files(name, number, staging)
        missing = [f for f in ADAPTER_FILES if not (staging / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{', '.join(missing)} of {adapter_ref(name, number)} is neither in the store "
                                    f"nor under {target}")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

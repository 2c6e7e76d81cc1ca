"""Adapter versions, the alias that points at the serving one, and draining of old versions.

Only this module knows which version an alias points to. The life of an upload:

1. validate the files (they parse, rank <= max_lora_rank, base model matches, every targeted
   module exists with matching shapes), so the engine never sees a bad adapter;
2. copy them into `data_dir/adapters/<name>/v<N>/` and load them under a *new* engine id
   (never vLLM's `load_inplace`, which reuses stale prefix-cache blocks and re-reads the files
   from disk on every step; docs/api.md, "Adapters");
3. move the alias `name -> name@vN` in one step. A request resolves the alias once, when it is
   admitted, and holds a lease on that version until it finishes, so in-flight requests end on the
   version they started with; the old version is unloaded when its last lease is returned.

A failure at step 1 or 2 raises `AdapterRejected` (400) and leaves the alias where it was.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.protocol import ADAPTER_CONFIG_FILE, ADAPTER_FILES, ADAPTER_WEIGHTS_FILE, adapter_ref
from sampler_service.errors import AdapterRejected, NotFound
from sampler_service.store import Store

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


@dataclass
class _AdapterFamily:
    current: int | None = None
    versions: dict[int, AdapterVersion] = field(default_factory=dict)


class AdapterRegistry:
    def __init__(self, store: Store, engine: Any, root: Path, base_model_path: str, max_rank: int):
        self.store = store
        self.engine = engine
        self.root = root
        self.base_model_path = base_model_path
        self.max_rank = max_rank
        self._families: dict[str, _AdapterFamily] = {}
        self._upload_lock = asyncio.Lock()
        self._base_shapes: dict[str, list[int]] | None = None

    # -- start-up ----------------------------------------------------------------------------
    async def restore(self) -> None:
        """Reload the serving version of every alias after a restart."""
        aliases = self.store.aliases()
        for row in self.store.adapter_versions():
            version = AdapterVersion(**row)
            family = self._families.setdefault(version.name, _AdapterFamily())
            family.versions[version.version] = version
        for name, version_number in aliases.items():
            family = self._families[name]
            version = family.versions.get(version_number)
            if version is None:
                continue
            try:
                await self.engine.add_lora(version.lora_request())
                version.loaded = True
                family.current = version_number
            except Exception as exc:
                log.error("could not restore adapter %s: %s", version.ref, exc)

    # -- resolving ---------------------------------------------------------------------------
    def resolve(self, ref: str) -> AdapterVersion:
        name, _, pinned = ref.partition("@v")
        family = self._families.get(name)
        if family is None or family.current is None:
            raise NotFound(f"unknown adapter {name!r}", param="adapter")
        number = int(pinned) if pinned else family.current
        version = family.versions.get(number)
        if version is None or not version.loaded:
            raise NotFound(f"adapter {name!r} has no loaded version {number}", param="adapter")
        return version

    @asynccontextmanager
    async def lease(self, ref: str | None) -> AsyncIterator[AdapterVersion | None]:
        """Pin the version `ref` resolves to now, for the duration of one request."""
        if ref is None:
            yield None
            return
        version = self.resolve(ref)
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
            number, lora_id = self.store.next_adapter_version(name)
            target = self.root / name / f"v{number}"
            await asyncio.to_thread(_copy_adapter, source_dir, target)
            version = AdapterVersion(name=name, version=number, lora_id=lora_id, path=str(target), rank=rank,
                                     created_at=time.time())
            try:
                await self.engine.add_lora(version.lora_request())
            except Exception as exc:
                shutil.rmtree(target, ignore_errors=True)
                raise AdapterRejected(f"the engine could not load the adapter: {exc}", param="adapter")
            version.loaded = True
            self.store.add_adapter_version(name, number, lora_id, str(target), rank)
            self.store.set_alias(name, number)
            await self._move_alias(name, version)
            return version

    async def _move_alias(self, name: str, version: AdapterVersion) -> None:
        family = self._families.setdefault(name, _AdapterFamily())
        previous = family.versions.get(family.current) if family.current is not None else None
        family.versions[version.version] = version
        family.current = version.version  # one assignment: the switch is atomic for new requests
        if previous is not None:
            previous.retired = True
            if previous.leases == 0:
                await self._unload(previous)

    async def _unload(self, version: AdapterVersion) -> None:
        if version.loaded:
            version.loaded = False
            await self.engine.remove_lora(version.lora_id)

    async def delete(self, name: str) -> dict:
        family = self._families.pop(name, None)
        if family is None:
            raise NotFound(f"unknown adapter {name!r}", param="name")
        for version in family.versions.values():
            version.retired = True
            if version.leases == 0:
                await self._unload(version)
        self.store.delete_adapter(name)
        return {"name": name, "deleted": True}

    def describe(self) -> list[dict]:
        out = []
        for name, family in sorted(self._families.items()):
            versions = [{"version": v.version, "rank": v.rank, "created_at": v.created_at, "loaded": v.loaded,
                         "in_flight": v.leases} for v in sorted(family.versions.values(), key=lambda v: v.version)]
            out.append({"name": name, "current_version": family.current,
                        "alias": adapter_ref(name, family.current) if family.current else None, "versions": versions})
        return out

    # -- validation --------------------------------------------------------------------------
    def validate(self, adapter_dir: Path) -> int:
        """Check the files before the engine sees them. Returns the adapter's rank."""
        config = _read_adapter_config(adapter_dir / ADAPTER_CONFIG_FILE)
        rank = config.get("r")
        if not isinstance(rank, int) or rank < 1:
            raise AdapterRejected(f"{ADAPTER_CONFIG_FILE}: `r` must be a positive integer, got {rank!r}", param="adapter")
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
        raise AdapterRejected(f"{ADAPTER_CONFIG_FILE} is not valid JSON: {exc}", param="adapter")
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
        raise AdapterRejected(f"{path.name} is not a valid safetensors file: {exc}", param="adapter")


def _copy_adapter(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".upload-"))
    for name in ADAPTER_FILES:
        shutil.copyfile(source / name, staging / name)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)

"""The sampling service's settings: one typed dataclass, loadable from YAML and CLI flags.

Defaults are the safe CPU ones (float32, eager mode, a small KV cache) so that `ssd serve --model demo`
works on a laptop; on a GPU box override `--dtype bfloat16 --enforce-eager false --kv-cache-gb 0`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.config import check_range, help_meta, require
from common.protocol import API_KEYS_ENV, DEFAULT_MAX_N, DEFAULT_PORT

# Bounds a request may not exceed. Named here so that the API docs, the validation and the tests
# read the same numbers.
DEFAULT_MAX_QUEUE = 512          # requests admitted to the engine at once (sync calls + job prompts)
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_ADAPTER_BYTES = 4 * 1024 * 1024 * 1024   # a rank-64 adapter on a 30B model is GBs
DEFAULT_JOB_CONCURRENCY = 64     # prompts of one job in flight, so continuous batching stays full
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)   # vLLM's LoRAConfig accepts only these
DEFAULT_MAX_LORA_RANK = 64
MAX_COUNT = 2 ** 62              # sizes and counts: only their lower bound matters
MAX_KV_CACHE_GB = 1 << 20
DEFAULT_MAX_IN_FLIGHT_PER_KEY = 64   # one key's requests in flight before 429; a key line may set its own
POSTGRES_URL_PREFIXES = ("postgresql://", "postgres://")


def served_lora_rank(lora_rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds `lora_rank`: vLLM pads every adapter to it."""
    return next(rank for rank in VLLM_MAX_LORA_RANKS if rank >= lora_rank)


@dataclass
class ServiceConfig:
    model: str = field(default="demo", metadata=help_meta("model: `demo`, an HF folder, or a hub id"))
    host: str = field(default="127.0.0.1", metadata=help_meta("address to bind"))
    port: int = field(default=DEFAULT_PORT, metadata=help_meta("port to bind"))
    data_dir: Path = field(default=Path(".ssd/service"),
                           metadata=help_meta("durable store (SQLite) and uploaded adapters live here"))
    dtype: str = field(default="auto", metadata=help_meta("auto = float32 on CPU, bfloat16 on GPU"))
    max_model_len: int = field(default=0, metadata=help_meta(
        "context length the engine reserves; 0 = the model's own, capped on the CPU by what the KV cache holds"))
    enforce_eager: bool = field(default=True, metadata=help_meta(
        "skip torch.compile warm-up (~45 s vs ~140 s start on CPU)"))
    enable_lora: bool = field(default=True, metadata=help_meta("serve LoRA adapters"))
    max_loras: int = field(default=2, metadata=help_meta("adapters resident in one batch (2 lets a swap overlap)"))
    max_lora_rank: int = field(default=DEFAULT_MAX_LORA_RANK, metadata=help_meta("largest adapter rank accepted"))
    max_cpu_loras: int = field(default=4, metadata=help_meta("adapters cached in host memory"))
    kv_cache_gb: float = field(default=2.0, metadata=help_meta("CPU KV cache size in GiB (0 = engine default)"))
    gpu_memory_utilization: float = field(default=0.85, metadata=help_meta("GPU only"))
    max_num_seqs: int = field(default=256, metadata=help_meta("sequences the engine batches at once"))
    max_n: int = field(default=DEFAULT_MAX_N, metadata=help_meta("largest `n` a request may ask for"))
    max_queue: int = field(default=DEFAULT_MAX_QUEUE, metadata=help_meta("engine requests in flight before 503"))
    max_body_bytes: int = field(default=DEFAULT_MAX_BODY_BYTES, metadata=help_meta("larger bodies get 413"))
    max_adapter_bytes: int = field(default=DEFAULT_MAX_ADAPTER_BYTES, metadata=help_meta(
        "larger adapter uploads get 413"))
    job_concurrency: int = field(default=DEFAULT_JOB_CONCURRENCY, metadata=help_meta("prompts of one job in flight"))
    cpu_threads: str = field(default="auto", metadata=help_meta(
        "CPU cores for the engine, e.g. `0-1`; auto = all cores (1.7x faster than vLLM's default)"))
    log_level: str = field(default="info", metadata=help_meta("uvicorn log level"))
    api_keys_file: Path | None = field(default=None, metadata=help_meta(
        f"API keys, one `KEY SCOPE[,SCOPE] [MAX_IN_FLIGHT]` line each (scopes: sample, admin); also read "
        f"from {API_KEYS_ENV} (lines separated by `;`). No keys: open API, loopback bind only"))
    max_in_flight_per_key: int = field(default=DEFAULT_MAX_IN_FLIGHT_PER_KEY, metadata=help_meta(
        "requests one API key may have in flight before 429 + Retry-After"))
    metrics_require_key: bool = field(default=False, metadata=help_meta(
        "protect /metrics with a `sample` key (it is open by default, for scrapers)"))
    adapter_dir: list[str] = field(default_factory=list, metadata=help_meta(
        "directories `POST /v1/adapters {\"path\"}` may load from (comma list; none by default: uploads only)"))
    # -- scaling out: vLLM's own parallelism, and several replicas over one PostgreSQL store -------
    tensor_parallel_size: int = field(default=1, metadata=help_meta(
        "GPUs that split every layer's weights (vLLM tensor parallelism; docs/deployment.md)"))
    pipeline_parallel_size: int = field(default=1, metadata=help_meta("GPUs (or nodes) the layers are staged across"))
    data_parallel_size: int = field(default=1, metadata=help_meta("full engine copies inside this one service"))
    store: str = field(default="", metadata=help_meta(
        "empty = SQLite in data_dir; a postgresql:// URL = PostgreSQL shared by every replica"))
    replica_id: str = field(default="", metadata=help_meta(
        "this replica's name in the store; empty = host:port/random"))
    lease_s: float = field(default=30.0, metadata=help_meta(
        "a replica's lease on a prompt (and its liveness) expires this long after its last heartbeat"))
    adapter_sync_timeout_s: float = field(default=300.0, metadata=help_meta(
        "an upload waits this long for every live replica to load the new version"))

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        check_range("max_model_len", self.max_model_len, 0, MAX_COUNT)
        for name in ("port", "max_loras", "max_lora_rank", "max_cpu_loras",
                     "max_num_seqs", "max_n", "max_queue", "max_body_bytes", "max_adapter_bytes",
                     "job_concurrency", "max_in_flight_per_key"):
            check_range(name, getattr(self, name), 1, MAX_COUNT)
        check_range("kv_cache_gb", self.kv_cache_gb, 0, MAX_KV_CACHE_GB)
        if self.api_keys_file is not None:
            self.api_keys_file = Path(self.api_keys_file)
        require(isinstance(self.adapter_dir, list) and all(isinstance(d, str) and d for d in self.adapter_dir),
                f"adapter_dir must be a list of directories, got {self.adapter_dir!r}")
        self._check_scaling()

    def _check_scaling(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            check_range(name, getattr(self, name), 1, 1024)
        check_range("lease_s", self.lease_s, 1.0, 3600.0)
        check_range("adapter_sync_timeout_s", self.adapter_sync_timeout_s, 1.0, 86400.0)
        require(self.store == "" or self.store.startswith(POSTGRES_URL_PREFIXES) or "://" not in self.store,
                f"store must be empty, a SQLite file path or a postgresql:// URL, got {self.store!r}")

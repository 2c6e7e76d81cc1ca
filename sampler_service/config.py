"""The sampling service's settings: one typed dataclass, loadable from YAML and CLI flags.

Defaults are the safe CPU ones (float32, eager mode, a small KV cache) so that `ssd serve --model demo`
works on a laptop; on a GPU box override `--dtype bfloat16 --enforce-eager false --kv-cache-gb 0`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.config import require
from common.protocol import API_KEYS_ENV, DEFAULT_MAX_N, DEFAULT_PORT

# Bounds a request may not exceed. Named here so that the API docs, the validation and the tests
# read the same numbers.
DEFAULT_MAX_QUEUE = 512          # requests admitted to the engine at once (sync calls + job prompts)
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_ADAPTER_BYTES = 4 * 1024 * 1024 * 1024   # a rank-64 adapter on a 30B model is GBs
DEFAULT_JOB_CONCURRENCY = 64     # prompts of one job in flight, so continuous batching stays full
DEFAULT_MAX_LORA_RANK = 64
DEFAULT_MAX_IN_FLIGHT_PER_KEY = 64   # one key's requests in flight before 429; a key line may set its own


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ServiceConfig:
    model: str = field(default="demo", metadata=_help("model: `demo`, an HF folder, or a hub id"))
    host: str = field(default="127.0.0.1", metadata=_help("address to bind"))
    port: int = field(default=DEFAULT_PORT, metadata=_help("port to bind"))
    data_dir: Path = field(default=Path(".ssd/service"),
                           metadata=_help("durable store (SQLite) and uploaded adapters live here"))
    dtype: str = field(default="auto", metadata=_help("auto = float32 on CPU, bfloat16 on GPU"))
    max_model_len: int = field(default=2048, metadata=_help("context length the engine reserves"))
    enforce_eager: bool = field(default=True, metadata=_help("skip torch.compile warm-up (~45 s vs ~140 s start on CPU)"))
    enable_lora: bool = field(default=True, metadata=_help("serve LoRA adapters"))
    max_loras: int = field(default=2, metadata=_help("adapters resident in one batch (2 lets a swap overlap)"))
    max_lora_rank: int = field(default=DEFAULT_MAX_LORA_RANK, metadata=_help("largest adapter rank accepted"))
    max_cpu_loras: int = field(default=4, metadata=_help("adapters cached in host memory"))
    kv_cache_gb: float = field(default=2.0, metadata=_help("CPU KV cache size in GiB (0 = engine default)"))
    gpu_memory_utilization: float = field(default=0.85, metadata=_help("GPU only"))
    max_num_seqs: int = field(default=256, metadata=_help("sequences the engine batches at once"))
    max_n: int = field(default=DEFAULT_MAX_N, metadata=_help("largest `n` a request may ask for"))
    max_queue: int = field(default=DEFAULT_MAX_QUEUE, metadata=_help("engine requests in flight before 503"))
    max_body_bytes: int = field(default=DEFAULT_MAX_BODY_BYTES, metadata=_help("larger bodies get 413"))
    max_adapter_bytes: int = field(default=DEFAULT_MAX_ADAPTER_BYTES, metadata=_help(
        "larger adapter uploads get 413"))
    job_concurrency: int = field(default=DEFAULT_JOB_CONCURRENCY, metadata=_help("prompts of one job in flight"))
    cpu_threads: str = field(default="auto", metadata=_help(
        "CPU cores for the engine, e.g. `0-1`; auto = all cores (1.7x faster than vLLM's default)"))
    log_level: str = field(default="info", metadata=_help("uvicorn log level"))
    api_keys_file: Path | None = field(default=None, metadata=_help(
        f"API keys, one `KEY SCOPE[,SCOPE] [MAX_IN_FLIGHT]` line each (scopes: sample, admin); also read "
        f"from {API_KEYS_ENV} (lines separated by `;`). No keys: open API, loopback bind only"))
    max_in_flight_per_key: int = field(default=DEFAULT_MAX_IN_FLIGHT_PER_KEY, metadata=_help(
        "requests one API key may have in flight before 429 + Retry-After"))
    metrics_require_key: bool = field(default=False, metadata=_help(
        "protect /metrics with a `sample` key (it is open by default, for scrapers)"))
    adapter_dir: list[str] = field(default_factory=list, metadata=_help(
        "directories `POST /v1/adapters {\"path\"}` may load from (comma list; none by default: uploads only)"))

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        for name in ("port", "max_model_len", "max_loras", "max_lora_rank", "max_cpu_loras",
                     "max_num_seqs", "max_n", "max_queue", "max_body_bytes", "max_adapter_bytes",
                     "job_concurrency", "max_in_flight_per_key"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kv_cache_gb < 0:
            raise ValueError(f"kv_cache_gb must be >= 0, got {self.kv_cache_gb}")
        if self.api_keys_file is not None:
            self.api_keys_file = Path(self.api_keys_file)
        require(isinstance(self.adapter_dir, list) and all(isinstance(d, str) and d for d in self.adapter_dir),
                f"adapter_dir must be a list of directories, got {self.adapter_dir!r}")

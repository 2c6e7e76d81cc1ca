"""The wire contract between the sampling service and everything that talks to it.

Field names, bounds, job statuses, adapter file names and the default address live here and only
here. The service's pydantic schemas, the client, the trainer, evaluation and diagnostics import
them; none keeps a copy. Change a bound here and every layer reads the new number.
"""

from __future__ import annotations

from typing import Final

DEFAULT_URL: Final = "http://127.0.0.1:8000"
DEFAULT_PORT: Final = 8000

# -- sampling parameters ---------------------------------------------------------------------
# The fields every sampling request (/v1/samples, /v1/jobs) may carry, in one tuple so that the
# client can refuse a misspelt keyword before it reaches the network.
SAMPLING_FIELDS: Final = ("n", "temperature", "top_k", "top_p", "min_p", "max_tokens", "stop", "seed",
                          "adapter", "logprobs", "ignore_eos")

MAX_TEMPERATURE: Final = 10.0      # far above any useful T; a guard against typos like 16 for 1.6
TOP_K_DISABLED: Final = -1         # vLLM's "no top-k"; 0 is refused rather than guessed at
TOP_P_DISABLED: Final = 1.0
MIN_P_DISABLED: Final = 0.0
DEFAULT_MAX_N: Final = 64          # the service's default `max_n`; operators may lower or raise it
DEFAULT_MAX_TOKENS: Final = 256
MAX_STOP_STRINGS: Final = 16
MAX_STOP_STRING_CHARS: Final = 256
MAX_LOGPROBS: Final = 20

# -- request sizes ---------------------------------------------------------------------------
MAX_PROMPTS_PER_REQUEST: Final = 1024
MAX_PROMPTS_PER_JOB: Final = 200_000
MAX_PROMPT_ID_CHARS: Final = 256
MAX_JOB_NAME_CHARS: Final = 200
MAX_PAGE_SIZE: Final = 1000
DEFAULT_PAGE_SIZE: Final = 100

# -- chat --------------------------------------------------------------------------------------
CHAT_ROLES: Final = ("system", "user", "assistant")

# -- jobs --------------------------------------------------------------------------------------
JOB_QUEUED: Final = "queued"
JOB_RUNNING: Final = "running"
JOB_COMPLETED: Final = "completed"
JOB_FAILED: Final = "failed"
JOB_CANCELLED: Final = "cancelled"
ACTIVE_JOB_STATUSES: Final = (JOB_QUEUED, JOB_RUNNING)
FINAL_JOB_STATUSES: Final = (JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED)

# ml-ssd's filters: drop empty completions, then the shortest fraction of the rest.
MAX_DROP_SHORTEST_FRACTION: Final = 0.9
FILTER_EMPTY: Final = "empty"
FILTER_SHORTEST: Final = "shortest"
# What "shortest" measures: ml-ssd cuts by the completion's characters; tokens was this project's
# first rule and stays an option.
SHORTEST_BY_CHARS: Final = "chars"
SHORTEST_BY_TOKENS: Final = "tokens"
SHORTEST_BY_CHOICES: Final = (SHORTEST_BY_CHARS, SHORTEST_BY_TOKENS)
DEFAULT_SHORTEST_BY: Final = SHORTEST_BY_CHARS

# -- adapters ----------------------------------------------------------------------------------
ADAPTER_CONFIG_FILE: Final = "adapter_config.json"
ADAPTER_WEIGHTS_FILE: Final = "adapter_model.safetensors"
ADAPTER_FILES: Final = (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE)
ADAPTER_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
ADAPTER_REF_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}(@v[0-9]+)?$"   # `ssd` or `ssd@v3`
DEFAULT_ADAPTER_ALIAS: Final = "ssd"


def adapter_ref(name: str, version: int) -> str:
    """The id of one pinned adapter version: `ssd@v3`."""
    return f"{name}@v{version}"

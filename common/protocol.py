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

# Sampling fields only the OpenAI-compatible endpoints accept, passed to the engine as they are.
OPENAI_ONLY_FIELDS: Final = ("presence_penalty", "frequency_penalty")

MAX_TEMPERATURE: Final = 2.0       # vLLM refuses T > 2 (SamplingParams); also catches typos like 16 for 1.6
TOP_K_DISABLED: Final = -1         # vLLM's "no top-k"; 0 is refused rather than guessed at
TOP_P_DISABLED: Final = 1.0
MIN_P_DISABLED: Final = 0.0
DEFAULT_MAX_N: Final = 64          # the service's default `max_n`; operators may lower or raise it
MAX_STOP_STRINGS: Final = 16
MAX_STOP_STRING_CHARS: Final = 256
MAX_LOGPROBS: Final = 20

# `max_tokens` left out (or null) on the wire means "the rest of the context": each prompt gets
# max_model_len minus its own length, as vLLM's own server does. In a YAML or flag config, where a
# number is easier to write than a null, FILL_CONTEXT (0) says the same.
FILL_CONTEXT: Final = 0


def wire_max_tokens(max_tokens: int) -> int | None:
    """A config's max_tokens as the wire carries it: FILL_CONTEXT becomes null (left out)."""
    return None if max_tokens == FILL_CONTEXT else max_tokens


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

# -- API keys ----------------------------------------------------------------------------------
# `ssd serve --api-keys-file FILE` (or SSD_API_KEYS, lines separated by `;`) holds lines
# `KEY SCOPE[,SCOPE] [MAX_IN_FLIGHT]`; clients send `Authorization: Bearer KEY`.
API_KEY_ENV: Final = "SSD_API_KEY"          # the client's key (client, trainer, `ssd run`)
API_KEYS_ENV: Final = "SSD_API_KEYS"        # the server's key lines
AUTH_HEADER: Final = "Authorization"
AUTH_SCHEME: Final = "Bearer"
SCOPE_SAMPLE: Final = "sample"   # sampling, the OpenAI endpoints, reading jobs, samples and adapters
SCOPE_ADMIN: Final = "admin"     # creating and cancelling jobs, uploading and deleting adapters
API_SCOPES: Final = (SCOPE_SAMPLE, SCOPE_ADMIN)
MIN_API_KEY_CHARS: Final = 16    # a shorter key is guessable; the server refuses to start with one

# -- OpenAI-compatible endpoints ---------------------------------------------------------------
OPENAI_MODELS_PATH: Final = "/v1/models"
OPENAI_COMPLETIONS_PATH: Final = "/v1/completions"
OPENAI_CHAT_PATH: Final = "/v1/chat/completions"
OPENAI_PATHS: Final = (OPENAI_MODELS_PATH, OPENAI_COMPLETIONS_PATH, OPENAI_CHAT_PATH)
OPENAI_DEFAULT_MAX_TOKENS: Final = 16       # OpenAI's default for /v1/completions
MAX_CHAT_MESSAGES: Final = 1024             # turns in one /v1/chat/completions conversation
MAX_MODEL_ID_CHARS: Final = 512             # the base model's name may be a path
MAX_PENALTY: Final = 2.0                    # OpenAI's bound on presence_penalty / frequency_penalty
SSE_DONE: Final = "[DONE]"

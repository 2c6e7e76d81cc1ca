"""`ssd serve`: run the sampling service with uvicorn."""

from __future__ import annotations

import argparse
import logging

from common.config import add_dataclass_flags, config_from_args
from sampler_service.config import ServiceConfig

EXAMPLES = """examples:
  ssd serve --model demo                                  # SmolLM2-135M on the CPU, port 8000
  ssd serve --model Qwen/Qwen3-4B-Instruct-2507 --dtype bfloat16 --enforce-eager false --kv-cache-gb 0
  ssd serve --config service.yaml --port 9000             # YAML, with a flag override
"""


def serve(config: ServiceConfig) -> None:
    import uvicorn

    from sampler_service.api import create_app

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One worker: the engine lives in this process. timeout_graceful_shutdown bounds a stop when
    # long generations are still running.
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=config.log_level,
                timeout_graceful_shutdown=5)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the sampling service (FastAPI + vLLM AsyncLLM)",
                                   epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with ServiceConfig fields")
    add_dataclass_flags(parser, ServiceConfig)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    serve(config_from_args(ServiceConfig, args))
    return 0

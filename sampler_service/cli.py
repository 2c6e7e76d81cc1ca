"""`ssd serve`: run the sampling service with uvicorn (`python -m sampler_service` alone)."""

from __future__ import annotations

import argparse
import logging

from common.cli import add_config_flags, add_subcommand, standalone_main
from common.config import config_from_args
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
    parser = add_subcommand(subparsers, "serve", help="run the sampling service (FastAPI + vLLM AsyncLLM)",
                            epilog=EXAMPLES)
    add_config_flags(parser, ServiceConfig)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    serve(config_from_args(ServiceConfig, args))
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone_main(register, "serve", "sampler_service", argv)

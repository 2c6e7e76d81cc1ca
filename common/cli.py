"""What every subcommand shares: `--config YAML` plus one flag per config field, and one mapping from
errors to exit codes.

The rule for where a subcommand lives: in the `cli.py` of the package that does its work
(`sampler_service/cli.py` serves, `trainer/cli.py` trains, ...). Each such module has
`register(subparsers)`; the `ssd` root (`ssd/cli.py`) mounts them all, and `python -m <package>`
runs one alone through `standalone_main`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable

from common.config import add_dataclass_flags
from common.errors import EXIT_USAGE, SSDError

EXIT_INTERRUPTED = 130


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """`--config YAML` with `cls`'s fields, then one `--kebab-case` flag per field (flags win)."""
    parser.add_argument("--config", metavar="YAML", help=f"YAML file with {cls.__name__} fields")
    add_dataclass_flags(parser, cls, skip=skip)


def add_subcommand(subparsers: argparse._SubParsersAction, name: str, *, help: str, epilog: str,
                   description: str | None = None) -> argparse.ArgumentParser:
    """A subparser whose epilog (the worked examples) keeps its line breaks."""
    return subparsers.add_parser(name, help=help, description=description or help, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def run_command(args: argparse.Namespace, prog: str = "ssd") -> int:
    """Run a parsed subcommand; every error becomes one line on stderr and its exit code."""
    where = f"{prog} {args.command}" if getattr(args, "command", None) else prog
    # SIGTERM (a `kill`, a container stop) unwinds like Ctrl-C, so `with` blocks stop the services
    # and engines the command started instead of leaving them orphaned.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.func(args) or 0)
    except SSDError as exc:   # config errors (exit 2), client errors, stage failures (exit 1)
        print(f"{where}: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, FileNotFoundError) as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _leave_if_workers_linger()
        return EXIT_INTERRUPTED


def _leave_if_workers_linger() -> None:
    """After Ctrl-C the main thread has unwound: its `with` blocks stopped the services it started
    and closed its files. Worker threads (sweep points, evaluation batches in flight) may still wait
    on a request that the service takes minutes to answer, and the interpreter would join them at
    exit: a sweep against a running service took 77 s to stop. So leave now, without them."""
    workers = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if any(t.is_alive() for t in workers):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def standalone_main(register: Callable[[argparse._SubParsersAction], object], command: str, module: str,
                    argv: list[str] | None = None) -> int:
    """`python -m <module> [flags]`: a package's one subcommand, without the `ssd` root."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([command, *(sys.argv[1:] if argv is None else argv)])
    return run_command(args, prog="ssd")

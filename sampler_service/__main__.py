"""`python -m sampler_service --model demo` is `ssd serve --model demo`."""

import argparse
import sys

from sampler_service.server import register


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m sampler_service")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", *sys.argv[1:]])
    try:
        return args.func(args)
    except ValueError as exc:  # a ConfigError: say what is wrong, without a traceback
        print(f"sampler_service: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

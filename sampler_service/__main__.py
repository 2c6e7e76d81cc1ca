"""`python -m sampler_service --model demo` is `ssd serve --model demo`."""

import argparse
import sys

from sampler_service.server import register


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m sampler_service")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", *sys.argv[1:]])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

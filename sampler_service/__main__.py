"""`python -m sampler_service --model demo` is `ssd serve --model demo`."""

import sys

from sampler_service.cli import main

if __name__ == "__main__":
    sys.exit(main())

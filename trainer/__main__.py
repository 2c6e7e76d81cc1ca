"""`python -m trainer --config train.yaml [--resume] [--lr 1e-4 ...]`: the `ssd train` command alone."""

import sys

from trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""The root of the project's own errors. A command-line run maps each to its exit code in one
place (`common.cli.run_command`), so no subcommand repeats that handling."""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2          # argparse's own code for a usage error: bad flags, bad config, missing input


class SSDError(Exception):
    """Base of the errors this project raises on purpose; the message is written for the user."""

    exit_code = EXIT_FAILED

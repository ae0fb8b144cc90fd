"""`python -m serve`: the command line is serve/cli.py."""

import sys

from serve.cli import build_parser, describe_workers, main  # noqa: F401  (tests and the Dockerfile's check use them)

if __name__ == "__main__":
    sys.exit(main())

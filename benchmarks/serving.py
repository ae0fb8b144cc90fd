"""`python -m benchmarks train`: our training step vs a bare PyTorch loop."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace):
    raise NotImplementedError

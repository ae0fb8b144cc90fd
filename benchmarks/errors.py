"""Errors a benchmark run reports as a message and an exit status instead of a traceback."""


class BenchmarkError(RuntimeError):
    """A benchmark could not run (its inputs could not be made, a server did not start); exit status 3."""


class BenchmarkUsageError(BenchmarkError):
    """The command line asks for something that does not exist (an unknown architecture); exit status 2."""


def check_archs(archs: list[str]) -> None:
    from models import list_models

    known = list_models()
    unknown = [a for a in archs if a not in known]
    if unknown:
        raise BenchmarkUsageError(
            f"unknown architecture(s) {unknown}; `python -m models` lists them (e.g. resnet18, resnet50)"
        )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value

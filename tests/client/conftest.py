"""Client test helpers: real digit images on disk, and running the client's CLI in this process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from client.cli import main
from imagedata.digits import write_digits_folder


@pytest.fixture(scope="session")
def digit_images(tmp_path_factory) -> Path:
    """scikit-learn's handwritten digits as PNG files, two per class (20 images)."""
    return write_digits_folder(tmp_path_factory.mktemp("digits"), split="val", limit_per_class=2)


@pytest.fixture
def run_client(capsys):
    """`python -m client ARGS` in this process -> (exit status, stdout, stderr)."""

    def run(*args) -> tuple[int, str, str]:
        try:
            status = main([str(a) for a in args])
        except SystemExit as e:  # argparse errors
            status = e.code
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def assert_same_predictions(a: list[dict], b: list[dict], atol: float = 1e-4) -> None:
    """Two ranked prediction lists agree: same probabilities at each rank, same labels except where
    two classes' probabilities tie within `atol` (their order is then a rounding accident)."""
    assert len(a) == len(b)
    prob_a = {p["label"]: p["probability"] for p in a}
    for x, y in zip(a, b):
        assert math.isclose(x["probability"], y["probability"], abs_tol=atol), (a, b)
        if x["label"] != y["label"]:
            assert math.isclose(prob_a.get(y["label"], -1.0), x["probability"], abs_tol=atol), (a, b)

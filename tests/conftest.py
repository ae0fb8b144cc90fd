"""Shared session fixtures, one module per stage of the pipeline (each owned by that package's tests).

Each stage runs for real once per session: a short training run on scikit-learn's digits, an export
of its checkpoint, a TorchServe process serving it.
"""

pytest_plugins = [
    "tests.fixtures.datasets",
    "tests.fixtures.trained",
    "tests.fixtures.exported",
    "tests.fixtures.served",
    "tests.fixtures.weights",
]

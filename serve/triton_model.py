"""The `model.py` of every model in a repository that `python -m serve triton-repo` writes (copied as it is).

Triton's Python backend runs it in its stub process, which must import this project and its serving
runtime (torch, onnxruntime, Pillow) and numpy 1: `serve start --server triton` arranges that
(serve/triton_install.py); in NVIDIA's container, install the project into the container's Python.
"""

from serve.triton_backend import TritonPythonModel  # noqa: F401  (the class Triton's Python backend looks for)

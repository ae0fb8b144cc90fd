"""Export: TorchScript, ONNX, ONNX INT8, AOTInductor (fp32, bf16, fp16) and TensorRT FP16 artifacts with parity gates, and the runners that read them.

`python -m export --help` for the command line; `export.runners.open_runner(export_dir)` to run an export.
"""

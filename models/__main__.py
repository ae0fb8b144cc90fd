"""`python -m models`: a table of every architecture with parameters, GMACs and input size."""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from .registry import create_model, get_model_spec, list_models


def measure(name: str, input_size: int) -> tuple[float, float]:
    """(parameters in millions, multiply-accumulates per image in billions: torchvision's "GFLOPS").

    Counted on the meta device, so no memory is allocated and no arithmetic runs.
    """
    with torch.device("meta"):
        model = create_model(name).eval()
        x = torch.empty(1, 3, input_size, input_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    params = sum(p.numel() for p in model.parameters())
    return params / 1e6, counter.get_total_flops() / 2 / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    parser.add_argument("pattern", nargs="?", help="shell-style filter on names, e.g. 'cifar_*'")
    args = parser.parse_args(argv)
    names = list_models(args.pattern)
    if not names:
        parser.error(f"no architecture matches {args.pattern!r}")
    header = f"{'name':<24} {'family':<12} {'params (M)':>10} {'GMACs':>8} {'input':>9} {'classes':>7}  description"
    print(header)
    print("-" * len(header))
    for name in names:
        spec = get_model_spec(name)
        size = spec.preprocess.input_size
        params, gmacs = measure(name, size)
        print(
            f"{name:<24} {spec.family:<12} {params:>10.2f} {gmacs:>8.3f} "
            f"{f'{size}x{size}':>9} {spec.default_num_classes:>7}  {spec.description}"
        )
    print(
        "\nGMACs: billions of multiply-accumulates per image at the native input size (torchvision calls them GFLOPS)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

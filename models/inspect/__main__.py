"""`python -m models.inspect`: pictures and numbers from inside a ResNet, in one report.md.

    python -m models.inspect --checkpoint runs/resnet20-digits/best.pt --data digits_images/ --out inspect/
    python -m models.inspect --arch resnet50 --weights resnet50.pth --image cat.jpg --gradcam --out inspect/

Writes to --out: feature maps of the stem and each stage, the first conv's filters, the residual-vs-
identity ratio per block, gradient norms per layer on one labelled batch, dead-ReLU fractions per stage,
Grad-CAM overlays (--gradcam), the autograd graph (when torchviz and Graphviz are installed), and
report.md embedding them with a per-layer table (output shape, parameters, FLOPs); inspection.json holds
the numbers. Images go through the server's decoding and preprocessing (the checkpoint's `preprocess`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, model_from_checkpoint
from ..imageio import ImageDecodeError
from ..labels import imagenet_class_names
from ..preprocess import EncodedImageTransform
from ..pretrained import load_pretrained
from ..registry import create_model, get_model_spec
from .report import InspectionInputs, inspect_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class InspectError(ValueError):
    """Bad input to the command line; the message says which file and what was wrong."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    model = p.add_argument_group("the model (one of)")
    model.add_argument("--checkpoint", type=Path, help="one of our checkpoints (runs/<name>/best.pt)")
    model.add_argument(
        "--arch", help="an architecture name (`python -m models` lists them), random init unless --weights"
    )
    model.add_argument(
        "--weights", help="with --arch: a .pth/.safetensors file or torchvision:/timm: name from the local cache"
    )
    model.add_argument("--num-classes", type=int, help="with --arch: classifier size (default: the architecture's)")
    model.add_argument("--no-ema", action="store_true", help="with --checkpoint: the raw weights, not the EMA ones")
    data = p.add_argument_group("inputs (at least one)")
    data.add_argument(
        "--image",
        nargs="+",
        type=Path,
        default=[],
        metavar="IMG",
        help="images for predictions, feature maps and Grad-CAM (also the batch when there is no --data)",
    )
    data.add_argument(
        "--data",
        type=Path,
        metavar="FOLDER",
        help="a labelled batch: an ImageFolder tree whose class folders are named as the model's classes",
    )
    data.add_argument(
        "--batch-size", type=int, default=32, help="images taken from --data, spread over the classes (default: 32)"
    )
    out = p.add_argument_group("what to write")
    out.add_argument("--out", type=Path, required=True, help="output directory (created; files in it are replaced)")
    out.add_argument(
        "--layers",
        nargs="+",
        help="modules whose feature maps to draw (default: maxpool, i.e. the stem, and every stage)",
    )
    out.add_argument("--gradcam", action="store_true", help="Grad-CAM overlays of the top-k classes for each image")
    out.add_argument("--top-k", type=int, default=3, help="classes per Grad-CAM overlay (default: 3)")
    out.add_argument("--no-graph", action="store_true", help="skip the autograd graph picture (large for deep nets)")
    return p


def load_model(args: argparse.Namespace):
    """(model, class names, preprocess spec, a title) from --checkpoint or --arch [--weights]."""
    if args.checkpoint:
        model, ckpt = model_from_checkpoint(args.checkpoint, use_ema=not args.no_ema)
        return model, list(ckpt.class_names), ckpt.preprocess, f"{ckpt.arch} ({args.checkpoint})"
    spec = get_model_spec(args.arch)
    model = create_model(args.arch, num_classes=args.num_classes)
    num_classes = model.fc.out_features
    class_names, preprocess, title = None, spec.preprocess, f"{args.arch} (random init)"
    if args.weights:
        info = load_pretrained(model, args.weights)
        class_names, preprocess = info.class_names, info.preprocess or preprocess
        title = f"{args.arch} ({args.weights})"
    if class_names is None:
        class_names = (
            list(imagenet_class_names()) if num_classes == 1000 else [f"class {i}" for i in range(num_classes)]
        )
    return model.eval(), class_names, preprocess, title


def read_image(path: Path, transform: EncodedImageTransform) -> torch.Tensor:
    try:
        return transform.pixels(path.read_bytes())
    except OSError as e:
        raise InspectError(f"{path}: cannot read the file ({e.strerror or e})") from None
    except ImageDecodeError as e:
        raise InspectError(f"{path}: {e}") from None


def labelled_folder(root: Path, class_names: list[str], limit: int) -> list[tuple[Path, int]]:
    """Up to `limit` (image, class index) pairs from `root/<class>/...`, taken round-robin over classes."""
    if not root.is_dir():
        raise InspectError(f"--data {root}: not a directory (expected class folders, e.g. {root}/{class_names[0]}/)")
    index = {name: i for i, name in enumerate(class_names)}
    per_class = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in index:
            raise InspectError(
                f"--data {root}: folder {folder.name!r} is not one of the model's {len(class_names)} classes "
                f"({', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''})"
            )
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        per_class.append([(p, index[folder.name]) for p in files])
    picked = [
        item
        for rank in range(max(map(len, per_class), default=0))
        for files in per_class
        if rank < len(files)
        for item in [files[rank]]
    ]
    if not picked:
        raise InspectError(f"--data {root}: no images ({', '.join(IMAGE_SUFFIXES)}) in class folders")
    return picked[:limit]


def gather_inputs(
    args: argparse.Namespace, class_names: list[str], transform: EncodedImageTransform
) -> InspectionInputs:
    images = [(path.name, read_image(path, transform)) for path in args.image]
    if args.data is None:
        return InspectionInputs(images, torch.stack([p for _, p in images]), None, f"the {len(images)} --image files")
    pairs = labelled_folder(args.data, class_names, args.batch_size)
    batch = torch.stack([read_image(path, transform) for path, _ in pairs])
    labels = torch.tensor([label for _, label in pairs])
    if not images:  # the first image of the batch stands in for --image
        images = [(pairs[0][0].name, batch[0])]
    classes = len(set(labels.tolist()))
    return InspectionInputs(images, batch, labels, f"from {args.data} ({classes} classes)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.checkpoint) == bool(args.arch):
        parser.error("give the model with --checkpoint PATH or --arch NAME (one of them)")
    if (args.weights or args.num_classes) and not args.arch:
        parser.error("--weights and --num-classes go with --arch")
    if not args.image and args.data is None:
        parser.error("give something to look at: --image IMG ... and/or --data FOLDER")
    if args.batch_size < 1 or args.top_k < 1:
        parser.error("--batch-size and --top-k must be at least 1")
    try:
        model, class_names, preprocess, title = load_model(args)
        inputs = gather_inputs(args, class_names, EncodedImageTransform(preprocess))
        result = inspect_model(
            model,
            class_names,
            preprocess,
            inputs,
            args.out,
            title=title,
            layers=args.layers,
            gradcam_top_k=args.top_k if args.gradcam else 0,
            graph=not args.no_graph,
        )
    except (CheckpointError, InspectError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(result.files)} files; open {result.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m train`: the command line (flags override the --recipe, which overrides the defaults)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from imagedata.errors import DataError
from imagedata.kinds import DATA_KINDS
from models import CheckpointError

from .checkpoints import CheckpointSaveError, RunDirError
from .config import BARE_PRETRAINED, CHOICES, DEFAULTS, ConfigError, list_recipes, resolve_config
from .distributed import launched_as_main

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
DATA_FLAGS = ("data", "data_dir", "val_split", "num_classes", "synthetic_size", "seed", "workers")

EPILOG = """\
examples:
  python -m train --arch resnet50 --data imagenet --data-dir /data/imagenet   # the ImageNet recipe by default
  python -m train --arch resnet20 --data cifar10 --dry-run                    # the resolved config, nothing run
  python -m train --arch resnet20 --data digits --epochs 10
  python -m train --recipe cifar_paper --data-dir data/cifar
  python -m train --arch resnet50 --data imagenet --data-dir /data/imagenet --recipe imagenet_original
  torchrun --nproc_per_node=8 -m train --recipe imagenet_modern --data-dir /data/imagenet --amp bf16
  python -m train --arch resnet18 --data folder --data-dir my_photos --val-split 0.2 \\
      --pretrained torchvision:resnet18.IMAGENET1K_V1 --recipe finetune
  python -m train --resume runs/resnet20-digits/last.pt
  python -m train --resume runs/resnet20-digits/best.pt --name resnet20-digits-from-best   # a fork
  python -m train --predict cat.jpg dog.png --checkpoint runs/resnet20-digits/best.pt
  python -m train --predict cat.jpg --checkpoint resnet50-11ad3fa6.pth --arch resnet50   # torchvision weights
  python -m train --evaluate --checkpoint runs/resnet20-digits/best.pt         # its own validation split
  python -m train manifests --arch resnet50 --data imagenet --nodes 2 --gpus-per-node 8 --image IMG --out k8s/job
                                     # a Kubeflow PyTorchJob (python -m train manifests --help)
  python -m train --evaluate --checkpoint resnet50-11ad3fa6.pth --arch resnet50 --data imagenet --data-dir /data/imagenet
"""


def _flag(parser: argparse._ActionGroup, name: str, help: str, **kwargs: Any) -> None:
    key = name.lstrip("-").replace("-", "_")
    assert key in DEFAULTS, key
    default = DEFAULTS[key]
    shown = f" (default: {default})" if default not in (None, [], False) else ""
    if (isinstance(default, bool) or kwargs.pop("boolean", False)) and "action" not in kwargs:
        kwargs["action"] = argparse.BooleanOptionalAction  # --x / --no-x
    if key in CHOICES and "action" not in kwargs:  # --data's action checks its own
        kwargs["choices"] = CHOICES[key]
    parser.add_argument(name, dest=key, default=argparse.SUPPRESS, help=help + shown, **kwargs)


class DataFlag(argparse.Action):
    """--data KIND, or --data shards:DIR, which also sets --data-dir."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        kind, _, location = value.partition(":")
        if kind not in DATA_KINDS or (location and kind != "shards"):
            parser.error(f"argument --data: invalid choice {value!r} (choose from {', '.join(DATA_KINDS)}, shards:DIR)")
        namespace.data = kind
        if location:
            namespace.data_dir = location


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a ResNet (ImageNet, CIFAR, an image folder, scikit-learn's digits or synthetic data). "
        "Writes runs/<name>/{last.pt,best.pt,config.yaml,metrics.csv,curves.png} and TensorBoard events.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _what_to_train(p)
    _network_flags(p)
    _optimisation_flags(p)
    _augmentation_flags(p)
    _eval_preprocess_flags(p)
    _speed_flags(p)
    _checkpoint_flags(p)
    _prediction_flags(p)
    return p


def _what_to_train(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to train")
    g.add_argument(
        "--recipe",
        help="a recipe name from train/recipes (see --list-recipes) or a YAML file path "
        "(default: the recipe for the data and the network: imagenet_original for ImageNet nets on "
        "imagenet, cifar_paper for the paper's resnet20-110 on CIFAR, cifar_modern for the CIFAR "
        "ResNet-18..101, digits for digits)",
    )
    g.add_argument(
        "--dry-run", action="store_true", help="print the fully resolved config as YAML and exit; nothing is written"
    )
    g.add_argument("--list-recipes", action="store_true", help="list the recipes and exit")
    _flag(g, "--arch", "network name (`python -m models` lists them), e.g. resnet20, resnet50, cifar_preact_resnet18")
    _flag(
        g,
        "--data",
        f"dataset kind: {', '.join(DATA_KINDS)}; shards:DIR is --data shards --data-dir DIR "
        "(tar shards written by `python -m train.shards`; DIR may be a URL when fsspec is installed)",
        action=DataFlag,
    )
    _flag(
        g,
        "--data-dir",
        "dataset root (imagenet/folder: train/ and val/ class folders; cifar: the folder holding cifar-10-batches-py/)",
    )
    _flag(g, "--val-split", "folder data without val/: hold out this fraction of each class for validation", type=float)
    _flag(
        g,
        "--max-unreadable-images",
        "folder data: training images that fail to decode are skipped and "
        "reported at the end of each epoch; more than this many in one epoch stops the run",
        type=int,
    )
    _flag(g, "--num-classes", "classes of synthetic data (other kinds count their class folders)", type=int)
    _flag(g, "--synthetic-size", "training images of synthetic data", type=int)
    _flag(g, "--out", "directory holding the runs")
    _flag(g, "--name", "run name: outputs go to OUT/NAME (default: ARCH-DATA)")


def _network_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("network and fine-tuning")
    _flag(
        g,
        "--pretrained",
        "start from weights: a .pth/.safetensors file, one of our checkpoints, or "
        "torchvision:resnet50.IMAGENET1K_V2 / timm:resnet50.a1_in1k from the local cache; bare --pretrained: "
        "torchvision's weights for --arch from the local torch hub cache (TORCH_HOME/hub/checkpoints, never "
        "downloaded); the head is re-initialised when the classes differ and the weights' own preprocessing is used",
        nargs="?",
        const=BARE_PRETRAINED,
    )
    _flag(g, "--freeze-backbone", "train only the classifier")
    _flag(g, "--freeze-until", "freeze the stem and the stages up to this one (stem, layer1..layer4)")
    _flag(g, "--head-lr", "learning rate of the classifier (default: the base LR)", type=float)
    _flag(g, "--drop-path-rate", "stochastic depth rate", type=float)
    _flag(g, "--dropout", "dropout before the classifier", type=float)
    _flag(g, "--zero-init-residual", "start every residual branch at zero (last BN gamma = 0)", boolean=True)
    _flag(
        g,
        "--norm",
        "normalisation layers: batch (default) or none (the no-BatchNorm ablation; train it with "
        "a lower --lr, e.g. 0.01)",
    )
    _flag(
        g,
        "--imagenet-stem",
        "on 32x32 data (cifar10/100, digits) keep an ImageNet network as named (7x7 stem + max-pool) "
        "instead of its CIFAR variant (--arch resnet18 --data cifar10 trains cifar_resnet18 by default)",
    )
    _flag(g, "--plain", "no shortcuts: the plain network of the same depth (the CIFAR paper's comparison)")
    _flag(
        g,
        "--shortcut",
        "projection of shape-changing shortcuts: A zero-pad, B 1x1 conv + BN, D avg-pool + 1x1 "
        "(default: the architecture's own: A for resnet20-110, B for the others)",
    )


def _optimisation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation")
    _flag(g, "--epochs", "epochs to train", type=int)
    _flag(g, "--batch-size", "global batch per optimizer step (split over processes and accumulation steps)", type=int)
    _flag(g, "--lr", "base learning rate", type=float)
    _flag(
        g,
        "--lr-base-batch",
        "scale --lr linearly by batch-size / this (e.g. 256 for 'lr 0.1 per 256 images')",
        type=int,
    )
    _flag(g, "--optimizer", "optimizer")
    _flag(g, "--momentum", "SGD momentum", type=float)
    _flag(g, "--nesterov", "Nesterov momentum")
    _flag(g, "--weight-decay", "weight decay", type=float)
    _flag(g, "--no-wd-norm-bias", "no weight decay on BatchNorm parameters and biases", action="store_true")
    _flag(g, "--scheduler", "LR schedule, stepped per iteration (step: x lr-gamma every 30 epochs or at --milestones)")
    _flag(g, "--warmup-epochs", "linear warmup length in epochs (fractions allowed)", type=float)
    _flag(g, "--warmup-start-factor", "warmup starts at this fraction of the LR", type=float)
    _flag(g, "--milestones", "epochs at which step/multistep multiply the LR by --lr-gamma", type=float, nargs="+")
    _flag(g, "--lr-gamma", "LR factor at each milestone", type=float)
    _flag(g, "--min-lr", "final LR of the cosine schedule", type=float)
    _flag(g, "--grad-clip", "clip the gradient norm to this value (after unscaling under fp16)", type=float)
    _flag(g, "--accum-steps", "gradient accumulation: micro-batches per optimizer step", type=int)


def _augmentation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("regularisation and augmentation")
    _flag(g, "--label-smoothing", "label smoothing of the cross-entropy", type=float)
    _flag(g, "--mixup", "MixUp alpha (0: off)", type=float)
    _flag(g, "--cutmix", "CutMix alpha (0: off); with --mixup one of the two per batch", type=float)
    _flag(g, "--train-crop", "training crop (default: random-crop for 32x32 data, random-resized-crop otherwise)")
    _flag(g, "--train-size", "training crop size (default: the eval input size)", type=int)
    _flag(g, "--crop-padding", "padding of random-crop (default: 4; digits: 2)", type=int)
    _flag(g, "--hflip", "random horizontal flips (default: on, off for digits)", boolean=True)
    _flag(g, "--auto-augment", "automatic augmentation policy")
    _flag(g, "--randaugment-magnitude", "RandAugment magnitude", type=int)
    _flag(g, "--random-erasing", "random erasing probability", type=float)
    _flag(g, "--ema", "keep an exponential moving average of the weights (evaluated and deployed)")
    _flag(g, "--ema-decay", "EMA decay per optimizer step", type=float)


def _eval_preprocess_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation preprocessing (stored in the checkpoint)")
    _flag(g, "--image-size", "network input size (the resize keeps the crop ratio)", type=int)
    _flag(g, "--val-resize", "resize the shorter side to this before the center crop", type=int)
    _flag(g, "--interpolation", "resize interpolation")
    _flag(
        g, "--mean", "input normalisation mean per RGB channel (with --std; default: the data's)", type=float, nargs=3
    )
    _flag(
        g,
        "--std",
        "input normalisation std per RGB channel (e.g. 0.5 0.5 0.5: the CIFAR write-up's code)",
        type=float,
        nargs=3,
    )


def _speed_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speed and reproducibility")
    _flag(g, "--amp", "mixed precision autocast (fp16 uses a GradScaler)")
    _flag(g, "--channels-last", "channels_last memory format")
    _flag(
        g,
        "--grad-checkpoint",
        "gradient checkpointing: recompute each block's activations in the backward pass instead of "
        "storing them (less memory for deep or wide nets, about one more forward per step; same gradients)",
    )
    _flag(g, "--compile", "torch.compile the model")
    _flag(g, "--sync-bn", "SyncBatchNorm across processes (CUDA only)")
    _flag(g, "--device", "cpu, cuda, cuda:N or auto")
    _flag(g, "--workers", "data loader processes (default: 0 for in-memory data, else up to 8)", type=int)
    _flag(
        g,
        "--decoder",
        "training image decoder (folder, imagenet, shards): pil, turbo (libjpeg-turbo to a tensor, the same "
        "pixels), draft (JPEG DCT scaling under the random-resized crop), region (only the crop's region of "
        "a JPEG decoded, the same pixels; needs nvImageCodec), cuda (shards: batched on the GPU); auto: cuda "
        "for shards when training on CUDA, else region where nvImageCodec is installed, else turbo",
    )
    _flag(g, "--val-batch-size", "validation batch size per process", type=int)
    _flag(g, "--seed", "random seed", type=int)
    _flag(g, "--deterministic", "deterministic algorithms (slower)")


def _checkpoint_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("checkpoints and logs")
    _flag(
        g,
        "--resume",
        "continue a run from its own last.pt (a path, its run directory, or 'auto' for "
        "OUT/NAME/last.pt when it exists); from any other checkpoint (best.pt, a copy) add --name NEW to fork a "
        "new run from it (recorded as forked_from). batch-size and accum-steps cannot change on resume; a run "
        "stopped mid-epoch resumes with its own number of processes",
    )
    _flag(g, "--overwrite", "replace an existing run directory (only one made by `python -m train`)")
    _flag(g, "--log-every", "steps between progress updates", type=int)
    _flag(
        g,
        "--save-every-steps",
        "also write last.pt every this many optimizer steps within an epoch (0: only at epoch ends), which "
        "bounds the work a crash loses; a worker group restarted by torchrun --max-restarts continues from "
        "last.pt by itself",
        type=int,
    )
    _flag(g, "--tensorboard", "write TensorBoard event files")
    _flag(g, "--plots", "write curves.png every epoch")
    _flag(
        g,
        "--log-internals",
        "per epoch, log each layer's gradient norm and each block's residual ratio "
        "(||F(x)|| / ||identity||) on a fixed validation batch to TensorBoard (one extra forward/backward)",
    )


def _prediction_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prediction and evaluation")
    g.add_argument("--predict", "--image", nargs="+", metavar="IMG", help="classify images with --checkpoint and exit")
    g.add_argument(
        "--evaluate",
        action="store_true",
        help="measure --checkpoint on the validation split of "
        "--data/--data-dir (default: the checkpoint's own) and exit: top-1/top-5, per-class accuracy, "
        "a confusion matrix; writes EVAL_OUT/evaluation.json and confusion.png",
    )
    g.add_argument(
        "--checkpoint",
        help="for --predict/--evaluate: one of our checkpoints, or a torchvision/timm "
        "weight file (or cache name such as torchvision:resnet50.IMAGENET1K_V2) with --arch",
    )
    g.add_argument("--eval-out", default="evaluation", help="where --evaluate writes (default: %(default)s)")
    g.add_argument("--topk", type=int, default=5, help="classes to print per image with --predict (default: 5)")


def config_overrides(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """(the config keys given on the command line, the recipe) from parsed arguments."""
    options = {k: v for k, v in vars(args).items() if k in DEFAULTS}
    return options, args.recipe


def manifests_main(argv: Sequence[str]) -> int:
    """`python -m train manifests ...`: 0 when written, 2 for bad options."""
    from .kubeflow import JobOptions, ManifestError, generate
    from .kubeflow import build_parser as manifests_parser

    args, train_args = manifests_parser().parse_known_args(argv)
    overrides, recipe = config_overrides(build_parser().parse_args(train_args))
    try:
        config = resolve_config(overrides, recipe)
        options = JobOptions(
            image=args.image,
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            out=args.out,
            train_args=list(train_args),
            volume_claim=args.volume_claim,
            cpus_per_node=args.cpus_per_node,
            memory_per_node=args.memory_per_node,
            min_nodes=args.min_nodes,
            max_restarts=args.max_restarts,
            save_every_steps=args.save_every_steps,
            job_name=args.job_name,
        )
        files = generate(options, config)
    except (ConfigError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in files:
        print(f"wrote {path}  (kubectl apply -f {path})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["manifests"]:
        return manifests_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    options, recipe = config_overrides(args)
    predict, checkpoint, topk = args.predict, args.checkpoint, args.topk
    if args.list_recipes:
        for name, description in list_recipes().items():
            print(f"{name:22s} {description}")
        return EXIT_OK
    try:
        if predict or args.evaluate:
            if not checkpoint:
                parser.error("--predict and --evaluate need --checkpoint PATH")
            if predict:
                from classify.predict import predict_images

                return predict_images(predict, checkpoint, topk=topk, arch=options.get("arch"))
            from classify.weights import evaluate_weights

            data_flags = {k: v for k, v in options.items() if k in DATA_FLAGS}
            evaluate_weights(checkpoint, options.get("arch"), data_flags, Path(args.eval_out))
            return EXIT_OK
        from .run import build_config, run

        config = build_config(options, recipe)
        if args.dry_run:
            print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            return EXIT_OK
        if config.arch_source and launched_as_main():
            print(f"arch: {config.arch_source}", flush=True)
        if config.recipe and launched_as_main():
            print(f"recipe: {config.recipe} ({config.recipe_source or '--recipe'})", flush=True)
        result = run(config)
    except (
        ConfigError,
        DataError,
        CheckpointError,
        CheckpointSaveError,
        RunDirError,
        ValueError,
        FileNotFoundError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, (ConfigError, RunDirError)) else EXIT_ERROR
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, without the checkpoint the first one asked for
        print("interrupted", file=sys.stderr)
        return 130
    if result.interrupted_by is not None:
        return 128 + int(result.interrupted_by)
    if launched_as_main():
        print(f"done: best val top-1 {result.best_top1:.2f}% in {result.seconds:.0f}s; checkpoints in {result.run_dir}")
    return EXIT_OK

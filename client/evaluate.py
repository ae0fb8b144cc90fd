"""`python -m client evaluate`: the accuracy of an export artifact or of the running server on labelled images.

    python -m client evaluate --local exports/digits --format onnx --data digits
    python -m client evaluate --url http://localhost:8080 --model digits --data digits --out eval/served
    python -m client evaluate --local exports/resnet50 --images /data/imagenet/val --out eval/onnx

Labelled images are an ImageFolder tree (`DIR/<class name>/<image>`, the class names being the model's),
or `--data digits` (the name `python -m train --evaluate --data digits` uses): scikit-learn's digits
validation split, the split training measured, written as 32x32 PNG files to a temporary folder
(`--digits`, its old name, still works). The metrics (top-1/top-5, per-class accuracy, confusion matrix) come from
`classify.evaluation`, the same code as `python -m train --evaluate`, so a checkpoint, its artifacts and
the served model are measured exactly alike. Remote mode needs neither torch nor the training code
(`--data digits` excepted: it needs the `train` extra to make the images).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from classify.evaluation import Collected, collect_local

from .errors import ClientError
from .images import ImageTooLarge, images_in_folder, read_image
from .remote import TOKEN_ENV, PredictionClient, Predictions
from .v2 import add_protocol, prediction_client

EXIT_CODES = """exit status:
  0  every image was classified and the report was written
  1  some images could not be classified (the report covers the others and lists them)
  2  bad command line or labels (no class folders, folder names that are not the model's classes)
  3  the server could not be reached
  4  the model is not served there (HTTP 404), or --local's export cannot be loaded
  5  the server refused the token: pass --token
"""
EXIT_OK, EXIT_FAILED_IMAGES, EXIT_USAGE = 0, 1, 2
BUILT_IN_DATA = ("digits",)  # the --data kinds that need no files (imagedata.kinds names them the same)
TOP_K = 5  # what top-5 needs from every prediction


class DeprecatedDigits(argparse.Action):
    """`--digits`, the old spelling of `--data digits`: still works, and says the new name."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print("note: --digits is deprecated; use --data digits", file=sys.stderr)
        namespace.data = "digits"


@dataclass
class LabelledImages:
    """Image paths, their true class names, and what they are (for the report)."""

    paths: list[Path]
    truth: list[str]
    description: str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client evaluate",
        description=__doc__,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("what to evaluate (one of)")
    which = model.add_mutually_exclusive_group(required=True)
    which.add_argument("--local", metavar="EXPORT_DIR", type=Path, help="an export directory, run in this process")
    which.add_argument("--url", help="a TorchServe inference API, e.g. http://localhost:8080 (with --model)")
    model.add_argument("--model", help="--url: the model name on the server")
    model.add_argument(
        "--format",
        metavar="FORMAT",
        help="--local: the artifact to evaluate (onnx, onnx-int8, torchscript, trt; default: the fastest that "
        "passed parity on --device)",
    )
    model.add_argument("--device", default="cpu", help="--local device: cpu or cuda (default: %(default)s)")
    data = parser.add_argument_group("labelled images (one of)")
    images = data.add_mutually_exclusive_group(required=True)
    images.add_argument("--images", metavar="DIR", type=Path, help="an ImageFolder tree: DIR/<class name>/<image>")
    images.add_argument(
        "--data",
        choices=BUILT_IN_DATA,
        help="built-in labelled data, named as in `python -m train --data`: digits (scikit-learn's digits "
        "validation split, as 32x32 PNG files)",
    )
    images.add_argument("--digits", action=DeprecatedDigits, help="deprecated: use --data digits")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("evaluation"),
        help="where evaluation.json and confusion.png are written (default: %(default)s)",
    )
    remote = parser.add_argument_group("server options (--url)")
    add_protocol(remote)
    remote.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"TorchServe inference key (default: ${TOKEN_ENV}); `python -m serve token` prints it",
    )
    remote.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default: %(default)s)")
    remote.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per answer (default: %(default)s)")
    remote.add_argument("--retries", type=int, default=4, help="retries after HTTP 503 busy (default: %(default)s)")
    return parser


def folder_images(root: Path, description: str | None = None) -> LabelledImages:
    """Every image under `root/<class>/`, labelled with its class folder's name (sorted, reproducible)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected DIR/<class name>/<image>)")
    paths, truth = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in images_in_folder(folder):
            paths.append(path)
            truth.append(folder.name)
    if not paths:
        raise ValueError(
            f"{root}: no labelled images: expected class folders with images in them (DIR/<class name>/<image>)"
        )
    return LabelledImages(paths, truth, description or f"{root} ({len(paths)} images)")


@contextmanager
def labelled_images(args: argparse.Namespace) -> Iterator[LabelledImages]:
    if args.data is None:
        yield folder_images(args.images)
        return
    # The digits come from the dataset readers (scikit-learn): imported only for --data digits.
    from imagedata.digits import write_digits_folder

    with tempfile.TemporaryDirectory(prefix="digits-val-") as tmp:
        root = write_digits_folder(tmp, split="val", image_size=32)
        found = folder_images(root)
        yield LabelledImages(
            found.paths, found.truth, f"digits validation split ({len(found.paths)} PNG images, 32x32)"
        )


def collect_remote(client: PredictionClient, images: LabelledImages, concurrency: int) -> Collected:
    """Ranked names from the server's top-k answers (in the server's order, highest first)."""
    out = Collected()

    def one(path: Path) -> Predictions:
        try:
            data = read_image(path)
        except ImageTooLarge as e:
            raise ClientError(str(e)) from None
        except OSError as e:
            raise ClientError(f"cannot read the file: {e.strerror or e}") from None
        return client.predict(data)

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(images.paths)))) as pool:
        futures = [pool.submit(one, path) for path in images.paths]
        try:
            for path, true_name, future in zip(images.paths, images.truth, futures):
                try:
                    prediction = future.result()
                except ClientError as e:
                    if e.fatal:
                        raise
                    out.failed[str(path)] = str(e)
                    continue
                out.ranked.append([name for name, _ in prediction])
                out.truth.append(true_name)
        except ClientError:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    out.fewest_returned = min((len(r) for r in out.ranked), default=None)
    return out


def remote_class_names(collected: Collected) -> list[str]:
    """The server does not publish its class list: the labels' classes, then any other class it predicted."""
    labelled = sorted(set(collected.truth))
    predicted = sorted({name for names in collected.ranked for name in names} - set(labelled))
    if collected.truth and not set(labelled) & {name for names in collected.ranked for name in names}:
        from classify.evaluation import EvaluationError

        raise EvaluationError(
            f"the server never predicted any of the folder's classes {labelled[:10]} (it answers e.g. "
            f"{predicted[:5]}); the folder names must be the model's class names"
        )
    return labelled + predicted


def evaluate_main(argv: list[str], log: Callable[[str], None] = print) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.url is not None and not args.model:
        parser.error("--url needs --model NAME (the model's name on the server)")
    if args.local is not None and args.model:
        parser.error("--model is for --url; --local evaluates the export directory it names")
    if args.url is not None and (args.format or args.device != "cpu"):
        parser.error("--format and --device are for --local; the server runs the artifact its archive holds")
    if args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, got {args.concurrency}")

    from classify.evaluation import EvaluationError, evaluate_predictions

    try:
        with labelled_images(args) as images:
            if args.local is not None:
                from .local import LocalPredictor  # torch is imported only here

                classifier = LocalPredictor(args.local, fmt=args.format, device=args.device, top_k=TOP_K).classifier
                source = f"{args.local} ({classifier.runner.format} on {args.device})"
                log(f"evaluating {source} on {images.description}")
                collected = collect_local(classifier, images.paths, images.truth, read=read_image)
                class_names = list(classifier.class_names)
            else:
                client = prediction_client(
                    args.protocol, args.url, args.model, timeout_s=args.timeout, retries=args.retries, token=args.token
                )
                source = f"model {args.model!r} at {client.url}"
                log(f"evaluating {source} on {images.description}")
                collected = collect_remote(client, images, args.concurrency)
                class_names = remote_class_names(collected)
        if not collected.ranked:
            print(
                f"error: none of the {len(images.paths)} images could be classified, e.g. "
                f"{next(iter(collected.failed.items()))}",
                file=sys.stderr,
            )
            return EXIT_FAILED_IMAGES
        report = evaluate_predictions(
            collected.ranked, collected.truth, class_names, source=source, data=images.description
        )
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (EvaluationError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    k = min(TOP_K, len(class_names))
    if collected.fewest_returned is not None and collected.fewest_returned < k:
        note = (
            f"the model answered only its top {collected.fewest_returned} classes for some images, so top-{k} "
            f"counts a hit only within those (a lower bound); package the archive with top_k >= {k} "
            f"(`python -m serve package --top-k {k}`) for a true top-{k}"
        )
        report.extra["top_k_note"] = note
        print(f"warning: {note}", file=sys.stderr)
    if collected.failed:
        report.extra["failed_images"] = collected.failed
    try:
        paths = report.write(args.out)
    except ImportError as e:  # matplotlib belongs to the train/loadtest extras, not the serving runtime
        print(
            f"error: cannot draw confusion.png ({e}); install matplotlib (pip install 'resnet-deploy[train]')",
            file=sys.stderr,
        )
        return EXIT_USAGE
    log(report.summary())
    log(f"wrote {paths['json']} and {paths['confusion']}")
    if collected.failed:
        print(
            f"{len(collected.failed)} of {len(images.paths)} images could not be classified "
            f"(listed in {paths['json']}), e.g. {next(iter(collected.failed.items()))}",
            file=sys.stderr,
        )
        return EXIT_FAILED_IMAGES
    return EXIT_OK

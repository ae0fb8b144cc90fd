"""`python -m client`: classify images with a TorchServe model (or an export, `--local`), or load-test it.

python -m client cat.jpg photos/ --url http://localhost:8080 --model resnet50
python -m client --local exports/resnet50 cat.jpg
python -m client loadtest --host http://127.0.0.1:8080 --model resnet50 --users 8 --duration 60s
python -m client openloop --host http://127.0.0.1:8080 --model resnet50 --rate 10 20 40   # Poisson arrivals
python -m client soak --run-dir .serve --duration 10m       # mixed valid and hostile traffic, pass/fail
python -m client evaluate --url http://localhost:8080 --model resnet50 --images /data/imagenet/val
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .arguments import positive_int
from .errors import ClientError, LocalModelError
from .images import ImageTooLarge, collect_images, read_image
from .output import ImageResult, format_json, format_table
from .remote import TOKEN_ENV
from .v2 import add_protocol, prediction_client

EXIT_CODES = """exit status:
  0  every image was classified
  1  some images failed (bad image, HTTP error from the server); the others are printed
  2  bad command line (missing file, folder without images)
  3  the server could not be reached (connection refused, unknown host)
  4  the model is not served there (HTTP 404), or --local's export cannot be loaded
  5  the server refused the token (missing, wrong or expired): pass --token
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description=__doc__,
        epilog=EXIT_CODES + "\nLoad testing: `python -m client loadtest --help` (closed loop, locust), "
        "`python -m client openloop --help` (fixed arrival rates). Accuracy on labelled images: "
        "`python -m client evaluate --help`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files and/or folders (searched recursively)")
    parser.add_argument(
        "--url", default="http://localhost:8080", help="TorchServe inference API (default: %(default)s)"
    )
    parser.add_argument("--model", default="resnet50", help="model name on the server (default: %(default)s)")
    add_protocol(parser)
    parser.add_argument(
        "--top-k",
        type=positive_int,
        default=5,
        help="classes shown per image (default: %(default)s); remote mode shows at most what the server returns",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"TorchServe inference key, sent as 'Authorization: Bearer' (default: ${TOKEN_ENV}); "
        "`python -m serve token` prints it",
    )
    parser.add_argument(
        "--concurrency", type=positive_int, default=8, help="requests in flight at once (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for each answer (default: %(default)s)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=4,
        help="retries after HTTP 503 (server busy), with exponential backoff from 0.5 s (default: %(default)s)",
    )
    local = parser.add_argument_group("without a server")
    local.add_argument(
        "--local",
        metavar="EXPORT_DIR",
        type=Path,
        help="predict in this process from an export directory (exports/NAME): same decoding, preprocessing "
        "and runner as the server; --url and --model are ignored",
    )
    local.add_argument(
        "--format",
        metavar="FORMAT",
        help="--local artifact, a format the export holds: onnx, onnx-int8, torchscript, trt (default: the fastest "
        "that passed parity on --device)",
    )
    local.add_argument("--device", default="cpu", help="--local device: cpu or cuda (default: %(default)s)")
    local.add_argument(
        "--explain",
        action="store_true",
        help="--local: also write a Grad-CAM overlay per image (where the evidence for each top class lies), "
        "computed with the checkpoint the export was made from; its path is printed with the table",
    )
    local.add_argument(
        "--explain-dir",
        type=Path,
        default=Path("explanations"),
        metavar="DIR",
        help="where --explain writes <image>.gradcam.png (default: %(default)s)",
    )
    return parser


def open_predictor(args: argparse.Namespace):
    """A `.predict(bytes) -> [(label, prob)]` object and a description of it for the JSON output."""
    if args.local is not None:
        from .local import LocalPredictor  # torch is imported only here

        predictor = LocalPredictor(args.local, fmt=args.format, device=args.device, top_k=args.top_k)
        return predictor, {
            "export": str(args.local),
            "format": predictor.classifier.runner.format,
            "device": args.device,
        }
    client = prediction_client(
        args.protocol, args.url, args.model, timeout_s=args.timeout, retries=args.retries, token=args.token
    )
    return client, {"url": client.url, "model": args.model}


def classify(predictor, path: Path, top_k: int, explain=None) -> ImageResult:
    try:
        data = read_image(path)
    except ImageTooLarge as e:
        return ImageResult(str(path), error=str(e))
    except OSError as e:
        return ImageResult(str(path), error=f"cannot read the file: {e.strerror or e}")
    try:
        result = ImageResult(str(path), predictions=predictor.predict(data)[:top_k])
        if explain is not None:
            result.explanation = str(explain(path, data))
        return result
    except ClientError as e:
        if e.fatal:
            raise
        return ImageResult(str(path), error=str(e))


def local_explainer(export_dir: Path, out_dir: Path, top_k: int) -> Callable[[Path, bytes], Path]:
    """`--explain`: (image path, its bytes) -> the Grad-CAM overlay written; errors as the client's."""
    from classify.explain import Explainer, ExplanationError  # imports torch: --local only

    try:
        explainer = Explainer(export_dir, out_dir, top_k=top_k)
    except ExplanationError as e:
        raise LocalModelError(str(e)) from None

    def explain(path: Path, data: bytes) -> Path:
        try:
            return explainer.explain(path, data)
        except ExplanationError as e:
            raise ClientError(str(e)) from None

    return explain


def predict_main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        paths = collect_images(args.images)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    if args.explain and args.local is None:
        parser.error("--explain needs --local EXPORT_DIR (the explanation is computed in this process)")
    try:
        predictor, source = open_predictor(args)
        explain = None
        if args.explain:
            explain = local_explainer(args.local, args.explain_dir, args.top_k)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code

    # --local runs in this process: threads would only fight over the same cores.
    workers = 1 if args.local is not None else min(args.concurrency, len(paths))
    results: list[ImageResult] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(classify, predictor, path, args.top_k, explain) for path in paths]
        try:
            for future in futures:  # in the order given, whatever order they finish in
                result = future.result()
                results.append(result)
                if not args.json:
                    print(format_table(result), flush=True)
        except ClientError as e:
            pool.shutdown(wait=False, cancel_futures=True)
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
    if args.json:
        print(format_json(results, source=source))
    failed = sum(not r.ok for r in results)
    if failed:
        print(f"{failed} of {len(results)} images failed", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["loadtest"]:
            from .loadtest import loadtest_main

            return loadtest_main(argv[1:])
        if argv[:1] == ["openloop"]:
            from .openloop import openloop_main

            return openloop_main(argv[1:])
        if argv[:1] == ["soak"]:
            from serve.servers import recorded  # the run directory's server, ports and keys; light (no torch)

            from .soak import soak_main

            return soak_main(argv[1:], recorded)
        if argv[:1] == ["evaluate"]:
            from .evaluate import evaluate_main

            return evaluate_main(argv[1:])
        return predict_main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`python -m client photos/ | head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

"""`python -m serve {package,triton-repo,start,stop,status,token,manifests}`: model archives and Triton model
repositories, the server process (TorchServe, or Triton with --server triton) and Kubernetes manifests.

Exit codes: 0 success; 1 a clear error (message on stderr); for `status`, 3 when no server is running,
4 when the server started from the run directory died (killed, or out of memory) without `stop`, and 1
when it runs but a model has no ready worker.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from export.manifest import FORMATS

from . import servers
from .budget import ImageCost
from .kubernetes import ManifestError, ManifestOptions, default_image, generate
from .package import PackageError, PackageOptions, package
from .server import ServerError, ServerSettings, run_in_foreground
from .triton_repo import RepoOptions, write_repository

NOT_RUNNING = 3
DIED = 4


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (PackageError, ServerError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve",
        description="Package exports as TorchServe model archives or a Triton model repository; start, stop and "
        "inspect the server.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (add_package, add_triton_repo, add_start, add_manifests, add_stop, add_status, add_token):
        add(commands)
    return parser


def add_package(commands) -> None:
    p = commands.add_parser(
        "package",
        help="export directory -> <model-store>/<name>.mar",
        description="Write <model-store>/<name>.mar: our handler, the export's manifest and artifact(s), and a "
        "model-config.yaml (workers, dynamic batching, timeouts).",
    )
    p.add_argument("--export-dir", type=Path, required=True, help="an export directory (holds manifest.json)")
    p.add_argument(
        "--model-store", type=Path, default=Path("model_store"), help="where the .mar goes (default: %(default)s)"
    )
    p.add_argument("--name", help="model name in URLs (default: the manifest's name)")
    add_model_options(p)
    p.add_argument(
        "--response-timeout",
        type=int,
        default=PackageOptions().response_timeout_s,
        help="seconds a batch may take before TorchServe restarts the worker (default: %(default)s)",
    )
    p.add_argument(
        "--version",
        default=PackageOptions().version,
        help="model version recorded in the archive (default: %(default)s)",
    )
    p.add_argument(
        "--image-seconds",
        type=float,
        help="per-call work budget: seconds one photo costs a worker on the serving machine (default: measured "
        "here at packaging; give it with --megapixel-seconds when the serving machine differs)",
    )
    p.add_argument(
        "--megapixel-seconds",
        type=float,
        help="per-call work budget: seconds one megapixel of an image file costs to decode (default: measured here)",
    )
    p.set_defaults(run=run_package)


def add_model_options(p) -> None:
    """What one served model does: its artifact, workers, dynamic batching, top-k and per-request bounds
    (a TorchServe archive's model-config.yaml, a Triton model's config.pbtxt)."""
    defaults = RepoOptions()
    p.add_argument(
        "--backend",
        choices=list(FORMATS),
        help="serve only this artifact (default: every artifact that passed parity; each worker picks the fastest "
        "for its device: CPU onnx-int8 > onnx > torchscript, CUDA trt > onnx > torchscript)",
    )
    p.add_argument("--allow-failed", action="store_true", help="with --backend: accept an artifact that FAILED parity")
    p.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="worker processes (Triton: instances) (default: %(default)s); each gets cores // workers threads",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="dynamic batching: most images per batch (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch-delay",
        type=int,
        default=defaults.max_batch_delay_ms,
        help="dynamic batching: ms to wait for a batch to fill (default: %(default)s)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=defaults.top_k,
        help="classes per answer, at most the number of classes (default: %(default)s)",
    )
    add_bound_options(p, defaults)


def add_bound_options(p, defaults: RepoOptions) -> None:
    """The per-request bounds, judged from the images' headers before any decode."""
    p.add_argument(
        "--max-pixels",
        type=int,
        default=defaults.max_pixels,
        help="refuse images with more pixels, read from the header before decoding "
        "(default: models.imageio.DEFAULT_MAX_PIXELS, 64 million; PNG, WebP, GIF and BMP stop at 16.7 million)",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=defaults.max_images,
        help="most images (multipart parts, v2 batch rows) in one request; more are refused (default: %(default)s)",
    )
    p.add_argument(
        "--max-request-pixels",
        type=int,
        default=defaults.max_request_pixels,
        help="most decoded pixels of one request's images together, read from their headers before decoding "
        "(a JPEG counts after its reduced-scale decode); more are refused (default: %(default)s)",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=defaults.max_request_bytes,
        help="Triton: most encoded image bytes in one request; more are refused before any decode "
        "(TorchServe: max_request_size in serve/config.properties) (default: %(default)s)",
    )


def model_options(args) -> RepoOptions:
    """The model options of the command line, checked."""
    for name, value in [
        ("--workers", args.workers),
        ("--batch-size", args.batch_size),
        ("--top-k", args.top_k),
        ("--response-timeout", getattr(args, "response_timeout", None)),
        ("--max-pixels", args.max_pixels),
        ("--max-images", args.max_images),
        ("--max-request-pixels", args.max_request_pixels),
        ("--max-request-bytes", args.max_request_bytes),
    ]:
        if value is not None and value < 1:
            raise PackageError(f"{name} must be at least 1, got {value}")
    if args.max_batch_delay < 0:
        raise PackageError(f"--max-batch-delay must be at least 0, got {args.max_batch_delay}")
    if args.allow_failed and args.backend is None:
        raise PackageError("--allow-failed needs --backend: name the failed artifact you mean to serve")
    defaults = RepoOptions()
    return RepoOptions(
        backend=args.backend,
        allow_failed=args.allow_failed,
        workers=args.workers,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay,
        response_timeout_s=getattr(args, "response_timeout", defaults.response_timeout_s),
        top_k=args.top_k,
        max_pixels=args.max_pixels,
        max_images=args.max_images,
        max_request_pixels=args.max_request_pixels,
        max_request_bytes=args.max_request_bytes,
        version=getattr(args, "version", defaults.version),
    )


def add_triton_repo(commands) -> None:
    p = commands.add_parser(
        "triton-repo",
        help="export directories -> a Triton model repository",
        description="Write a Triton model repository: per export, config.pbtxt (Python backend, dynamic batching, "
        "instances, our limits), model.py over our Classifier and the export's manifest and artifact(s), "
        "sha256-checked. Triton (serve start --server triton, NVIDIA's container with this project installed, "
        "KServe's Triton runtime) loads it as it is.",
    )
    add_exports(p, required=True)
    p.add_argument("--out", type=Path, required=True, help="the repository (replaced if this command wrote it)")
    add_model_options(p)
    p.set_defaults(run=run_triton_repo)


def add_exports(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--export-dir",
        dest="export_dirs",
        type=Path,
        action="append",
        required=required,
        default=[],
        help="an export directory (holds manifest.json); repeat for several models",
    )
    p.add_argument(
        "--name",
        dest="names",
        action="append",
        default=[],
        help="model name in URLs, one per --export-dir in order (default: the manifest's name)",
    )


def add_start(commands) -> None:
    settings = ServerSettings()
    p = commands.add_parser(
        "start",
        help="start TorchServe (or Triton: --server triton) and wait until the models answer",
        description="Start the server in the background, wait until every model is ready, and print how to call "
        "it. TorchServe serves the archives of --model-store; Triton (--server triton) serves --export-dir "
        "directly, or without it the same archives, through a model repository written into --run-dir.",
    )
    p.add_argument(
        "--server", choices=list(servers.SERVERS), default="torchserve", help="which server (default: %(default)s)"
    )
    p.add_argument(
        "--model-store", type=Path, default=settings.model_store, help="directory of .mar files (default: %(default)s)"
    )
    p.add_argument(
        "--models", nargs="+", default=[], metavar="NAME", help="models to load: <model-store>/NAME.mar (default: all)"
    )
    add_exports(p, required=False)
    p.add_argument(
        "--host",
        default=settings.host,
        help="inference API interface (default: %(default)s, this machine only; 0.0.0.0 for every interface, "
        "as in a container; TorchServe's management and metrics are always 127.0.0.1)",
    )
    p.add_argument("--port", type=int, help="HTTP inference API port (default: TorchServe 8080, Triton 8000)")
    p.add_argument("--management-port", type=int, default=settings.management_port, help="(default: %(default)s)")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (default: TorchServe 8082, Triton 8002)")
    p.add_argument(
        "--grpc-ports",
        type=int,
        nargs=2,
        default=[settings.grpc_inference_port, settings.grpc_management_port],
        metavar=("INFERENCE", "MANAGEMENT"),
        help="TorchServe's gRPC ports, on 127.0.0.1 (default: %(default)s)",
    )
    p.add_argument("--grpc-port", type=int, default=8001, help="Triton's gRPC port, on --host (default: %(default)s)")
    add_auth_options(p, settings)
    add_process_options(p, settings)
    add_model_options(
        p.add_argument_group(
            "--server triton --export-dir: each model's options (an archive of --model-store has its own; of "
            "these Triton takes only --max-request-bytes for it)"
        )
    )
    add_run_dir(p)
    p.set_defaults(run=run_start)


def add_process_options(p: argparse.ArgumentParser, settings: ServerSettings) -> None:
    p.add_argument(
        "--frontend-heap",
        default=settings.frontend_heap,
        help="the Java frontend's heap limit, a JVM -Xmx size; it buffers each request body and exits on "
        "OutOfMemoryError (default: %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=settings.startup_timeout_s,
        help="seconds to wait for the models (default: %(default)s)",
    )
    p.add_argument(
        "--foreground",
        action="store_true",
        help="stay in the foreground with the server's log on stdout until SIGTERM/Ctrl-C, then stop it "
        "(containers); exit 1 if the server dies by itself",
    )
    p.add_argument(
        "--in-cluster",
        action="store_true",
        help="Kubernetes replicas behind one Service (what `python -m serve manifests` runs): --foreground, "
        "token authorization off (TorchServe's keys are per process, so no key works across replicas) with "
        "--allow-no-auth-on-network, metrics on --host for Prometheus, management on 127.0.0.1. The "
        "generated NetworkPolicy admits only the ingress controller, which authenticates",
    )


def add_auth_options(p: argparse.ArgumentParser, settings: ServerSettings) -> None:
    p.add_argument(
        "--token-expiration-min",
        type=int,
        default=settings.token_expiration_min,
        help="TorchServe: lifetime of the inference and management keys (default: %(default)s); Triton's key "
        "lasts as long as the server",
    )
    p.add_argument(
        "--no-token-auth",
        dest="token_auth",
        action="store_false",
        help="turn token authorization off, so that a plain `curl -T cat.jpg localhost:8080/predictions/NAME` "
        "works. TorchServe 0.12 has one switch for both APIs: the management API then needs no key either (it "
        "stays on 127.0.0.1, and registering models stays disabled). For a trusted machine or network only: "
        "refused with a --host other than loopback unless --allow-no-auth-on-network is given too",
    )
    p.add_argument(
        "--allow-no-auth-on-network",
        action="store_true",
        help="accept --no-token-auth on a --host other machines can reach (a trusted network, or behind a "
        "proxy that authenticates)",
    )


def add_manifests(commands) -> None:
    defaults = ManifestOptions(model_store=Path("model_store"), models=[], image="", out=Path())
    p = commands.add_parser(
        "manifests",
        help="write a kustomize folder: N replicas of the serving image behind one Service",
        description="Write a kustomize folder (kubectl apply -k OUT): Deployment (in-cluster `serve start`, sized "
        "from each archive's workers x threads), Service, HorizontalPodAutoscaler, PodDisruptionBudget, "
        "NetworkPolicy and an Ingress with TLS and basic auth. Inside the pods TorchServe runs without keys; "
        "the NetworkPolicy admits only the ingress controller, and the Ingress authenticates.",
    )
    p.add_argument(
        "--model-store",
        type=Path,
        default=Path("model_store"),
        help="directory of the .mar files the image serves (default: %(default)s)",
    )
    p.add_argument("--models", nargs="+", required=True, metavar="NAME", help="models to serve: <model-store>/NAME.mar")
    p.add_argument(
        "--image",
        default=default_image(),
        help="the serving image, as the cluster pulls it: registry/name:tag (default: %(default)s, the tag "
        "`make image` builds; push it to a registry the cluster reaches and name that)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder to write (replaced if this command wrote it)")
    p.add_argument(
        "--replicas",
        type=int,
        default=defaults.replicas,
        help="replicas, and the autoscaler's minimum (default: %(default)s)",
    )
    p.add_argument("--max-replicas", type=int, help="the autoscaler's maximum (default: 3 x --replicas)")
    p.add_argument(
        "--threads-per-worker",
        type=int,
        default=defaults.threads_per_worker,
        help="CPU per worker for archives that do not pin the handler's threads (default: %(default)s)",
    )
    p.add_argument("--name", default=defaults.name, help="object names and labels (default: %(default)s)")
    p.add_argument("--host", default=defaults.host, help="the Ingress host name (default: %(default)s)")
    p.add_argument(
        "--ingress-namespace",
        default=defaults.ingress_namespace,
        help="the ingress controller's namespace, the only one admitted to inference (default: %(default)s)",
    )
    p.add_argument(
        "--monitoring-namespace",
        default=defaults.monitoring_namespace,
        help="Prometheus's namespace, the only one admitted to metrics (default: %(default)s)",
    )
    p.add_argument(
        "--store-claim",
        metavar="PVC",
        help="mount the .mar files from this PersistentVolumeClaim (read-only) instead of the image's",
    )
    add_kserve_options(p, defaults)
    p.set_defaults(run=run_manifests)


def add_kserve_options(p: argparse.ArgumentParser, defaults: ManifestOptions) -> None:
    p.add_argument(
        "--kserve",
        action="store_true",
        help="also write kserve/: the storage layout and InferenceServices (TorchServe runtime, and this "
        "image as a custom predictor)",
    )
    p.add_argument(
        "--server",
        choices=["torchserve", "triton"],
        default="torchserve",
        help="with --kserve, triton also writes our Triton ServingRuntime and a protocol-v2 InferenceService "
        "per model, whose storageUri is its export directory (kserve/storage/exports/NAME) (default: %(default)s)",
    )
    p.add_argument(
        "--storage-uri",
        default=defaults.storage_uri,
        help="with --kserve: where kserve/storage/ is uploaded (default: %(default)s)",
    )
    p.add_argument(
        "--frontend-heap",
        default=defaults.frontend_heap,
        help="serve start --frontend-heap in the pods; their memory is this heap, the JVM's non-heap allowance "
        "and every worker's (default: %(default)s)",
    )


def add_stop(commands) -> None:
    p = commands.add_parser("stop", help="stop the server started from --run-dir (TorchServe or Triton)")
    add_run_dir(p)
    p.set_defaults(run=run_stop)


def add_status(commands) -> None:
    p = commands.add_parser(
        "status",
        help="is it running, which models, how many ready workers (exit 3: not running, 4: died, 1: a model "
        "has workers not ready)",
    )
    add_run_dir(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(run=run_status)


def add_token(commands) -> None:
    p = commands.add_parser(
        "token",
        help='print a valid key (renewed when expired): -H "Authorization: Bearer $(python -m serve token)"',
    )
    add_run_dir(p)
    p.add_argument(
        "--kind",
        choices=["inference", "management", "API"],
        default="inference",
        help="TorchServe's key kinds; Triton has one key for all (default: %(default)s)",
    )
    p.set_defaults(run=run_token)


def add_run_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run-dir",
        type=Path,
        default=ServerSettings().run_dir,
        help="the server's config, keys, logs and state (default: %(default)s)",
    )


def run_package(args) -> int:
    options = dataclasses.replace(model_options(args), cost=given_cost(args.image_seconds, args.megapixel_seconds))
    path = package(args.export_dir, args.model_store, name=args.name, options=options)
    print(f"wrote {path}")
    print(f"serve it: python -m serve start --model-store {args.model_store} --models {path.stem}")
    return 0


def given_cost(image_s: float | None, megapixel_s: float | None) -> ImageCost | None:
    if image_s is None and megapixel_s is None:
        return None
    try:
        return ImageCost.from_dict({"image_s": image_s, "megapixel_s": megapixel_s})
    except (TypeError, ValueError):
        raise PackageError(
            "--image-seconds and --megapixel-seconds go together: give both (> 0 and >= 0), or neither to measure"
        ) from None


def run_triton_repo(args) -> int:
    names = write_repository(args.export_dirs, args.out, args.names, model_options(args))
    print(f"wrote {args.out}: {', '.join(names)}")
    print(f"serve it: tritonserver --model-repository {args.out.resolve()} (with this project installed)")
    return 0


def run_start(args) -> int:
    if args.in_cluster:
        args.token_auth, args.allow_no_auth_on_network, args.foreground = False, True, True
    running = servers.running(args.run_dir)
    if running is not None:
        raise ServerError(
            f"{running} is already running from {args.run_dir}; stop it with python -m serve stop --run-dir {args.run_dir}"
        )
    server = servers.SERVERS[args.server]
    info = server.start(server.settings_from(args, model_options(args)))
    for line in server.describe(info, args):
        print(line)
    if args.foreground:
        print("running in the foreground: SIGTERM or Ctrl-C stops it", flush=True)
        exit_code = run_in_foreground(info, server.is_running, server.stop, server.drain_s)
        if exit_code:
            print(f"error: {server.died.format(pid=info.pid, run_dir=info.run_dir)}", file=sys.stderr)
        return exit_code
    print(f"stop it:      python -m serve stop --run-dir {args.run_dir}")
    return 0


def run_manifests(args) -> int:
    options = ManifestOptions(
        model_store=args.model_store,
        models=args.models,
        image=args.image,
        out=args.out,
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        threads_per_worker=args.threads_per_worker,
        name=args.name,
        host=args.host,
        ingress_namespace=args.ingress_namespace,
        monitoring_namespace=args.monitoring_namespace,
        store_claim=args.store_claim,
        kserve=args.kserve,
        storage_uri=args.storage_uri,
        frontend_heap=args.frontend_heap,
        server=args.server,
    )
    files = generate(options)
    print(
        f"wrote {len(files)} files to {args.out}: "
        + ", ".join(str(f.relative_to(args.out)) for f in files if f.parent.name != "model-store")
    )
    print(
        f"apply: kubectl apply -k {args.out}   (create the {options.auth_secret} and {options.tls_secret} "
        "secrets first; README, 'Running on Kubernetes')"
    )
    return 0


def run_stop(args) -> int:
    server = servers.recorded(args.run_dir)
    if server is not None and server.stop(args.run_dir):
        print(f"{server.title} from {args.run_dir} stopped")
    else:
        print(f"no TorchServe running from {args.run_dir} (nor Triton)")
    return 0


def run_status(args) -> int:
    server = servers.recorded(args.run_dir)
    report = server.status(args.run_dir) if server is not None else None
    if report is None:
        print(json.dumps(None) if args.json else f"no TorchServe running from {args.run_dir} (nor Triton)")
        return NOT_RUNNING
    if args.json:
        print(json.dumps(report, indent=2))
    if report["state"] == "died":
        if not args.json:
            print_died(server.title, report, args.run_dir)
        return DIED
    if not args.json:
        print(
            f"{server.title} running (pid {report['pid']}): inference {report['inference']}, "
            + ", ".join(f"{key} {report[key]}" for key in ("management", "grpc", "metrics") if key in report)
        )
        for name, model in report["models"].items():
            print(f"  {name}: {model.get('error') or describe_workers(model, args.run_dir)}")
    healthy = all(m.get("workers") and m["ready"] == m["workers"] for m in report["models"].values())
    return 0 if healthy else 1


def print_died(title: str, report: dict, run_dir: Path) -> None:
    leftovers = report["leftover_workers"]
    print(
        f"{title} from {run_dir} DIED: its server process (pid {report['pid']}) is gone, but it was never "
        "stopped (killed, or exited on OutOfMemoryError; see --frontend-heap)"
        + (f"; {len(leftovers)} worker process(es) left behind: {leftovers}" if leftovers else "")
    )
    print(f"end of its logs:\n{report['log_tail']}")
    print(f"clean up with python -m serve stop --run-dir {run_dir}, then start it again")


def describe_workers(model: dict, run_dir: Path) -> str:
    """ "2/2 workers ready (pids [...])", plus what the others are doing: restarting after their process died,
    or starting."""
    text = f"{model['ready']}/{model['workers']} workers ready (pids {model['pids']})"
    if model.get("restarting"):
        text += (
            f"; RESTARTING: worker pid(s) {model['restarting']} died (killed or crashed) and TorchServe is "
            f"starting replacements; why it died is in {Path(run_dir) / 'logs' / 'model_log.log'}"
        )
    if model.get("starting"):
        text += f"; {model['starting']} starting (loading the model)"
    return text


def run_token(args) -> int:
    server = servers.recorded(args.run_dir)
    info = server.read_state(args.run_dir.resolve()) if server is not None else None
    if info is None:
        raise ServerError(f"no server running from {args.run_dir}; start one with python -m serve start")
    print(info.key(args.kind))
    return 0

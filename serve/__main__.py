"""`python -m serve {package,start,stop,status,token,manifests}`: model archives, the TorchServe process
and its Kubernetes manifests.

Exit codes: 0 success; 1 a clear error (message on stderr); for `status`, 3 when no server is running,
4 when the server started from the run directory died (its frontend killed, or out of memory) without
`stop`, and 1 when it runs but a model has no ready worker.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from export.manifest import FORMATS

from .kubernetes import ManifestError, ManifestOptions, default_image, generate
from .package import PackageError, PackageOptions, package
from .server import ServerError, ServerSettings, read_state, run_in_foreground, start, status, stop

NOT_RUNNING = 3
DIED = 4


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (PackageError, ServerError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve",
        description="Package exports as TorchServe model archives; start, stop and inspect TorchServe.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = PackageOptions()

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
    p.add_argument(
        "--backend",
        choices=list(FORMATS),
        help="package only this artifact and always serve it (default: every artifact that passed parity; each "
        "worker picks the fastest for its device: CPU onnx-int8 > onnx > torchscript, CUDA trt > onnx > torchscript)",
    )
    p.add_argument("--allow-failed", action="store_true", help="with --backend: accept an artifact that FAILED parity")
    p.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="worker processes (default: %(default)s); each gets cores // workers threads",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="dynamic batching: most requests per batch (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch-delay",
        type=int,
        default=defaults.max_batch_delay_ms,
        help="dynamic batching: ms to wait for a batch to fill (default: %(default)s)",
    )
    p.add_argument(
        "--response-timeout",
        type=int,
        default=defaults.response_timeout_s,
        help="seconds a batch may take before TorchServe restarts the worker (default: %(default)s)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=defaults.top_k,
        help="classes per answer, at most the number of classes (default: %(default)s)",
    )
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
        help="most images (multipart parts) in one request; more get HTTP 413 (default: %(default)s)",
    )
    p.add_argument(
        "--max-request-pixels",
        type=int,
        default=defaults.max_request_pixels,
        help="most decoded pixels of one request's images together, read from their headers before decoding "
        "(a JPEG counts after its reduced-scale decode); more get HTTP 413 (default: %(default)s)",
    )
    p.add_argument(
        "--version", default=defaults.version, help="model version recorded in the archive (default: %(default)s)"
    )
    p.set_defaults(run=run_package)

    settings = ServerSettings()
    p = commands.add_parser(
        "start",
        help="start TorchServe and wait until the models answer",
        description="Start TorchServe in the background with serve/config.properties, wait until every model "
        "answers a real prediction, and print how to call it.",
    )
    p.add_argument(
        "--model-store", type=Path, default=settings.model_store, help="directory of .mar files (default: %(default)s)"
    )
    p.add_argument(
        "--models", nargs="+", default=[], metavar="NAME", help="models to load: <model-store>/NAME.mar (default: all)"
    )
    p.add_argument(
        "--host",
        default=settings.host,
        help="inference API interface (default: %(default)s, this machine only; 0.0.0.0 for every interface, "
        "as in a container; management and metrics are always 127.0.0.1)",
    )
    p.add_argument("--port", type=int, default=settings.port, help="inference API port (default: %(default)s)")
    p.add_argument("--management-port", type=int, default=settings.management_port, help="(default: %(default)s)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=settings.metrics_port,
        help="Prometheus /metrics port (default: %(default)s)",
    )
    p.add_argument(
        "--grpc-ports",
        type=int,
        nargs=2,
        default=[settings.grpc_inference_port, settings.grpc_management_port],
        metavar=("INFERENCE", "MANAGEMENT"),
        help="TorchServe's gRPC ports, on 127.0.0.1 (default: %(default)s)",
    )
    p.add_argument(
        "--token-expiration-min",
        type=int,
        default=settings.token_expiration_min,
        help="lifetime of the inference and management keys (default: %(default)s)",
    )
    p.add_argument(
        "--no-token-auth",
        dest="token_auth",
        action="store_false",
        help="turn TorchServe's token authorization off, so that a plain `curl -T cat.jpg "
        "localhost:8080/predictions/NAME` works. TorchServe 0.12 has one switch for both APIs: the management "
        "API then needs no key either (it stays on 127.0.0.1, and registering models stays disabled). "
        "For a trusted machine or network only: refused with a --host other than loopback unless "
        "--allow-no-auth-on-network is given too",
    )
    p.add_argument(
        "--allow-no-auth-on-network",
        action="store_true",
        help="accept --no-token-auth on a --host other machines can reach (a trusted network, or behind a "
        "proxy that authenticates)",
    )
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
        help="stay in the foreground with TorchServe's log on stdout until SIGTERM/Ctrl-C, then stop it "
        "(containers); exit 1 if TorchServe dies by itself",
    )
    p.add_argument(
        "--in-cluster",
        action="store_true",
        help="Kubernetes replicas behind one Service (what `python -m serve manifests` runs): --foreground, "
        "token authorization off (TorchServe's keys are per process, so no key works across replicas) with "
        "--allow-no-auth-on-network, metrics on --host for Prometheus, management on 127.0.0.1. The "
        "generated NetworkPolicy admits only the ingress controller, which authenticates",
    )
    add_run_dir(p)
    p.set_defaults(run=run_start)

    manifest_defaults = ManifestOptions(model_store=Path("model_store"), models=[], image="", out=Path())
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
        default=manifest_defaults.replicas,
        help="replicas, and the autoscaler's minimum (default: %(default)s)",
    )
    p.add_argument("--max-replicas", type=int, help="the autoscaler's maximum (default: 3 x --replicas)")
    p.add_argument(
        "--threads-per-worker",
        type=int,
        default=manifest_defaults.threads_per_worker,
        help="CPU per worker for archives that do not pin the handler's threads (default: %(default)s)",
    )
    p.add_argument("--name", default=manifest_defaults.name, help="object names and labels (default: %(default)s)")
    p.add_argument("--host", default=manifest_defaults.host, help="the Ingress host name (default: %(default)s)")
    p.add_argument(
        "--ingress-namespace",
        default=manifest_defaults.ingress_namespace,
        help="the ingress controller's namespace, the only one admitted to inference (default: %(default)s)",
    )
    p.add_argument(
        "--monitoring-namespace",
        default=manifest_defaults.monitoring_namespace,
        help="Prometheus's namespace, the only one admitted to metrics (default: %(default)s)",
    )
    p.add_argument(
        "--store-claim",
        metavar="PVC",
        help="mount the .mar files from this PersistentVolumeClaim (read-only) instead of the image's",
    )
    p.add_argument(
        "--kserve",
        action="store_true",
        help="also write kserve/: the storage layout and InferenceServices (TorchServe runtime, and this "
        "image as a custom predictor)",
    )
    p.add_argument(
        "--storage-uri",
        default=manifest_defaults.storage_uri,
        help="with --kserve: where kserve/storage/ is uploaded (default: %(default)s)",
    )
    p.add_argument(
        "--frontend-heap",
        default=manifest_defaults.frontend_heap,
        help="serve start --frontend-heap in the pods; their memory is this heap, the JVM's non-heap allowance "
        "and every worker's (default: %(default)s)",
    )
    p.set_defaults(run=run_manifests)

    p = commands.add_parser("stop", help="stop the server started from --run-dir")
    add_run_dir(p)
    p.set_defaults(run=run_stop)

    p = commands.add_parser(
        "status",
        help="is it running, which models, how many ready workers (exit 3: not running, 4: died, 1: a model "
        "has workers not ready)",
    )
    add_run_dir(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(run=run_status)

    p = commands.add_parser(
        "token",
        help='print a valid key (renewed when expired): -H "Authorization: Bearer $(python -m serve token)"',
    )
    add_run_dir(p)
    p.add_argument(
        "--kind", choices=["inference", "management", "API"], default="inference", help="(default: %(default)s)"
    )
    p.set_defaults(run=run_token)
    return parser


def add_run_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run-dir",
        type=Path,
        default=ServerSettings().run_dir,
        help="the server's config, keys, logs and state (default: %(default)s)",
    )


def run_package(args) -> int:
    options = PackageOptions(
        backend=args.backend,
        allow_failed=args.allow_failed,
        workers=args.workers,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay,
        response_timeout_s=args.response_timeout,
        top_k=args.top_k,
        max_pixels=args.max_pixels,
        max_images=args.max_images,
        max_request_pixels=args.max_request_pixels,
        version=args.version,
    )
    for name, value in [
        ("--workers", args.workers),
        ("--batch-size", args.batch_size),
        ("--top-k", args.top_k),
        ("--response-timeout", args.response_timeout),
        ("--max-pixels", args.max_pixels),
        ("--max-images", args.max_images),
        ("--max-request-pixels", args.max_request_pixels),
    ]:
        if value is not None and value < 1:
            raise PackageError(f"{name} must be at least 1, got {value}")
    if args.allow_failed and args.backend is None:
        raise PackageError("--allow-failed needs --backend: name the failed artifact you mean to serve")
    path = package(args.export_dir, args.model_store, name=args.name, options=options)
    print(f"wrote {path}")
    print(f"serve it: python -m serve start --model-store {args.model_store} --models {path.stem}")
    return 0


def run_start(args) -> int:
    if args.in_cluster:
        args.token_auth, args.allow_no_auth_on_network, args.foreground = False, True, True
    settings = ServerSettings(
        model_store=args.model_store,
        models=args.models,
        run_dir=args.run_dir,
        host=args.host,
        port=args.port,
        management_port=args.management_port,
        metrics_port=args.metrics_port,
        grpc_inference_port=args.grpc_ports[0],
        grpc_management_port=args.grpc_ports[1],
        token_auth=args.token_auth,
        token_expiration_min=args.token_expiration_min,
        startup_timeout_s=args.timeout,
        log_to_console=args.foreground,
        allow_no_auth_on_network=args.allow_no_auth_on_network,
        frontend_heap=args.frontend_heap,
        metrics_host=args.host if args.in_cluster else "127.0.0.1",
    )
    info = start(settings)
    auth = "token required" if info.token_auth else "NO token authorization"
    print(f"TorchServe is running (pid {info.pid}), serving {', '.join(info.models)}")
    print(f"  inference   http://{info.host}:{info.port}  ({auth})")
    print(f"  management  {info.management_url}  ({auth})")
    print(f"  metrics     {info.metrics_url}  (Prometheus)")
    if info.token_auth:
        print(f"  keys        {info.key_file}  (inference/management keys last {args.token_expiration_min} min;")
        print("              python -m serve token [--kind management] prints a valid one, renewing it when expired)")
    print(f"  logs        {Path(info.run_dir) / 'logs'}")
    print("try it:")
    url = f"http://localhost:{info.port}/predictions/{info.models[0]}"
    if info.token_auth:
        print(f'  curl -H "Authorization: Bearer $(python -m serve token --run-dir {args.run_dir})" -T cat.jpg {url}')
    else:
        print(f"  curl -T cat.jpg {url}")
    if args.foreground:
        print("running in the foreground: SIGTERM or Ctrl-C stops it", flush=True)
        exit_code = run_in_foreground(info)
        if exit_code:
            print(
                f"error: TorchServe's frontend (pid {info.pid}) exited by itself (killed, or out of memory: see "
                f"--frontend-heap); logs in {Path(info.run_dir) / 'logs'}",
                file=sys.stderr,
            )
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
    if stop(args.run_dir):
        print(f"TorchServe from {args.run_dir} stopped")
    else:
        print(f"no TorchServe running from {args.run_dir}")
    return 0


def run_status(args) -> int:
    report = status(args.run_dir)
    if report is None:
        print(json.dumps(None) if args.json else f"no TorchServe running from {args.run_dir}")
        return NOT_RUNNING
    if report["state"] == "died":
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            leftovers = report["leftover_workers"]
            print(
                f"TorchServe from {args.run_dir} DIED: its frontend (pid {report['pid']}) is gone, but it was never "
                "stopped (killed, or exited on OutOfMemoryError; see --frontend-heap)"
                + (f"; {len(leftovers)} worker process(es) left behind: {leftovers}" if leftovers else "")
            )
            print(f"end of its logs:\n{report['log_tail']}")
            print(f"clean up with python -m serve stop --run-dir {args.run_dir}, then start it again")
        return DIED
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"TorchServe running (pid {report['pid']}): inference {report['inference']}, "
            f"management {report['management']}, metrics {report['metrics']}"
        )
        for name, model in report["models"].items():
            print(f"  {name}: {model.get('error') or describe_workers(model, args.run_dir)}")
    healthy = all(m.get("workers") and m["ready"] == m["workers"] for m in report["models"].values())
    return 0 if healthy else 1


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
    info = read_state(args.run_dir.resolve())
    if info is None:
        raise ServerError(f"no TorchServe running from {args.run_dir}; start one with python -m serve start")
    print(info.key(args.kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The two servers `python -m serve start/stop/status/token` run, one record each: how to start one from the
command line, describe it, stop it and inspect it. A run directory's `server.json` says which one it holds
(`"server": "triton"`; TorchServe's predates the key)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import server as torchserve
from . import triton_server as triton


@dataclass(frozen=True)
class Server:
    title: str
    protocol: str  # what its inference API speaks: client --protocol (client/v2.py's PROTOCOLS)
    settings_from: Callable  # (command-line args, model options) -> its settings
    start: Callable
    describe: Callable  # (info, args) -> lines telling how to call it
    is_running: Callable[[int], bool]
    read_state: Callable
    stop: Callable[[Path], bool]
    status: Callable[[Path], dict | None]
    died: str  # what exited when the server exits by itself, and where its log is ({pid}, {run_dir})
    drain_s: float  # on SIGTERM in the foreground, how long accepted requests get before `stop` (serve.server.drain)


def torchserve_settings(args, options) -> torchserve.ServerSettings:
    """TorchServe serves the archives of --model-store; the model options live in each archive."""
    defaults = torchserve.ServerSettings()
    return torchserve.ServerSettings(
        model_store=args.model_store,
        models=args.models,
        run_dir=args.run_dir,
        host=args.host,
        port=args.port or defaults.port,
        management_port=args.management_port,
        metrics_port=args.metrics_port or defaults.metrics_port,
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


def describe_torchserve(info: torchserve.ServerInfo, args) -> list[str]:
    auth = "token required" if info.token_auth else "NO token authorization"
    lines = [
        f"TorchServe is running (pid {info.pid}), serving {', '.join(info.models)}",
        f"  inference   http://{info.host}:{info.port}  ({auth})",
        f"  management  {info.management_url}  ({auth})",
        f"  metrics     {info.metrics_url}  (Prometheus)",
    ]
    if info.token_auth:
        lines += [
            f"  keys        {info.key_file}  (inference/management keys last {args.token_expiration_min} min;",
            "              python -m serve token [--kind management] prints a valid one, renewing it when expired)",
        ]
    lines += [f"  logs        {Path(info.run_dir) / 'logs'}", "try it:"]
    url = f"http://localhost:{info.port}/predictions/{info.models[0]}"
    key = f'-H "Authorization: Bearer $(python -m serve token --run-dir {args.run_dir})" ' if info.token_auth else ""
    return [*lines, f"  curl {key}-T cat.jpg {url}"]


def triton_settings(args, options) -> triton.TritonSettings:
    """Triton serves the export directories with the model options of the command line, or without
    --export-dir the archives of --model-store with each archive's own, as TorchServe does."""
    if args.names and not args.export_dirs:
        raise torchserve.ServerError(
            "--name goes with --export-dir: a model store's models are named by their archives"
        )
    defaults = triton.TritonSettings()
    return triton.TritonSettings(
        export_dirs=args.export_dirs,
        names=args.names,
        repo=options,
        model_store=None if args.export_dirs else args.model_store,
        models=args.models,
        run_dir=args.run_dir,
        host=args.host,
        port=args.port or defaults.port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port or defaults.metrics_port,
        metrics_host=args.host if args.in_cluster else "127.0.0.1",
        token_auth=args.token_auth,
        allow_no_auth_on_network=args.allow_no_auth_on_network,
        startup_timeout_s=args.timeout,
        log_to_console=args.foreground,
    )


def describe_triton(info: triton.TritonInfo, args) -> list[str]:
    auth = "token required" if info.token_auth else "NO token authorization"
    key = f'-H "Authorization: Bearer $(python -m serve token --run-dir {args.run_dir})" ' if info.token_auth else ""
    return [
        f"Triton is running (pid {info.pid}), serving {', '.join(info.models)}",
        f"  HTTP (v2)   http://{info.host}:{info.port}  ({auth})",
        f"  gRPC (v2)   {info.host}:{info.grpc_port}  ({auth}: metadata {triton.GRPC_KEY_HEADER})",
        f"  metrics     {info.metrics_url}  (Prometheus)",
        f"  logs        {Path(info.run_dir) / triton.LOG_FILE}",
        "try it:",
        f"  python -m client --url http://localhost:{info.port} --protocol v2 --model {info.models[0]} cat.jpg",
        f"  (curl: {key}--data-binary ... http://localhost:{info.port}/v2/models/{info.models[0]}/infer, see docs/triton.md)",
    ]


SERVERS = {
    "torchserve": Server(
        "TorchServe",
        "torchserve",
        torchserve_settings,
        torchserve.start,
        describe_torchserve,
        torchserve.is_torchserve,
        torchserve.read_state,
        torchserve.stop,
        torchserve.status,
        "TorchServe's frontend (pid {pid}) exited by itself (killed, or out of memory: see --frontend-heap); "
        "logs in {run_dir}/logs",
        torchserve.DRAIN_S,
    ),
    "triton": Server(
        "Triton",
        "v2",
        triton_settings,
        triton.start,
        describe_triton,
        triton.is_triton,
        triton.read_state,
        triton.stop,
        triton.status,
        f"Triton (pid {{pid}}) exited by itself (killed, or out of memory); its log is {{run_dir}}/{triton.LOG_FILE}",
        0.0,  # Triton waits for its requests in flight itself (triton_server.EXIT_TIMEOUT_S)
    ),
}


def recorded(run_dir: Path) -> Server | None:
    """The server whose state `run_dir` holds (running or not), or None."""
    try:
        state = json.loads((Path(run_dir) / torchserve.STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    kind = state.get("server", "torchserve") if isinstance(state, dict) else None
    return SERVERS.get(kind)


def running(run_dir: Path) -> str | None:
    """ "TorchServe (pid P, port N)" or "Triton (...)" for a server running from `run_dir`, or None."""
    server = recorded(run_dir)
    info = server.read_state(Path(run_dir).resolve()) if server is not None else None
    return f"{server.title} (pid {info.pid}, port {info.port})" if info is not None else None

"""Start, stop and inspect a Triton server (`serve start --server triton`) over export directories, or over
the archives of a TorchServe model store (serve/store_models.py).

Like TorchServe's (serve/server.py), everything one server writes lives in its run directory: the model
repository it serves (`repository/`, serve/triton_repo.py), the backend folder and the stub's Python
environment (serve/triton_install.py), the key (`triton_key`, mode 0600), its log (`triton.out`) and the
same `server.json` state file, marked `"server": "triton"`, that `serve stop/status/token` read.

Safe defaults as with TorchServe: every port on 127.0.0.1 unless asked; with token authorization (the
default) every API but health needs `Authorization: Bearer KEY` (Triton's --http-restricted-api; over
gRPC the metadata `triton-grpc-protocol-authorization: Bearer KEY`, --grpc-restricted-protocol); no model
can be loaded or unloaded through the API (model control mode "none"). Triton takes the key on its
command line, so other users of this machine can read it from the process list: the loopback default
admits only this machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import requests

from fsutil.atomic import atomic_write_text

from .server import STATE_FILE, ServerError, check_exposure, check_free, rotate_if_large, running_command_line
from .triton_install import TritonMissing, find_triton

if TYPE_CHECKING:
    from .triton_repo import RepoOptions

SERVER_NAME = "triton"
KEY_FILE = "triton_key"
LOG_FILE = "triton.out"
RESTRICTED = "metadata,inference,shared-memory,model-config,model-repository,statistics,trace,logging"
GRPC_KEY_HEADER = "triton-grpc-protocol-authorization"  # Triton prefixes the restricted key over gRPC
# On SIGTERM Triton answers the requests in flight and waits for clients to hang up, at most this long (an
# idle keep-alive client uses it all), then exits: within `docker stop`'s 10 s with its stubs' teardown.
EXIT_TIMEOUT_S = 5
# Triton exits when a model fails to load at start, and its Python backend stub has been seen to crash
# now and then while loading (a segfault in libc, in the kernel log, with nothing in Triton's): a start
# that ends before its models are ready is tried once more, saying so with the exit status.
START_ATTEMPTS = 2
SHM_ROOT = Path("/dev/shm")
SHM_PREFIX = re.compile(r"resnet-deploy-[0-9a-f]{12}-")  # the Python backend's regions: "<prefix><uuid>"


def default_options() -> RepoOptions:
    from .triton_repo import RepoOptions  # imports torch: see write_models

    return RepoOptions()


@dataclass
class TritonSettings:
    export_dirs: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # model names, in the order of export_dirs; default: manifests'
    # With a model store, only its max_request_bytes counts (the rest is each archive's).
    repo: RepoOptions = field(default_factory=default_options)
    model_store: Path | None = None  # without export_dirs: serve these archives (models; default all)
    models: list[str] = field(default_factory=list)
    run_dir: Path = Path(".serve")
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    metrics_host: str = "127.0.0.1"
    token_auth: bool = True
    allow_no_auth_on_network: bool = False
    startup_timeout_s: float = 180.0
    log_to_console: bool = False
    triton_home: Path | None = None  # default: serve.triton_install.default_home()


@dataclass
class TritonInfo:
    pid: int
    run_dir: str
    models: list[str]
    host: str
    port: int
    grpc_port: int
    metrics_port: int
    shm_prefix: str
    token_auth: bool = True
    server: str = SERVER_NAME

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def key_file(self) -> Path:
        return Path(self.run_dir) / KEY_FILE

    def key(self, kind: str = "inference") -> str:
        """The key; Triton has one for every restricted API, so `kind` (as for TorchServe) changes nothing."""
        if not self.token_auth:
            raise ServerError(f"the server in {self.run_dir} runs without token authorization: no key is needed")
        try:
            return self.key_file.read_text().strip()
        except OSError as e:
            raise ServerError(f"{self.key_file}: cannot read the key ({e.strerror}); is the server running?") from None

    def headers(self, kind: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key(kind)}"} if self.token_auth else {}


def recorded_state(run_dir: Path) -> TritonInfo | None:
    """The Triton `start` recorded in `run_dir` (alive or not); None without a record, or with one whose
    shared-memory prefix is not one we make (stop deletes /dev/shm/<prefix>*)."""
    try:
        state = json.loads((Path(run_dir) / STATE_FILE).read_text())
        info = TritonInfo(**state) if state.get("server") == SERVER_NAME else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return info if info is not None and SHM_PREFIX.fullmatch(str(info.shm_prefix)) else None


def is_triton(pid: int) -> bool:
    command = running_command_line(pid)
    return bool(command) and command[0].endswith("tritonserver")


def read_state(run_dir: Path) -> TritonInfo | None:
    """The Triton recorded in `run_dir` while its process runs, else None."""
    info = recorded_state(Path(run_dir).resolve())
    return info if info is not None and is_triton(info.pid) else None


def command(settings: TritonSettings, install, repository: Path, backends: Path, prefix: str, key: str) -> list[str]:
    args = [
        str(install.binary),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        f"--http-address={settings.host}",
        f"--http-port={settings.port}",
        f"--grpc-address={settings.host}",
        f"--grpc-port={settings.grpc_port}",
        f"--metrics-address={settings.metrics_host}",
        f"--metrics-port={settings.metrics_port}",
        "--allow-gpu-metrics=false",
        f"--backend-config=python,shm-region-prefix-name={prefix}",
    ]
    if settings.token_auth:
        args += [
            f"--http-restricted-api={RESTRICTED}:Authorization=Bearer {key}",
            f"--grpc-restricted-protocol={RESTRICTED}:authorization=Bearer {key}",
        ]
    return args


def start(settings: TritonSettings, log=print) -> TritonInfo:
    """Write the repository into the run directory, start Triton on it, and return once every model is ready."""
    run_dir = settings.run_dir.resolve()
    running = read_state(run_dir)
    if running is not None:
        raise ServerError(
            f"Triton is already running from {run_dir} (pid {running.pid}, port {running.port}); "
            f"stop it with python -m serve stop --run-dir {settings.run_dir}"
        )
    check_exposure(settings)
    try:
        install = find_triton(settings.triton_home)
    except TritonMissing as e:
        raise ServerError(str(e)) from None
    check_free(
        [
            ("HTTP inference", settings.host, settings.port),
            ("gRPC inference", settings.host, settings.grpc_port),
            ("metrics", settings.metrics_host, settings.metrics_port),
        ]
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    models = write_models(settings, run_dir, log)
    backends = install.backend_directory(run_dir / "backends")
    python_env = install.stub_environment(run_dir / "python-env")
    attempts = 1
    while True:
        process, info = launch(settings, install, run_dir, models, backends, python_env)
        try:
            wait_until_ready(info, settings.startup_timeout_s, log, process)
            return info
        except TritonExited as e:
            stop(run_dir)
            if attempts == START_ATTEMPTS:
                raise
            attempts += 1
            log(f"{e}\nstarting Triton once more")
        except BaseException:
            stop(run_dir)
            raise


def launch(
    settings: TritonSettings, install, run_dir: Path, models: list[str], backends: Path, python_env: Path
) -> tuple[subprocess.Popen, TritonInfo]:
    """The server process on the written repository, with a new key and shared-memory prefix, recorded."""
    key, prefix = secrets.token_urlsafe(32), f"resnet-deploy-{secrets.token_hex(6)}-"
    write_key(run_dir / KEY_FILE, key)
    rotate_if_large(run_dir / LOG_FILE)
    with open(run_dir / LOG_FILE, "ab") as out:
        process = subprocess.Popen(
            command(settings, install, run_dir / "repository", backends, prefix, key),
            cwd=run_dir,
            env=install.environment(python_env),
            stdout=None if settings.log_to_console else out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # it outlives this command and ignores the terminal's Ctrl-C
        )
    info = TritonInfo(
        pid=process.pid,
        run_dir=str(run_dir),
        models=models,
        host=settings.host,
        port=settings.port,
        grpc_port=settings.grpc_port,
        metrics_port=settings.metrics_port,
        shm_prefix=prefix,
        token_auth=settings.token_auth,
    )
    atomic_write_text(run_dir / STATE_FILE, json.dumps(asdict(info), indent=2))
    return process, info


def write_models(settings: TritonSettings, run_dir: Path, log=print) -> list[str]:
    """The repository `run_dir/repository`, from the export directories or else the model store's archives."""
    # Imported here: they import torch (export.manifest's registry), which stop, status, token and the
    # image's health check (serve.probe) do without.
    from .store_models import unpack_store
    from .triton_repo import write_repository

    repository = run_dir / "repository"
    if settings.export_dirs:
        return write_repository(settings.export_dirs, repository, settings.names, settings.repo, log)
    with tempfile.TemporaryDirectory(prefix=".store.", suffix=".tmp", dir=run_dir) as unpacked:
        stored = unpack_store(settings.model_store, settings.models, Path(unpacked), settings.repo)
        exports, names, options = [m.export_dir for m in stored], [m.name for m in stored], [m.options for m in stored]
        return write_repository(exports, repository, names, options, log)


def write_key(path: Path, key: str) -> None:
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as f:
        f.write(key + "\n")


class TritonExited(ServerError):
    """The server process ended before its models were ready."""


def exit_status(process: subprocess.Popen | None) -> str:
    if process is None or process.returncode is None:
        return ""
    code = process.returncode
    return f" (killed by signal {-code})" if code < 0 else f" (exit code {code})"


def model_ready(info: TritonInfo, name: str) -> bool:
    try:
        return requests.get(f"{info.inference_url}/v2/models/{name}/ready", timeout=10).status_code == 200
    except requests.RequestException:
        return False


def wait_until_ready(info: TritonInfo, timeout_s: float, log=print, process: subprocess.Popen | None = None) -> None:
    """Until every model is ready; `TritonExited` (with its exit status when `process` is the server's
    Popen) if the server ends first, ServerError at the timeout."""
    deadline = time.monotonic() + timeout_s
    pending = list(info.models)
    while pending:
        # Our own child's exit status when we have it (and the exit code to report)
        if process.poll() is not None if process is not None else not is_triton(info.pid):
            raise TritonExited(f"Triton exited while starting{exit_status(process)}:\n{log_tail(Path(info.run_dir))}")
        if time.monotonic() > deadline:
            raise ServerError(f"models {pending} not ready after {timeout_s:.0f} s:\n{log_tail(Path(info.run_dir))}")
        if model_ready(info, pending[0]):
            log(f"model {pending[0]} is loaded and ready")
            pending.pop(0)
        else:
            time.sleep(0.5)


def stub_processes(prefix: str) -> list[psutil.Process]:
    """The backend stubs of one server (their command line names its shared-memory prefix), even orphaned."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if len(cmdline) > 2 and cmdline[0].endswith("triton_python_backend_stub") and cmdline[2].startswith(prefix):
            found.append(process)
    return found


def stop(run_dir: Path, timeout_s: float = 30.0) -> bool:
    """Stop the Triton recorded in `run_dir`, its stubs (also those a dead server left behind) and their
    shared-memory regions; False when none was running."""
    run_dir = Path(run_dir).resolve()
    info = recorded_state(run_dir)
    if info is None:
        return False
    stopped = is_triton(info.pid)
    server = [psutil.Process(info.pid)] if stopped else []
    if stopped:
        server[0].send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(server, timeout=timeout_s)
        for process in alive:
            process.kill()
    stubs = stub_processes(info.shm_prefix)  # a stub outlives its killed server
    for process in stubs:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(server + stubs, timeout=10)
    for region in SHM_ROOT.glob(f"{info.shm_prefix}*"):
        region.unlink(missing_ok=True)
    for stale in (KEY_FILE, STATE_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    return stopped or bool(stubs)


def status(run_dir: Path) -> dict | None:
    """None when no Triton was started from `run_dir`; else "running" with its ports and per model whether
    it is ready and its instances (stub processes), or "died" when the server is gone without `stop`."""
    run_dir = Path(run_dir).resolve()
    info = recorded_state(run_dir)
    if info is None:
        return None
    stubs = stub_processes(info.shm_prefix)
    if not is_triton(info.pid):
        return {
            "state": "died",
            "server": SERVER_NAME,
            "pid": info.pid,
            "run_dir": str(run_dir),
            "leftover_workers": [p.pid for p in stubs],
            "log_tail": log_tail(run_dir, 10),
        }
    models = {}
    for name in info.models:
        pids = sorted(p.pid for p in stubs if f"/{name}/" in " ".join(p.cmdline()))
        ready = len(pids) if model_ready(info, name) else 0
        models[name] = {"workers": len(pids), "ready": ready, "pids": pids, "starting": len(pids) - ready}
    return {
        "state": "running",
        "server": SERVER_NAME,
        "pid": info.pid,
        "inference": info.inference_url,
        "grpc": info.grpc_target,
        "metrics": info.metrics_url,
        "token_auth": info.token_auth,
        "key_file": str(info.key_file) if info.token_auth else None,
        "models": models,
    }


def log_tail(run_dir: Path, lines: int = 30) -> str:
    path = run_dir / LOG_FILE
    if not path.is_file():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path} (last {len(text)} lines)\n" + "\n".join(text)

"""Start, stop and inspect a TorchServe process configured by `serve/config.properties`.

Everything one server writes lives in its run directory (default `.serve/`): the filled-in
`config.properties`, TorchServe's `key_file.json` (it writes it into its working directory), its logs,
the unix sockets to its workers and the archives it unpacks (TorchServe puts both in its temp dir,
which we point here), and our `server.json` (ports, pid, models) that `stop`, `status` and `token` read.
Several servers can therefore run side by side (tests next to a development server) as long as
their run directories and ports differ; TorchServe's own `torchserve --start` allows one per machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import psutil
import requests

CONFIG_TEMPLATE = Path(__file__).with_name("config.properties")
# Netty holds each request body whole in direct (off-heap) buffers before TorchServe checks the key:
# bounded here, a flood of large bodies gets its allocations refused (507s, resets) instead of growing
# the process without limit; ExitOnOutOfMemoryError does not cover these. 12 bodies of 20 MiB at once.
FRONTEND_DIRECT_MEMORY = "256m"
LOG_CONFIG_TEMPLATE = Path(__file__).with_name("log4j2.xml")
STATE_FILE = "server.json"
KEY_FILE = "key_file.json"
JAVA_MAIN_CLASS = "org.pytorch.serve.ModelServer"
MAX_UNIX_SOCKET_PATH = 100  # sun_path holds 108 bytes; TorchServe appends "/.ts.sock.9000"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# TorchServe's log files roll at this size and keep this many old copies each (its own config rolls
# daily and never deletes); our torchserve.out is rotated once at start past the same size.
LOG_FILE_MAX_MB = 20
LOG_FILES_KEPT = 4
# After SIGTERM in the foreground, how long the requests TorchServe had already accepted get to be answered
# before it stops (its own shutdown resets every open connection, answered or not). Its stop then takes a few
# seconds more, and `docker stop` sends SIGKILL after 10 s.
DRAIN_S = 3.0
EXEC_GRACE_S = 1.0  # how long a just-started process's command line may read empty (running_command_line)


class ServerError(RuntimeError):
    """TorchServe could not be started, stopped or reached; the message says why and what to do."""


@dataclass
class ServerSettings:
    model_store: Path = Path("model_store")
    models: list[str] = field(default_factory=list)  # names of <model_store>/<name>.mar; empty: all
    # The image sets SERVE_RUN_DIR=/tmp/serve: its only writable place is the /tmp tmpfs (docker run --read-only).
    run_dir: Path = field(default_factory=lambda: Path(os.environ.get("SERVE_RUN_DIR", ".serve")))
    host: str = "127.0.0.1"  # TorchServe's own default; a container passes --host 0.0.0.0
    port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    token_auth: bool = True  # TorchServe 0.12: one switch for the inference and management APIs
    allow_no_auth_on_network: bool = False  # token_auth=False on a non-loopback host needs this too
    metrics_host: str = "127.0.0.1"  # the pod address in the in-cluster mode, for Prometheus
    token_expiration_min: int = 60
    job_queue_size: int = 100
    startup_timeout_s: float = 180.0
    log_to_console: bool = False  # TorchServe's output to our stdout (containers), not <run-dir>/torchserve.out
    # The frontend's JVM heap (-Xmx); past it the JVM exits (-XX:+ExitOnOutOfMemoryError) rather than
    # limp on, and `serve status` / the foreground mode report it gone.
    frontend_heap: str = "1g"


@dataclass
class ServerInfo:
    pid: int
    run_dir: str
    models: list[str]
    host: str
    port: int
    management_port: int
    metrics_port: int
    token_auth: bool = True

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def key_file(self) -> Path:
        return Path(self.run_dir) / KEY_FILE

    def keys(self) -> dict:
        try:
            return json.loads(self.key_file.read_text())
        except (OSError, ValueError) as e:
            raise ServerError(f"{self.key_file}: cannot read TorchServe's keys ({e}); is the server running?") from None

    def key(self, kind: str = "inference") -> str:
        """A valid key of one kind ("inference", "management" or "API"); an expired one is renewed first."""
        if not self.token_auth:
            raise ServerError(f"the server in {self.run_dir} runs without token authorization: no key is needed")
        try:
            entry = self.keys()[kind]
            if "expiration time" in entry and expires_soon(entry["expiration time"]):
                self.renew(kind)
                entry = self.keys()[kind]
            return entry["key"]
        except KeyError as e:
            raise ServerError(f"{self.key_file}: no {e} key in TorchServe's key file") from None

    def renew(self, kind: str) -> None:
        """Have TorchServe issue a new inference or management key (authorized by the API key)."""
        api_key = self.keys()["API"]["key"]
        response = requests.get(
            f"{self.management_url}/token",
            params={"type": kind},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=10,
        )
        if response.status_code != 200:
            raise ServerError(f"TorchServe refused to renew the {kind} key: {response.status_code} {response.text}")

    def headers(self, kind: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key(kind)}"} if self.token_auth else {}


def expires_soon(expiration: str, margin_s: float = 60.0) -> bool:
    """Whether a key-file expiration time (a Java Instant: 2026-11-23T20:31:00.123456789Z) is under a minute away."""
    # Python 3.10's fromisoformat takes neither "Z" nor nanoseconds.
    iso = re.sub(r"(\.\d{6})\d+", r"\1", expiration.replace("Z", "+00:00"))
    return datetime.fromisoformat(iso).timestamp() - time.time() < margin_s


def render_config(settings: ServerSettings, models: list[str]) -> str:
    """The template with this server's values; every path absolute (TorchServe's cwd is the run dir)."""
    store = settings.model_store.resolve()
    # A Java regex: the store path taken literally (re.escape's backslash escapes mean the same in Java;
    # a comma becomes \x2c because TorchServe splits allowed_urls at commas), written into a .properties
    # file where a backslash is itself an escape character.
    literal_store = re.escape(str(store)).replace(",", "\\x2c")
    allowed_urls = f"file://{literal_store}/[^/]+[.]mar".replace("\\", "\\\\")
    return string.Template(CONFIG_TEMPLATE.read_text()).substitute(
        host=settings.host,
        port=settings.port,
        management_port=settings.management_port,
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
        grpc_inference_port=settings.grpc_inference_port,
        grpc_management_port=settings.grpc_management_port,
        model_store=store,
        load_models=",".join(f"{name}={name}.mar" for name in models),
        disable_token_authorization=str(not settings.token_auth).lower(),
        token_expiration_min=settings.token_expiration_min,
        allowed_urls=allowed_urls,
        job_queue_size=settings.job_queue_size,
        frontend_heap=settings.frontend_heap,
        frontend_direct_memory=FRONTEND_DIRECT_MEMORY,
    )


def render_log_config(settings: ServerSettings) -> str:
    """Our log4j2 config: TorchServe's log files roll by size and old ones are deleted; the frontend's
    console log goes to our stdout only in the foreground (containers), else only to the files."""
    console = '<AppenderRef ref="STDOUT"/>' if settings.log_to_console else ""
    return string.Template(LOG_CONFIG_TEMPLATE.read_text()).substitute(
        console=console, max_mb=LOG_FILE_MAX_MB, kept=LOG_FILES_KEPT
    )


def check_exposure(settings: ServerSettings) -> None:
    """Refuse to open an API without a key on an address other machines can reach, unless asked to."""
    if settings.token_auth or settings.host in LOOPBACK_HOSTS or settings.allow_no_auth_on_network:
        return
    raise ServerError(
        f"--no-token-auth with --host {settings.host} would let anyone who can reach this address use the "
        "inference API without a key; serve on 127.0.0.1, keep token authorization, or add "
        "--allow-no-auth-on-network if the network is trusted (or the server sits behind an authenticating proxy)"
    )


def rotate_if_large(path: Path, max_bytes: int = LOG_FILE_MAX_MB * 1024 * 1024) -> None:
    """Keep one previous copy of a file we append to, once it passes `max_bytes`."""
    try:
        if path.stat().st_size > max_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def find_models(model_store: Path, names: list[str]) -> list[str]:
    if not model_store.is_dir():
        raise ServerError(
            f"model store {model_store} does not exist; create an archive first: "
            f"python -m serve package --export-dir exports/NAME --model-store {model_store}"
        )
    available = sorted(p.stem for p in model_store.glob("*.mar"))
    if not names:
        if not available:
            raise ServerError(
                f"no .mar archives in {model_store}; create one with "
                f"python -m serve package --export-dir exports/NAME --model-store {model_store}"
            )
        return available
    missing = [n for n in names if n not in available]
    if missing:
        raise ServerError(
            f"{', '.join(f'{model_store / n}.mar' for n in missing)} not found (the store has: "
            f"{', '.join(available) or 'nothing'}); package it with python -m serve package --export-dir exports/NAME"
        )
    return list(names)


def check_ports_free(settings: ServerSettings) -> None:
    check_free(
        [
            ("inference", settings.host, settings.port),
            ("management", "127.0.0.1", settings.management_port),
            ("metrics", settings.metrics_host, settings.metrics_port),
            ("gRPC inference", "127.0.0.1", settings.grpc_inference_port),
            ("gRPC management", "127.0.0.1", settings.grpc_management_port),
        ]
    )


def check_free(ports: list[tuple[str, str, int]]) -> None:
    """ServerError naming the first (what, host, port) that cannot be bound."""
    for what, host, port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise ServerError(f"{what} port {host}:{port} is not free ({e.strerror}); pick another port") from None


def free_ports(count: int) -> list[int]:
    """`count` distinct ports on 127.0.0.1 that were free a moment ago (for tests and benchmarks)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def recorded_state(run_dir: Path) -> ServerInfo | None:
    """The server `start` recorded in `run_dir` (alive or not), or None when there is no record."""
    try:
        return ServerInfo(**json.loads((Path(run_dir) / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def read_state(run_dir: Path) -> ServerInfo | None:
    """The server recorded in `run_dir`, or None when there is none or its process is gone."""
    info = recorded_state(run_dir)
    return info if info is not None and is_torchserve(info.pid) else None


def dead_server(run_dir: Path) -> ServerInfo | None:
    """The server recorded in `run_dir` whose frontend is gone without `stop` (killed, or exited on an
    OutOfMemoryError), or None when one runs or none was recorded."""
    info = recorded_state(Path(run_dir).resolve())
    return info if info is not None and not is_torchserve(info.pid) else None


def worker_processes(run_dir: Path) -> list[psutil.Process]:
    """Python workers listening on a socket of `run_dir` (TorchServe's temp dir), whether or not their
    frontend still runs: a frontend killed with -9 leaves its workers behind."""
    prefix = str(Path(run_dir).resolve() / ".ts.sock.")
    workers = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(arg.startswith(prefix) for arg in cmdline) and any("model_service_worker" in a for a in cmdline):
            workers.append(process)
    return workers


def is_torchserve(pid: int) -> bool:
    return JAVA_MAIN_CLASS in running_command_line(pid)


def running_command_line(pid: int) -> list[str]:
    """The command line of a running process ([] when it is gone or a zombie). A process that has just
    been started can show an empty one: Popen returns once the exec has begun, and the kernel records the
    new command line a moment later, while it loads the binary (which made a Triton still loading look
    exited). An empty one is read again for up to EXEC_GRACE_S."""
    deadline = time.monotonic() + EXEC_GRACE_S
    try:
        process = psutil.Process(pid)
        while process.status() != psutil.STATUS_ZOMBIE:
            command = process.cmdline()
            if command or time.monotonic() > deadline:
                return command
            time.sleep(0.01)
    except psutil.Error:
        pass
    return []


def start(settings: ServerSettings, log=print) -> ServerInfo:
    """Start TorchServe and return once every model answers a real prediction."""
    run_dir = settings.run_dir.resolve()
    if len(str(run_dir)) > MAX_UNIX_SOCKET_PATH - len("/.ts.sock.65535"):
        raise ServerError(f"run directory {run_dir} is too long for a unix socket path; use a shorter --run-dir")
    running = read_state(run_dir)
    if running is not None:
        raise ServerError(
            f"TorchServe is already running from {run_dir} (pid {running.pid}, port {running.port}); "
            f"stop it with python -m serve stop --run-dir {settings.run_dir}"
        )
    check_exposure(settings)
    models = find_models(settings.model_store, settings.models)
    check_ports_free(settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (KEY_FILE, STATE_FILE, ".model_server.pid"):
        (run_dir / stale).unlink(missing_ok=True)
    config = run_dir / "config.properties"
    config.write_text(render_config(settings, models))
    log_config = run_dir / "log4j2.xml"
    log_config.write_text(render_log_config(settings))
    rotate_if_large(run_dir / "torchserve.out")

    env = dict(
        os.environ,
        TMPDIR=str(run_dir),
        TEMP=str(run_dir),
        LOG_LOCATION=str(run_dir / "logs"),
        METRICS_LOCATION=str(run_dir / "logs"),
    )
    # This config never applies an envelope (enable_envvars_config=false), and the handler takes this
    # variable as the layout its requests come in (serve/envelope.py): a stray one must not reach it.
    env.pop("TS_SERVICE_ENVELOPE", None)
    command = [
        sys.executable,
        "-m",
        "ts.model_server",
        "--start",
        "--ncs",
        "--ts-config",
        str(config),
        "--log-config",
        str(log_config),
        "--model-store",
        str(settings.model_store.resolve()),
    ]
    with open(run_dir / "torchserve.out", "ab") as out:
        # A new session: the server outlives this command and ignores the terminal's Ctrl-C.
        launcher = subprocess.run(
            command,
            cwd=run_dir,
            env=env,
            stdout=None if settings.log_to_console else out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            timeout=60,
        )
    pid_file = run_dir / ".model_server.pid"
    if launcher.returncode != 0 or not pid_file.is_file():
        raise ServerError(f"TorchServe's launcher failed (exit {launcher.returncode}):\n{log_tail(run_dir)}")
    info = ServerInfo(
        pid=int(pid_file.read_text().strip()),
        run_dir=str(run_dir),
        models=models,
        host=settings.host,
        port=settings.port,
        management_port=settings.management_port,
        metrics_port=settings.metrics_port,
        token_auth=settings.token_auth,
    )
    (run_dir / STATE_FILE).write_text(json.dumps(asdict(info), indent=2))
    try:
        wait_until_ready(info, settings.startup_timeout_s, log)
    except BaseException:
        stop(run_dir)
        raise
    return info


def wait_until_ready(info: ServerInfo, timeout_s: float, log=print) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(info.models)
    while pending:
        if not is_torchserve(info.pid):
            raise ServerError(f"TorchServe exited while starting:\n{log_tail(Path(info.run_dir))}")
        if time.monotonic() > deadline:
            raise ServerError(f"models {pending} not ready after {timeout_s:.0f} s:\n{log_tail(Path(info.run_dir))}")
        name = pending[0]
        if model_answers(info, name):
            log(f"model {name} is loaded and answering")
            pending.pop(0)
        else:
            time.sleep(0.5)


def model_answers(info: ServerInfo, name: str) -> bool:
    """True once the model's workers are up and a real image gets a 200 with a prediction."""
    try:
        response = requests.put(
            f"{info.inference_url}/predictions/{name}",
            data=probe_image(),
            headers=info.headers("inference"),
            timeout=30,
        )
    except (requests.ConnectionError, requests.Timeout, ServerError):
        return False
    return response.status_code == 200 and bool(response.json())


def probe_image() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buffer, "PNG")
    return buffer.getvalue()


def stop(run_dir: Path, timeout_s: float = 30.0) -> bool:
    """Stop the server recorded in `run_dir` and its workers (also those a dead frontend left behind);
    False when none was running."""
    run_dir = Path(run_dir).resolve()
    info = read_state(run_dir)
    stopped = False
    if info is None and recorded_state(run_dir) is not None:
        # The frontend died: its workers have nothing left to finish.
        leftovers = worker_processes(run_dir)
        for process in leftovers:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(leftovers, timeout=10)
        stopped = bool(leftovers)
    if info is not None:
        java = psutil.Process(info.pid)
        processes = [java, *java.children(recursive=True)]
        for process in processes:
            try:
                process.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(processes, timeout=timeout_s)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        stopped = True
    for stale in (KEY_FILE, STATE_FILE, ".model_server.pid"):
        (run_dir / stale).unlink(missing_ok=True)
    return stopped


def run_in_foreground(info, is_running=is_torchserve, stop_server=stop, drain_s: float = DRAIN_S) -> int:
    """Block while the server (`is_running(info.pid)`: TorchServe by default) runs; SIGTERM or SIGINT
    (`docker stop`, Ctrl-C) stops it cleanly with `stop_server(run_dir)`: the requests already accepted
    are answered first (`drain`, at most `drain_s`; 0 for a server that waits for them itself).

    Returns 0 after a requested stop, 1 when the server exited by itself.
    """
    requested = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: requested.append(signum))
    while not requested and is_running(info.pid):
        time.sleep(0.5)
    if requested and drain_s > 0:
        drain(info, drain_s)
    stop_server(Path(info.run_dir))  # after a server that died by itself: its workers, if any outlived it
    return 0 if requested else 1


def drain(info: ServerInfo, timeout_s: float = DRAIN_S) -> None:
    """Wait until the clients connected when SIGTERM came have their answers and hang up, at most `timeout_s`
    (a keep-alive client that stays connected uses it all)."""
    deadline = time.monotonic() + timeout_s
    waiting = client_connections(info)
    while waiting and time.monotonic() < deadline:
        time.sleep(0.05)
        waiting &= client_connections(info)


def client_connections(info: ServerInfo) -> set[tuple]:
    """(address, port) of each client connected to the frontend's inference port."""
    try:
        frontend = psutil.Process(info.pid)
        connections = getattr(frontend, "net_connections", frontend.connections)("tcp")  # psutil < 6: connections
    except psutil.Error:
        return set()
    return {tuple(c.raddr) for c in connections if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == info.port}


def status(run_dir: Path) -> dict | None:
    """None when no server was started from `run_dir` (or it was stopped). Else `state` "running", with its
    ports and, per model, its workers (`worker_report`); or `state` "died" when the
    frontend is gone without `stop`, with the workers it left behind and the end of its logs."""
    run_dir = Path(run_dir).resolve()
    dead = dead_server(run_dir)
    if dead is not None:
        return {
            "state": "died",
            "pid": dead.pid,
            "run_dir": str(run_dir),
            "leftover_workers": [p.pid for p in worker_processes(run_dir)],
            "log_tail": log_tail(run_dir, 10),
        }
    info = read_state(run_dir)
    if info is None:
        return None
    report = {
        "state": "running",
        "pid": info.pid,
        "inference": info.inference_url,
        "management": info.management_url,
        "metrics": info.metrics_url,
        "token_auth": info.token_auth,
        "key_file": str(info.key_file) if info.token_auth else None,
        "models": {},
    }
    for name in info.models:
        try:
            url = f"{info.management_url}/models/{name}"
            response = requests.get(url, headers=info.headers("management"), timeout=10)
            response.raise_for_status()
            report["models"][name] = worker_report(response.json()[0]["workers"])
        except (requests.RequestException, ValueError, KeyError, IndexError, TypeError, ServerError) as e:
            report["models"][name] = {"error": str(e)}
    return report


def worker_report(workers: list[dict]) -> dict:
    """One model's workers from the management API: how many, how many READY, their pids, and why the others
    are not ready. TorchServe calls every worker that is not ready "UNLOADING": one whose process is gone
    died (killed, crashed) and is being replaced, which can take seconds of back-off before the new
    process even appears; one whose process lives is starting (loading the model)."""
    pids = sorted(int(w["pid"]) for w in workers if w.get("pid"))
    waiting = [int(w["pid"]) if w.get("pid") else None for w in workers if w["status"] != "READY"]
    dead = [pid for pid in waiting if pid is not None and not is_alive(pid)]
    return {
        "workers": len(workers),
        "ready": len(workers) - len(waiting),
        "pids": pids,
        "restarting": dead,
        "starting": len(waiting) - len(dead),
    }


def is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def log_tail(run_dir: Path, lines: int = 30) -> str:
    candidates = [run_dir / "logs" / "ts_log.log", run_dir / "logs" / "model_log.log", run_dir / "torchserve.out"]
    tails = []
    for path in candidates:
        if path.is_file():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {path} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join(tails) or f"(no logs under {run_dir})"

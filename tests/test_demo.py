"""`make demo` end to end: the real pipeline (train, export, package, TorchServe, curl, client, locust)."""

import subprocess
import sys
from pathlib import Path

from serve.server import free_ports, read_state

ROOT = Path(__file__).resolve().parents[1]


def run_demo(workdir: Path, port: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "demo.py"),
            "--workdir",
            str(workdir),
            "--port",
            str(port),
            "--epochs",
            "3",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def consecutive_free_port(span: int = 5) -> int:
    """A port p with p..p+span-1 free (the demo uses five in a row)."""
    import socket

    for base in sorted(free_ports(20)):
        if base + span >= 65536:
            continue
        sockets = []
        try:
            for port in range(base, base + span):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no five consecutive free ports on 127.0.0.1")


def test_demo_runs_end_to_end_and_a_failing_step_leaves_no_server(tmp_path):
    workdir = tmp_path / "demo"
    port = consecutive_free_port()
    done = run_demo(workdir, port, "--loadtest-duration", "5s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for step in (
        "1/8 train",
        "2/8 export",
        "3/8 package",
        "5/8 start TorchServe",
        "6/8 curl -T",
        "7/8 the client",
        "8/8 a short locust load test",
    ):
        assert f"==> {step}" in out
    assert '"7":' in out.split("==> 6/8", 1)[1].split("==> 7/8", 1)[0]  # curl's JSON answer names classes
    summary = out.split("resnet-deploy demo: done", 1)[1]
    assert "validation top-1" in summary and "load test" in summary and " 0 failures" in summary
    assert summary.count(" pass") == 2  # TorchScript and ONNX parity
    for artifact in ("runs/resnet20-digits/best.pt", "exports/digits/manifest.json", "model_store/digits.mar"):
        assert (workdir / artifact).is_file()
    assert read_state(workdir / "server") is None, "the demo left TorchServe running"

    # A second run starts clean; a step that fails after the server started stops it and says which step.
    failed = run_demo(
        workdir, port, "--loadtest-duration", "not-a-duration", "--epochs", "1"
    )  # accuracy is not judged here
    assert failed.returncode == 1
    assert "step '8/8 a short locust load test' failed" in failed.stderr
    assert "TorchServe from" in failed.stdout and "stopped" in failed.stdout
    assert read_state(workdir / "server") is None, "a failed demo left TorchServe running"

"""The demo deletes its work directory on every run: only a folder an earlier demo marked, never through
a symlink, and a TorchServe an earlier (`kill -9`ed) demo left running is stopped first (issue 20)."""

import os
import subprocess
import sys
from pathlib import Path

import psutil

from fsutil.owned import MARKER_NAME, is_owned, mark_owned
from serve.package import package
from serve.server import ServerSettings, read_state, start, stop
from tests.fixtures.served import SERVED_PACKAGE_OPTIONS
from tests.test_demo import consecutive_free_port

ROOT = Path(__file__).resolve().parents[1]


def demo(workdir: Path | str, port: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--workdir", str(workdir), "--port", str(port), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def precious_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    (path / "sub" / "photo.jpg").write_bytes(b"\xff\xd8")
    return path


def contents(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_symlinked_or_foreign_workdir_deletes_nothing(tmp_path):
    data = precious_folder(tmp_path / "data")
    before = contents(data)
    link = tmp_path / "demo"
    link.symlink_to(data)
    port = consecutive_free_port()

    refused = demo(link, port)  # a `demo` symlink to a data folder
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "is a symlink" in refused.stderr and "==> 1/8" not in refused.stdout
    assert link.is_symlink() and contents(data) == before

    (data / MARKER_NAME).write_text('{"kind": "demo"}')  # even a marked folder is not deleted through a link
    assert demo(link, port).returncode == 2
    assert contents(data) == sorted(before + [MARKER_NAME])
    (data / MARKER_NAME).unlink()

    home = precious_folder(tmp_path / "home")  # `--workdir ~`: a folder no demo made
    refused = demo(home, port)
    assert refused.returncode == 2 and f"no {MARKER_NAME} file" in refused.stderr
    assert contents(home) == contents(data)


def test_next_demo_stops_the_server_a_killed_demo_left(tmp_path, digits_export):
    work = mark_owned(tmp_path / "demo", "demo")  # as a demo killed with kill -9 left it: server still up
    (work / "old-output.txt").write_text("from the earlier demo")
    store = package(digits_export, work / "model_store", name="digits", options=SERVED_PACKAGE_OPTIONS).parent
    port = consecutive_free_port()
    settings = ServerSettings(
        model_store=store,
        models=["digits"],
        run_dir=work / "server",
        port=port,
        management_port=port + 1,
        metrics_port=port + 2,
        grpc_inference_port=port + 3,
        grpc_management_port=port + 4,
        startup_timeout_s=240,
    )
    leftover = start(settings, log=lambda message: None)
    try:
        # --epochs 0 fails the first step at once: what matters is what happened before it
        done = demo(work, port, "--epochs", "0")
        assert "stopping the TorchServe an earlier demo left running" in done.stdout, done.stdout + done.stderr
        assert "in use" not in done.stderr  # the leftover server's ports were freed before the port check
        assert "step '1/8 train resnet20 on the digits' failed" in done.stderr
        assert not psutil.pid_exists(leftover.pid) or psutil.Process(leftover.pid).status() == psutil.STATUS_ZOMBIE
        assert read_state(work / "server") is None
        assert is_owned(work, "demo") and not (work / "old-output.txt").exists()
    finally:
        if read_state(work / "server") is not None:
            stop(work / "server")
    assert os.listdir(work) == [MARKER_NAME]

"""`make demo`: the whole pipeline on real built-in data, CPU only, in a few minutes.

train resnet20 on scikit-learn's handwritten digits -> export TorchScript and ONNX with parity ->
package a model archive -> start TorchServe -> classify real digit images with `curl -T` and with the
client -> a short locust load test -> stop the server -> print a summary and where everything is.

Every step runs the same command line a user would type (printed before it runs). A failing step
stops the demo with its name and exit code, and the server is stopped whatever happens.

A second run starts clean by deleting the work directory, which is why it deletes only a folder an
earlier demo marked as its own, never through a symlink; a server an earlier demo left running (one
killed with `kill -9`) is stopped from its state file first.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from fsutil.owned import MARKER_NAME, NotOwnedError, is_owned, mark_owned, remove_owned_tree

MODEL_NAME = "digits"
DEMO_KIND = "demo"  # the marker kind of a demo work directory (fsutil.owned.mark_owned)


class StepFailed(RuntimeError):
    pass


SECRETS: list[str] = []  # shown as <secret> wherever a command is echoed: logs of a demo get shared


def run(step: str, cmd: list[str], *, capture: bool = False, env: dict[str, str] | None = None) -> str:
    shown = shlex.join(cmd)
    for secret in SECRETS:
        shown = shown.replace(secret, "<secret>")
    print(f"\n==> {step}\n$ {shown}", flush=True)
    result = subprocess.run(
        cmd, text=True, stdout=subprocess.PIPE if capture else None, env=None if env is None else {**os.environ, **env}
    )
    if result.returncode != 0:
        raise StepFailed(f"step '{step}' failed with exit code {result.returncode}: {shown}")
    if capture:
        print("(output captured, not shown)")
    return result.stdout or ""


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def start_clean(work: Path) -> None:
    """Empty the work directory of an earlier demo and mark it as the demo's. Only a real folder that an
    earlier demo marked is deleted; an empty or missing one is used; anything else is refused."""
    if work.is_symlink():
        raise NotOwnedError(
            f"{work} is a symlink; the demo deletes its work directory on the next run, so it "
            "must be a real folder. Pass --workdir a new folder"
        )
    if work.exists() and any(work.iterdir()) and not is_owned(work, DEMO_KIND):
        raise NotOwnedError(
            f"{work} holds files that no demo made (no {MARKER_NAME} file); the demo deletes its "
            "work directory on the next run, so pass --workdir a new or empty folder"
        )
    if is_owned(work, DEMO_KIND):
        remove_owned_tree(work, DEMO_KIND)
    mark_owned(work, DEMO_KIND)  # a missing or empty folder is used as it is


def stop_leftover_server(run_dir: Path) -> None:
    """Stop a TorchServe that an earlier demo started from `run_dir` and never stopped (killed with
    `kill -9`): deleting its state file would leave `serve stop` unable to find it."""
    if run_dir.is_symlink() or not is_owned(run_dir.parent, DEMO_KIND):
        return  # not a demo's folder: its server, if any, is not ours to stop
    from serve.server import read_state, stop

    leftover = read_state(run_dir)
    if leftover is not None:
        print(f"demo: stopping the TorchServe an earlier demo left running (pid {leftover.pid}, port {leftover.port})")
        stop(run_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python scripts/demo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("demo"), help="where everything goes (default: demo/)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default: 10)")
    parser.add_argument(
        "--port", type=int, default=8080, help="inference port; +1, +2, +3, +4 are used too (default: 8080)"
    )
    parser.add_argument("--loadtest-duration", default="15s", help="locust run time (default: 15s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = Path(os.path.abspath(args.workdir))  # absolute, but a symlink stays a symlink (never resolved)
    stop_leftover_server(work / "server")  # before the port check: a leftover server holds the ports
    ports = [args.port + i for i in range(5)]  # inference, management, metrics, gRPC x2
    busy = [p for p in ports if not port_is_free(p)]
    if busy:
        print(f"demo: port(s) {busy} on 127.0.0.1 are in use; stop what uses them or pass --port", file=sys.stderr)
        return 2
    try:
        start_clean(work)
    except NotOwnedError as e:
        print(f"demo: --workdir: {e}", file=sys.stderr)
        return 2
    paths = DemoPaths(work)
    started = time.perf_counter()
    try:
        build_and_package(paths, args.epochs)
        serve_and_load(paths, ports, args.loadtest_duration)
    except StepFailed as e:
        print(f"\ndemo: {e}", file=sys.stderr)
        return 1
    print_summary(
        paths.checkpoint,
        paths.exports,
        paths.store,
        paths.images,
        paths.loadtests,
        paths.run_dir,
        time.perf_counter() - started,
    )
    print_inspection(work / "inspect")
    return 0


class DemoPaths:
    """Where each step of the demo writes, all inside the work directory."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.runs, self.exports = work / "runs", work / "exports" / MODEL_NAME
        self.store, self.images = work / "model_store", work / "images"
        self.run_dir, self.loadtests = work / "server", work / "loadtests"
        self.checkpoint = self.runs / "resnet20-digits" / "best.pt"


def build_and_package(paths: DemoPaths, epochs: int) -> None:
    """Steps 1-4: train, export with parity, package, write the images to send, and look inside the model."""
    py = sys.executable
    run(
        "1/8 train resnet20 on the digits",
        [py, "-m", "train", *"--arch resnet20 --data digits --epochs".split(), str(epochs)]
        + ["--out", str(paths.runs), "--name", "resnet20-digits"],
    )
    run(
        "2/8 export TorchScript and ONNX, with parity",
        [py, "-m", "export", "--checkpoint", str(paths.checkpoint), "--to", "torchscript,onnx"]
        + ["--name", MODEL_NAME, "--out", str(paths.exports)],
    )
    run(
        "3/8 package the model archive",
        [py, "-m", "serve", "package", "--export-dir", str(paths.exports), "--model-store", str(paths.store)],
    )
    run(
        "4/8 write real digit images to send",
        [
            py,
            "-c",
            f"from imagedata.digits import write_digits_folder; write_digits_folder({str(paths.images)!r}, split='val', "
            "limit_per_class=3, image_size=64)",
        ],
    )
    run(
        "   look inside the model",
        [py, "-m", "models.inspect", "--checkpoint", str(paths.checkpoint), "--data", str(paths.images)]
        + ["--gradcam", "--out", str(paths.work / "inspect")],
    )


def serve_and_load(paths: DemoPaths, ports: list[int], loadtest_duration: str) -> None:
    """Steps 5-8: start TorchServe, curl -T a real 7, the client on every image, a short locust run; then stop."""
    py, url = sys.executable, f"http://127.0.0.1:{ports[0]}"
    run_dir = ["--run-dir", str(paths.run_dir)]
    try:
        run(
            "5/8 start TorchServe",
            [py, "-m", "serve", "start", "--model-store", str(paths.store), "--models", MODEL_NAME]
            + ["--port", str(ports[0]), "--management-port", str(ports[1]), "--metrics-port", str(ports[2])]
            + ["--grpc-ports", str(ports[3]), str(ports[4]), *run_dir],
        )
        token = run("   the inference key", [py, "-m", "serve", "token", *run_dir], capture=True).strip()
        SECRETS.append(token)
        sample = sorted((paths.images / "7").glob("*.png"))[0]
        run(
            "6/8 curl -T a real handwritten 7",
            ["curl", "-sS", "--fail-with-body", "-T", str(sample), "-H", f"Authorization: Bearer {token}"]
            + [f"{url}/predictions/{MODEL_NAME}"],
        )
        key = {"TORCHSERVE_TOKEN": token}  # the client and locust read the key from there
        run(
            "7/8 the client on every image (TORCHSERVE_TOKEN set)",
            [py, "-m", "client", str(paths.images), "--url", url, "--model", MODEL_NAME, "--top-k", "3"],
            env=key,
        )
        run(
            "8/8 a short locust load test",
            [py, "-m", "client", "loadtest", "--host", url, "--model", MODEL_NAME, "--users", "4"]
            + ["--duration", loadtest_duration, "--images", str(paths.images), "--output-root", str(paths.loadtests)],
            env=key,
        )
    finally:
        subprocess.run([py, "-m", "serve", "stop", *run_dir], check=False)


def print_summary(
    checkpoint: Path, exports: Path, store: Path, images: Path, loadtests: Path, run_dir: Path, seconds: float
) -> None:
    from export.manifest import read_manifest
    from models import load_checkpoint

    metrics = load_checkpoint(checkpoint).metrics
    manifest = read_manifest(exports)
    report_dir = max(p for p in loadtests.iterdir() if p.is_dir())
    load = json.loads((report_dir / "summary.json").read_text())

    print("\n" + "=" * 72 + f"\nresnet-deploy demo: done in {seconds:.0f} s\n" + "=" * 72)
    print(f"validation top-1   {metrics['top1']:.2f}%   (resnet20 on scikit-learn's digits)")
    print("\nparity against eager PyTorch:")
    print(f"  {'format':<12} {'top-1 agreement':>16} {'max |diff|':>12} {'min cosine':>12}  result")
    for artifact in manifest.artifacts:
        m = artifact.parity["metrics"]
        print(
            f"  {artifact.format:<12} {m['top1_agreement']:>16.2%} {m['max_abs_diff']:>12.2e} "
            f"{m['min_cosine']:>12.6f}  {'pass' if artifact.passed else 'FAIL'}"
        )
    print(
        f"\nload test          {load['requests_per_s']:.1f} requests/s, p50 {load['p50_ms']:.0f} ms, "
        f"p95 {load['p95_ms']:.0f} ms, {load['failures']} failures of {load['requests']}"
    )
    print("\nwhere everything is:")
    for label, path in [
        ("checkpoint", checkpoint),
        ("training curves", checkpoint.parent / "curves.png"),
        ("export + manifest", exports),
        ("model archive", store / f"{MODEL_NAME}.mar"),
        ("images sent", images),
        ("load-test report", report_dir / "report.html"),
        ("server logs", run_dir),
    ]:
        print(f"  {label:<18} {path}")


def print_inspection(inspection: Path) -> None:
    """A few numbers from `python -m models.inspect`'s report on the trained digits model."""
    found = json.loads((inspection / "inspection.json").read_text())
    ratios = [b["ratio"] for b in found["residual_flow"] if b["ratio"] is not None]
    grads = [g["grad_norm"] for g in found["gradient_flow"]]
    dead = ", ".join(f"{s['stage']} {s['dead_fraction']:.0%}" for s in found["relu_activity"])
    print("\ninside the model   (python -m models.inspect, on a labelled batch of the images sent)")
    print(f"  residual ratio ||F(x)|| / ||identity|| per block: {min(ratios):.2f} to {max(ratios):.2f}")
    print(f"  gradient norm per layer: {min(grads):.2g} to {max(grads):.2g}; dead ReLU channels: {dead}")
    print(f"  report with pictures (feature maps, filters, Grad-CAM, ...): {inspection / 'report.md'}")


if __name__ == "__main__":
    raise SystemExit(main())

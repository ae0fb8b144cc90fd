"""`python -m benchmarks serve`: TorchServe with our handler under locust, against the raw runner and the stock handler.

For each architecture the random-init export (`python -m export`) is packaged with `python -m serve
package`'s code (our handler on the ONNX artifact, on the ONNX INT8 artifact, and on the TorchScript
artifact) and with TorchServe's stock `image_classifier` handler on the same TorchScript file, once per
worker layout (`--layouts`: workers x batch size; each worker gets cores // workers threads). One real
TorchServe (`serve.server.start`) serves them all; `python -m client loadtest` (headless locust, closed
loop: `users` = requests in flight) sends ~1-megapixel JPEGs of scikit-image's sample photos at rising
concurrency. Each level is compared with the raw runner's capacity at the batch a worker can form
there: the best of one runner with every core and one single-threaded runner per core running at once,
measured right after that level, once TorchServe's processes are idle (the machine's speed drifts by
~10% over minutes; adjacent measurements keep that drift out of the ratio).

The request-time split runs our handler in-process on the unpacked archive of each layout with
TorchServe's `Context`: decode (`models.imageio.decode_image`), preprocess (resize, crop, normalise),
inference (the runner) and postprocess (softmax, top-k, labels), on one 1-megapixel JPEG per request.

Latency under load (`benchmarks.latency`): at the layout with the highest closed-loop capacity, an
open loop (`python -m client openloop`, Poisson arrivals at fixed fractions of that capacity, latency
from each request's scheduled send time) finds the highest rate whose p99 stays within --p99-bound-ms;
and ApacheBench (`ab -k`, when installed) runs beside locust at --cross-check-users on the same JPEG,
so that each capacity figure names its load generator and that generator's own CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

import psutil
import torch
import yaml
from PIL import Image

from client.openloop import DEFAULT_CONNECTIONS
from export.manifest import read_manifest
from export.runners import open_runner

from . import latency, triton_compare
from .artifacts import export_model
from .errors import BenchmarkError, BenchmarkUsageError, check_archs, positive_int
from .plots import latency_vs_load
from .report import Report, Table, Verdict, usable_cores
from .timing import Budget, concurrent_throughput, interleaved

STOCK_TARGET = 2.0  # ours over the stock image_classifier handler, same model, same load
PRE_TARGET = 0.5  # our decode+preprocess time over the stock handler's, same 1-megapixel JPEG
CPU_TARGET = 1.15  # worker CPU ms per served image over the raw runner's CPU ms per image, same batch
OUR_BACKENDS = ("onnx", "onnx-int8", "torchscript")  # the targets are judged on fp32 onnx; the others are compared
PHOTOS = ("chelsea", "coffee", "astronaut")


@dataclass(frozen=True)
class Layout:
    """How a model is served: `workers` processes, each with cores // workers threads, batching up to
    `batch_size` requests (TorchServe's batchSize) within `max_batch_delay_ms`."""

    workers: int
    batch_size: int
    max_batch_delay_ms: int

    @property
    def threads_per_worker(self) -> int:
        return max(1, usable_cores() // self.workers)

    @property
    def key(self) -> str:
        return f"{self.workers}x{self.batch_size}"

    @property
    def label(self) -> str:
        return f"{self.workers} worker(s) x {self.threads_per_worker} thread(s), batch {self.batch_size}"

    def worker_batch(self, users: int) -> int:
        """The batch a worker forms when `users` requests are in flight, spread over the workers."""
        return min(math.ceil(users / self.workers), self.batch_size)


def parse_layout(text: str) -> tuple[int, int]:
    """argparse type: WORKERSxBATCH, e.g. 2x4."""
    try:
        workers, batch = (positive_int(part) for part in text.lower().split("x"))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not WORKERSxBATCH with two positive integers, e.g. 2x4"
        ) from None
    return workers, batch


def write_photos(folder: Path, megapixels: float = 1.0) -> list[Path]:
    """scikit-image's sample photos, upscaled (bicubic) to about `megapixels`, saved as JPEG (quality 90)."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        scale = (megapixels * 1e6 / (photo.width * photo.height)) ** 0.5
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BICUBIC)
        path = folder / f"{name}.jpg"
        photo.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def model_config(layout: Layout) -> dict:
    return {
        "minWorkers": layout.workers,
        "maxWorkers": layout.workers,
        "batchSize": layout.batch_size,
        "maxBatchDelay": layout.max_batch_delay_ms,
        "responseTimeout": 120,
    }


def our_archive(export_dir: Path, store: Path, name: str, backend: str, layout: Layout) -> Path:
    from serve.package import PackageOptions, package

    options = PackageOptions(
        backend=backend,
        workers=layout.workers,
        batch_size=layout.batch_size,
        max_batch_delay_ms=layout.max_batch_delay_ms,
        response_timeout_s=120,
    )
    return package(export_dir, store, name=name, options=options)


def stock_archive(export_dir: Path, store: Path, name: str, layout: Layout, staging: Path) -> Path:
    """TorchServe's own `image_classifier` handler on the export's TorchScript file (what
    `torch-model-archiver --handler image_classifier --serialized-file model.pt` makes)."""
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    manifest = read_manifest(export_dir)
    artifact = manifest.find("torchscript")
    staging.mkdir(parents=True, exist_ok=True)
    # BaseHandler loads a serialized file as TorchScript only when its name ends in ".pt".
    model_file = staging / "model.pt"
    model_file.write_bytes((export_dir / artifact.file).read_bytes())
    labels = staging / "index_to_name.json"
    labels.write_text(json.dumps({str(i): n for i, n in enumerate(manifest.class_names)}))
    config = staging / "model-config.yaml"
    config.write_text(yaml.safe_dump(model_config(layout)))
    generate_model_archive(
        ModelArchiverConfig(
            model_name=name,
            handler="image_classifier",
            version="1.0",
            serialized_file=str(model_file),
            extra_files=str(labels),
            config_file=str(config),
            export_path=str(store),
            force=True,
        )
    )
    return store / f"{name}.mar"


def stock_handler_available() -> str | None:
    """None when TorchServe's stock vision handlers can be imported, else why not."""
    try:
        import ts.torch_handler.image_classifier  # noqa: F401
    except ImportError as e:
        return (
            f"TorchServe's stock image_classifier handler cannot be imported here ({e}); its base class "
            "ts.torch_handler.vision_handler imports captum at module level. `./install.sh --bench-tools` "
            "(the project's `bench` extra) installs it"
        )
    return None


def triton_available() -> str | None:
    """None when the Triton binary is installed, else why the comparison is skipped."""
    from serve.triton_install import TritonMissing, find_triton

    try:
        find_triton()
        return None
    except TritonMissing as e:
        return str(e)


def start_server(store: Path, models: list[str], run_dir: Path, log):
    from serve.server import ServerError, ServerSettings, free_ports, start

    port, management, metrics, grpc_inference, grpc_management = free_ports(5)
    settings = ServerSettings(
        model_store=store,
        models=models,
        run_dir=run_dir,
        host="127.0.0.1",
        port=port,
        management_port=management,
        metrics_port=metrics,
        grpc_inference_port=grpc_inference,
        grpc_management_port=grpc_management,
        startup_timeout_s=240,
        job_queue_size=1000,
    )
    try:
        began = time.perf_counter()
        info = start(settings, log=log)  # returns once every model has answered a real prediction
        return info, time.perf_counter() - began
    except ServerError as e:
        raise BenchmarkError(f"TorchServe did not start: {e}") from None


def load_level(
    info, model: str, users: int, seconds: int, images: Path, out_root: Path, protocol: str = "torchserve"
) -> dict:
    """One headless locust run through `python -m client loadtest` (`protocol` v2: Triton); its summary.json."""
    from client.loadtest import loadtest_main

    out_root.mkdir(parents=True, exist_ok=True)
    before = set(out_root.iterdir())
    argv = [
        "--host",
        info.inference_url,
        "--model",
        model,
        "--users",
        str(users),
        "--duration",
        f"{seconds}s",
        "--images",
        str(images),
        "--output-root",
        str(out_root),
        f"--token={info.key('inference')}",  # a key may start with "-"
        "--max-failure-ratio",
        "1",
        "--protocol",
        protocol,
    ]
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the final table
        code = loadtest_main(argv)
    created = sorted(set(out_root.iterdir()) - before)
    if code == 3 or not created or not (created[-1] / "summary.json").is_file():
        raise BenchmarkError(f"the load test of {model} at {users} users left no summary (exit {code}); see {out_root}")
    summary = json.loads((created[-1] / "summary.json").read_text())
    summary["run_dir"] = str(created[-1])
    summary["locust_requests_per_s"] = summary["requests_per_s"]
    summary["requests_per_s"] = steady_throughput(created[-1] / "locust_stats_history.csv", summary, seconds)
    return summary


def steady_throughput(history_csv: Path, summary: dict, seconds: int, skip_s: int = 2) -> float:
    """Completed requests per second once every user runs, from locust's once-a-second running totals
    (locust's own "Requests/s" divides by the span up to its last request, which misleads on short runs)."""
    with history_csv.open(newline="") as f:
        rows = [
            (int(r["Timestamp"]), int(r["Total Request Count"]))
            for r in csv.DictReader(f)
            if r["Name"] == "Aggregated" and int(r["User Count"]) == summary["users"]
        ]
    window = [row for row in rows if row[0] >= rows[0][0] + skip_s] if rows else []
    if len(window) >= 3 and window[-1][0] > window[0][0]:
        return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
    return summary["requests"] / seconds  # too short to have a steady window (--quick)


class CpuMeter:
    """CPU seconds spent by TorchServe's workers, its Java frontend and the load generator (locust, a
    child process of this one that has exited by the time a level ends) between `start` and `stop`."""

    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)

    def _server_seconds(self) -> dict[str, float]:
        seconds = {"workers": 0.0, "frontend": 0.0}
        for role, processes in (("frontend", [self.server]), ("workers", self.server.children(recursive=True))):
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    seconds[role] += times.user + times.system
        return seconds

    def worker_rss_mb(self) -> float:
        """Resident memory of all of TorchServe's Python workers together, MiB."""
        total = 0
        for process in self.server.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total / 2**20

    def worker_count(self) -> int:
        return len(self.server.children(recursive=True))

    def start(self) -> None:
        self.began = time.perf_counter()
        self.server_before = self._server_seconds()
        self.children_before = resource.getrusage(resource.RUSAGE_CHILDREN)

    def wait_until_idle(self, max_cores: float = 0.05, window_s: float = 0.5, timeout_s: float = 15.0) -> float:
        """Wait until TorchServe's processes use under `max_cores` over `window_s` (at most `timeout_s`);
        returns the seconds waited. Right after a level the workers may still be answering the requests
        in flight and the frontend closing connections; a raw measurement taken then would share the
        cores with them."""
        began = time.perf_counter()
        while True:
            before = sum(self._server_seconds().values())
            time.sleep(window_s)
            busy = (sum(self._server_seconds().values()) - before) / window_s
            waited = time.perf_counter() - began
            if busy < max_cores or waited >= timeout_s:
                return waited

    def stop(self) -> dict[str, float]:
        """Cores busy on average over the interval, per role."""
        server = self._server_seconds()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        elapsed = self.elapsed = time.perf_counter() - self.began
        cores = {role: (server[role] - self.server_before[role]) / elapsed for role in server}
        cores["load generator"] = (
            children.ru_utime + children.ru_stime - self.children_before.ru_utime - self.children_before.ru_stime
        ) / elapsed
        return cores


def cross_check(
    info, meter: CpuMeter, model: str, arch: str, layout: str, jpeg: Path, users: int, seconds: int, work: Path, table
) -> list[dict]:
    """locust, then ApacheBench, at `users` requests in flight on the one file `jpeg`: each one's capacity,
    latency and its own CPU (a finished child process's counters), as rows of `table` and dicts."""
    rows = []
    meter.wait_until_idle()
    meter.start()
    summary = load_level(info, model, users, seconds, jpeg.parent, work / "cross-check")
    cpu = meter.stop()
    generator_s = cpu["load generator"] * meter.elapsed
    rows.append(
        {
            "generator": "locust (python -m client loadtest)",
            "requests_per_s": summary["requests_per_s"],
            "p50_ms": summary["p50_ms"],
            "p99_ms": summary["p99_ms"],
            "failures": summary["failures"],
            "generator_cpu_cores": cpu["load generator"],
            "generator_cpu_ms_per_request": 1e3 * generator_s / summary["requests"] if summary["requests"] else None,
            "worker_cpu_cores": cpu["workers"],
            "run_dir": summary["run_dir"],
        }
    )
    meter.wait_until_idle()
    meter.start()
    ab = latency.ab_cross_check(
        info.inference_url, info.key("inference"), model, jpeg, users, seconds, work / "ab" / arch
    )
    cpu = meter.stop()
    if "missing" in ab:
        rows.append({"generator": "ApacheBench (ab -k)", "missing": ab["missing"]})
    else:
        generator_s = cpu["load generator"] * meter.elapsed
        rows.append(
            {
                "generator": "ApacheBench (ab -k)",
                **ab,
                "failures": ab["failed"],
                "generator_cpu_cores": cpu["load generator"],
                "generator_cpu_ms_per_request": 1e3 * generator_s / ab["complete"] if ab["complete"] else None,
                "worker_cpu_cores": cpu["workers"],
            }
        )
    for row in rows:
        row.update(model=arch, layout=layout, users=users)
        if "missing" in row:
            table.add(arch, layout, row["generator"], row["missing"], None, None, None, None, None, None)
            continue
        table.add(
            arch,
            layout,
            row["generator"],
            row["requests_per_s"],
            row["p50_ms"],
            row["p99_ms"],
            row["failures"],
            row["generator_cpu_cores"],
            row["generator_cpu_ms_per_request"],
            row["worker_cpu_cores"],
        )
    return rows


class RawCapacity:
    """The raw runner on the served ONNX artifact, without HTTP or decoding: at a batch size, the best
    of one runner with every usable core and one single-threaded runner per core running at once."""

    def __init__(self, export_dir: Path, photos: list[Path], max_batch: int, budget: Budget) -> None:
        cores = usable_cores()
        self.single = open_runner(export_dir, "onnx", threads=cores)
        self.per_core = [open_runner(export_dir, "onnx", threads=1) for _ in range(cores)] if cores > 1 else []
        self.images = decoded_batch(photos, self.single.preprocess, max_batch)
        self.budget = budget
        self.export_dir = export_dir
        self.by_threads: dict = {}
        self.measured: list[dict[str, float]] = []

    def cpu_ms_per_image(self, batch: int, threads: int, calls: int = 10) -> float:
        """CPU ms per image (this process's CPU counters, every thread) of a runner with a worker's
        `threads` at `batch`, over `calls` calls after one warm-up call."""
        runner = self.by_threads.setdefault(threads, open_runner(self.export_dir, "onnx", threads=threads))
        x = self.images[:batch]
        runner.predict(x)
        began = time.process_time()
        for _ in range(calls):
            runner.predict(x)
        return 1e3 * (time.process_time() - began) / (calls * batch)

    def measure(self, batch: int) -> dict[str, float]:
        """{"batch", "one runner": img/s, "one per core": img/s, "best": img/s}, measured now."""
        x = self.images[:batch]
        result = {
            "one runner": interleaved({"raw": lambda: self.single.predict(x)}, self.budget, items=batch)[
                "raw"
            ].items_per_s
        }
        if self.per_core:
            calls = [lambda runner=runner: runner.predict(x) for runner in self.per_core]
            result["one per core"] = concurrent_throughput(calls, batch, max(self.budget.seconds, 1.0))
        result["best"] = max(result.values())
        self.measured.append({"batch": batch, **result})
        return result


def session_seconds(export_dir: Path) -> dict[str, float]:
    """Seconds `open_runner` takes per artifact of the export (session or engine creation, sha256 check)."""
    seconds = {}
    for artifact in read_manifest(export_dir).artifacts:
        began = time.perf_counter()
        try:
            open_runner(export_dir, artifact.format, allow_failed=True)
        except Exception:  # a runtime missing here (TensorRT): no figure
            continue
        seconds[artifact.format] = time.perf_counter() - began
    return seconds


def decoded_batch(photos: list[Path], spec, count: int) -> torch.Tensor:
    """The photos as the handler's preprocess leaves them (float32 NCHW), repeated to `count` images."""
    from models import EncodedImageTransform

    to_input = EncodedImageTransform(spec)
    tensors = [to_input(p.read_bytes()) for p in photos]
    return torch.stack([tensors[i % len(tensors)] for i in range(count)])


def request_split(export_dir: Path, backend: str, threads: int, jpeg: bytes, repeats: int) -> dict[str, float]:
    """Median ms of each stage of one request carrying `jpeg`, through the public `Classifier` the handler
    wraps, with a worker's threads: decode + preprocess (`classifier.transform`: decode, resize, crop,
    normalise), inference (runner + softmax on one image) and top-k with labels."""
    from classify.classifier import Classifier

    classifier = Classifier.from_export(export_dir, fmt=backend, threads=threads)
    stages: dict[str, list[float]] = {"decode+preprocess": [], "inference": [], "top-k": []}
    for i in range(repeats + 2):  # the first two are warm-up
        t0 = time.perf_counter()
        x = classifier.transform(jpeg)
        t1 = time.perf_counter()
        probabilities = torch.softmax(classifier.runner.predict(x.unsqueeze(0)), dim=1)
        t2 = time.perf_counter()
        classifier.top_k_of(probabilities[0])
        t3 = time.perf_counter()
        if i >= 2:
            for stage, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2)):
                stages[stage].append(seconds)
    return {stage: 1e3 * median(seconds) for stage, seconds in stages.items()}


def stock_preprocess_ms(jpeg: bytes, repeats: int) -> float | None:
    """Median ms of the stock handler's per-image preprocessing (PIL full decode + its torchvision transforms)."""
    if stock_handler_available() is not None:
        return None
    from ts.torch_handler.image_classifier import ImageClassifier

    seconds = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        ImageClassifier.image_processing(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        if i >= 2:
            seconds.append(time.perf_counter() - start)
    return 1e3 * median(seconds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archs", nargs="+", help="architectures (default: resnet50 resnet18; --quick: resnet20)")
    parser.add_argument(
        "--users",
        type=positive_int,
        nargs="+",
        help="concurrency levels, requests in flight (default: 1 2 4 8 16; --quick: 1 2)",
    )
    parser.add_argument(
        "--duration", type=positive_int, default=15, help="seconds of load per level (default: %(default)s)"
    )
    parser.add_argument(
        "--layouts",
        type=parse_layout,
        nargs="+",
        metavar="WORKERSxBATCH",
        help="worker layouts to compare: workers x TorchServe batch size, each worker with cores // workers "
        "threads (default: 1x8 2x4: one worker with every core and batch 8, then two workers "
        "with half the cores each and batch 4; --quick: 1x2 2x1)",
    )
    parser.add_argument(
        "--max-batch-delay", type=int, default=10, help="TorchServe maxBatchDelay in ms (default: %(default)s)"
    )
    parser.add_argument("--no-stock", action="store_true", help="skip the stock image_classifier handler")
    parser.add_argument(
        "--no-triton",
        action="store_true",
        help="skip Triton beside TorchServe (same export, the first layout; skipped anyway when not installed)",
    )
    parser.add_argument(
        "--no-open-loop", action="store_true", help="skip the open-loop ladder of Poisson arrival rates"
    )
    parser.add_argument(
        "--p99-bound-ms",
        type=float,
        default=latency.P99_BOUND_MS,
        help="the open loop reports the highest rate whose p99 latency stays within this (default: %(default)g)",
    )
    parser.add_argument(
        "--load-fractions",
        type=float,
        nargs="+",
        metavar="FRACTION",
        help="open-loop arrival rates as fractions of the closed-loop capacity (default: "
        f"{' '.join(map(str, latency.LOAD_FRACTIONS))}; --quick: {' '.join(map(str, latency.QUICK_FRACTIONS))})",
    )
    parser.add_argument(
        "--cross-check-users",
        type=positive_int,
        default=4,
        help="requests in flight for the ApacheBench-vs-locust capacity cross-check (default: %(default)s)",
    )


def default_layouts(quick: bool) -> list[tuple[int, int]]:
    """One worker with every core, then two workers sharing the cores (halving the batch keeps the
    requests in flight that fill one batch the same)."""
    workers = min(2, usable_cores())
    return [(1, 2), (workers, 1)] if quick else [(1, 8), (workers, 8 // workers)]


@dataclass
class Plan:
    """What one run measures, settled from the command line before anything is served."""

    args: argparse.Namespace
    archs: list[str]
    levels: list[int]
    fractions: tuple[float, ...] | list[float]
    duration: int
    warmup_s: int
    layouts: list[Layout]
    cores: int
    budget: Budget
    repeats: int
    work: Path
    photos: list[Path]
    jpeg: bytes
    photo_size: str
    one_jpeg: Path
    stock_missing: str | None
    triton_missing: str | None

    @property
    def log(self):
        return self.args.log

    @property
    def top(self) -> int:
        return max(self.levels)

    @property
    def open_loop_seconds(self) -> int:
        return 2 if self.args.quick else self.duration


@dataclass
class Tables:
    levels: Table
    compare: Table
    split: Table
    open_loop: Table
    bounded: Table
    cross: Table
    triton: Table


@dataclass
class Bench:
    """The state every step shares: the plan, the report being written and its tables."""

    plan: Plan
    report: Report
    tables: Tables
    latency_points: list[dict] = field(default_factory=list)


@dataclass
class ServedArch:
    """One architecture while its TorchServe runs: the server, its meters and what was measured on it."""

    arch: str
    served: dict[tuple[str, str], str]  # (layout key, served-by label) -> model name
    info: object
    meter: CpuMeter
    raw: RawCapacity
    results: dict[tuple[str, str, int], dict] = field(default_factory=dict)
    cpu_over_raw: dict[tuple[str, int], float] = field(default_factory=dict)  # (layout, users) -> worker / raw CPU


def checked_layouts(args: argparse.Namespace, cores: int) -> list[Layout]:
    layouts = list(
        dict.fromkeys(Layout(w, b, args.max_batch_delay) for w, b in (args.layouts or default_layouts(args.quick)))
    )
    too_many = [layout.key for layout in layouts if layout.workers > cores]
    if too_many:
        raise BenchmarkUsageError(f"layouts {too_many} have more workers than the {cores} usable cores")
    return layouts


def make_plan(args: argparse.Namespace) -> Plan:
    archs = args.archs or (["resnet20"] if args.quick else ["resnet50", "resnet18"])
    check_archs(archs)
    levels = sorted(set(args.users or ([1, 2] if args.quick else [1, 2, 4, 8, 16])))
    fractions = args.load_fractions or (latency.QUICK_FRACTIONS if args.quick else latency.LOAD_FRACTIONS)
    if not all(0 < f <= 10 for f in fractions):
        raise BenchmarkUsageError(f"--load-fractions must lie in (0, 10], got {fractions}")
    if not args.p99_bound_ms > 0:
        raise BenchmarkUsageError(f"--p99-bound-ms must be positive, got {args.p99_bound_ms:g}")
    cores = usable_cores()
    layouts = checked_layouts(args, cores)
    if args.threads != cores:
        args.log(
            f"note: TorchServe workers use cores // workers threads each (not --threads {args.threads}); "
            "the raw runner uses every usable core"
        )
    work = Path(args.work_dir) / "serve"
    photos = write_photos(work / "photos")
    jpeg = photos[0].read_bytes()
    with Image.open(photos[0]) as probe:
        photo_size = (
            f"{probe.width}x{probe.height} ({probe.width * probe.height / 1e6:.2f} MP, {len(jpeg) / 1e3:.0f} kB)"
        )
    # ab sends one file: locust gets a folder holding only that JPEG for the cross-check
    one_jpeg = work / "photos-one" / photos[0].name
    one_jpeg.parent.mkdir(parents=True, exist_ok=True)
    one_jpeg.write_bytes(jpeg)
    return Plan(
        args=args,
        archs=archs,
        levels=levels,
        fractions=fractions,
        duration=3 if args.quick else args.duration,
        warmup_s=5,
        layouts=layouts,
        cores=cores,
        budget=Budget(warmup=1, min_rounds=2, max_rounds=3, seconds=0)
        if args.quick
        else Budget(warmup=2, min_rounds=5, seconds=5),
        repeats=3 if args.quick else 30,
        work=work,
        photos=photos,
        jpeg=jpeg,
        photo_size=photo_size,
        one_jpeg=one_jpeg,
        stock_missing="skipped (--no-stock)" if args.no_stock else stock_handler_available(),
        triton_missing="skipped (--no-triton)" if args.no_triton else triton_available(),
    )


def method_lines(plan: Plan) -> list[str]:
    cores, top = plan.cores, plan.top
    return [
        "One TorchServe 0.12 per architecture serving every layout: "
        + "; ".join(f"`{layout.key}` = {layout.label}" for layout in plan.layouts)
        + f"; maxBatchDelay {plan.args.max_batch_delay} ms. Random-init weights exported with `python -m export` "
        "(parity on random pixels).",
        f"Load: `python -m client loadtest` (locust, closed loop, users = requests in flight, {plan.duration} s per level) "
        f"on the same {cores} cores as the server, sending JPEGs of scikit-image's {', '.join(PHOTOS)} upscaled to ~1 MP "
        f"(chelsea: {plan.photo_size}). Each model first gets {plan.warmup_s} s of discarded load at {top} users; "
        "requests/s is the completion rate once all users run (locust's per-second totals, first 2 s skipped); "
        "latency percentiles are locust's over the whole level. CPU: cores busy on average during the level "
        "(TorchServe's Python workers, its Java frontend, the locust process: the load generator shares the "
        "cores with the server, so its own CPU is in every row).",
        "Raw runner: `open_runner` on the served ONNX artifact, timed on decoded images at the batch one worker "
        "forms at that level (min(ceil(users / workers), batch size)): the better of one runner with all "
        f"{cores} cores and {cores} single-threaded runners running at once, measured right after each level, "
        "once TorchServe's processes are idle (under 0.05 cores over 0.5 s; the wait and the server's CPU during the "
        "measurement are in the JSON), so that both sides of served/raw (images/s) are taken minutes apart at most.",
        "Stock: TorchServe's `image_classifier` handler (PIL full decode, torchvision Resize/CenterCrop/ToTensor/"
        f"Normalize, torch.jit.load without optimize_for_inference) on the same TorchScript file and layout, at {top} users.",
        f"Ours onnx-int8 and ours torchscript: our handler on the export's other artifacts, same layout, {top} users. The "
        "targets are judged on fp32 ONNX; int8 is there to show what a user gains by exporting it (its accuracy gate "
        "is checked on a trained model in the tests, not on these random weights).",
    ]


def make_tables(plan: Plan) -> Tables:
    levels = Table(
        "Served throughput and latency (locust)",
        [
            "model",
            "layout",
            "served by",
            "users",
            "requests/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "failures",
            "CPU cores: workers / frontend / locust",
            "locust CPU ms / request",
            "raw img/s (batch)",
            "served / raw",
            "worker CPU ms / image",
            "raw CPU ms / image (same batch)",
            "worker / raw CPU",
        ],
    )
    compare = Table(
        f"Ours vs the stock image_classifier handler ({plan.top} users)",
        [
            "model",
            "layout",
            "ours onnx req/s",
            "ours onnx-int8 req/s",
            "ours torchscript req/s",
            "stock torchscript req/s",
            "ours onnx / stock",
            "ours onnx-int8 / stock",
            "ours torchscript / stock",
        ],
    )
    split = Table(
        "Where a request's time goes (our handler in-process, one ~1 MP JPEG, batch 1)",
        [
            "model",
            "layout",
            "served by",
            "decode+preprocess ms",
            "inference ms",
            "top-k ms",
            "decode+preprocess share",
            "stock decode+preprocess ms",
            "ours / stock",
        ],
    )
    bound = plan.args.p99_bound_ms
    return Tables(
        levels=levels,
        compare=compare,
        split=split,
        open_loop=latency.open_loop_table(bound),
        bounded=latency.bounded_table(bound),
        cross=latency.cross_check_table(plan.args.cross_check_users),
        triton=triton_compare.table(),
    )


def new_report(plan: Plan) -> Report:
    report = Report(
        "serve",
        "TorchServe: our handler vs the raw runner and the stock handler",
        threads=plan.cores,
        quick=plan.args.quick,
    )
    report.method = method_lines(plan)
    report.data.update(
        levels=[],
        comparisons=[],
        splits=[],
        raw={},
        photo=plan.photo_size,
        layouts=[layout.__dict__ for layout in plan.layouts],
        open_loop=[],
        cross_check=[],
        p99_bound_ms=plan.args.p99_bound_ms,
    )
    return report


def build_archives(plan: Plan, arch: str, export_dir: Path) -> dict[tuple[str, str], str]:
    """Our handler on each backend and, when importable, the stock handler, once per layout; their names."""
    store = plan.work / "model_store" / arch
    served = {}  # (layout key, served-by label) -> model name
    for layout in plan.layouts:
        for backend in OUR_BACKENDS:
            name = f"{arch}-{layout.key}-ours-{backend}"
            our_archive(export_dir, store, name, backend, layout)
            served[(layout.key, f"ours {backend}")] = name
        if plan.stock_missing is None:
            name = f"{arch}-{layout.key}-stock"
            stock_archive(export_dir, store, name, layout, plan.work / "staging" / arch)
            served[(layout.key, "stock torchscript")] = name
    return served


def measure_splits(bench: Bench, arch: str, export_dir: Path) -> None:
    plan = bench.plan
    stock_pre = stock_preprocess_ms(plan.jpeg, plan.repeats)
    for layout in plan.layouts:
        # int8 shows where the time goes once inference is ~3x cheaper; the target is judged on fp32
        for label in ("ours onnx", "ours onnx-int8"):
            plan.log(f"{arch}: request-time split in-process, {layout.threads_per_worker} thread(s), {label}")
            split = request_split(export_dir, label.split()[-1], layout.threads_per_worker, plan.jpeg, plan.repeats)
            vs_stock = record_split(bench, arch, layout, label, split, stock_pre)
            if label == "ours onnx" and layout == plan.layouts[0]:
                bench.report.verdicts.append(
                    Verdict(
                        f"decode + preprocess <= {PRE_TARGET:g}x the stock handler's ({arch}, ~1 MP JPEG)",
                        f"{vs_stock:.2f}x" if vs_stock else plan.stock_missing or "not measured",
                        vs_stock <= PRE_TARGET if vs_stock else None,
                    )
                )


def record_split(
    bench: Bench, arch: str, layout: Layout, label: str, split: dict[str, float], stock_pre: float | None
) -> float | None:
    """One row of the request-time split; returns ours over the stock handler's decode+preprocess."""
    pre = split["decode+preprocess"]
    share = pre / sum(split.values())
    vs_stock = pre / stock_pre if stock_pre else None
    bench.tables.split.add(
        arch,
        layout.key,
        label,
        pre,
        split["inference"],
        split["top-k"],
        f"{share:.1%}",
        stock_pre,
        vs_stock and f"{vs_stock:.2f}x",
    )
    bench.report.data["splits"].append(
        {
            "model": arch,
            "layout": layout.key,
            "served_by": label,
            **split,
            "decode_preprocess_share": share,
            "stock_decode_preprocess_ms": stock_pre,
            "ours_over_stock": vs_stock,
        }
    )
    return vs_stock


def record_cold_start(report: Report, target: ServedArch, export_dir: Path, start_s: float) -> None:
    idle_rss = target.meter.worker_rss_mb()
    report.data.setdefault("cold_start", []).append(
        {
            "model": target.arch,
            "server_start_to_first_answers_s": start_s,
            "models_loaded": len(target.served),
            "session_s": session_seconds(export_dir),
        }
    )
    report.data.setdefault("memory", []).append(
        {"model": target.arch, "worker_rss_mb_idle": idle_rss, "workers": target.meter.worker_count()}
    )


def measure_served(bench: Bench, arch: str, export_dir: Path, served: dict[tuple[str, str], str]) -> ServedArch:
    """Start one TorchServe with every archive of `arch`, measure every layout and the latency under load."""
    from serve.server import stop

    plan = bench.plan
    raw = RawCapacity(
        export_dir, plan.photos, max(layout.worker_batch(plan.top) for layout in plan.layouts), plan.budget
    )
    run_dir = plan.work / "ts" / arch
    plan.log(f"{arch}: starting TorchServe with {', '.join(served.values())}")
    info, start_s = start_server(plan.work / "model_store" / arch, list(served.values()), run_dir, plan.log)
    target = ServedArch(arch, served, info, CpuMeter(info.pid), raw)
    record_cold_start(bench.report, target, export_dir, start_s)
    try:
        for model in (
            served.values() if not plan.args.quick else []
        ):  # JIT profiling runs, ORT's first batch of each size
            plan.log(f"{arch}: warming up {model}")
            load_level(info, model, plan.top, plan.warmup_s, plan.photos[0].parent, plan.work / "warmup")
        for layout in plan.layouts:
            runs = [("ours onnx", users) for users in plan.levels]
            runs += [
                (label, plan.top)
                for label in ("ours onnx-int8", "ours torchscript", "stock torchscript")
                if (layout.key, label) in served
            ]
            for label, users in runs:
                measure_level(bench, target, layout, label, users)
        measure_latency(bench, target)
    finally:
        stop(run_dir)
    bench.report.data["raw"][arch] = raw.measured
    return target


def raw_capacity_now(target: ServedArch, layout: Layout, batch: int) -> dict:
    """The raw runner's capacity at `batch`, once TorchServe is idle, with the server's CPU meanwhile."""
    meter = target.meter
    idle_wait_s = meter.wait_until_idle()
    meter.start()
    return {
        **target.raw.measure(batch),
        "idle_wait_s": idle_wait_s,
        "server_cores": meter.stop(),
        "cpu_ms_per_image": target.raw.cpu_ms_per_image(batch, layout.threads_per_worker),
    }


def measure_level(bench: Bench, target: ServedArch, layout: Layout, label: str, users: int) -> None:
    """One closed-loop level on TorchServe, then (ours onnx) the raw runner at the batch a worker forms there."""
    plan, meter = bench.plan, target.meter
    plan.log(f"{target.arch}: layout {layout.key}, {label} at {users} user(s)")
    meter.start()
    summary = load_level(
        target.info,
        target.served[(layout.key, label)],
        users,
        plan.duration,
        plan.photos[0].parent,
        plan.work / "loadtests",
    )
    cpu = meter.stop()
    summary["worker_rss_mb_after"] = meter.worker_rss_mb()
    completed = summary["requests"] - summary["failures"]
    worker_cpu_ms = 1e3 * cpu["workers"] * meter.elapsed / completed if completed else None
    generator_ms = 1e3 * cpu["load generator"] * meter.elapsed / summary["requests"] if summary["requests"] else None
    target.results[(layout.key, label, users)] = summary
    batch = layout.worker_batch(users)
    capacity = raw_capacity_now(target, layout, batch) if label == "ours onnx" else None
    ratio = summary["requests_per_s"] / capacity["best"] if capacity else None
    cpu_ratio = worker_cpu_ms / capacity["cpu_ms_per_image"] if capacity and worker_cpu_ms else None
    if cpu_ratio is not None:
        target.cpu_over_raw[(layout.key, users)] = cpu_ratio
    bench.report.data["levels"].append(
        {
            "model": target.arch,
            "layout": layout.key,
            "served_by": label,
            "users": users,
            "summary": summary,
            "cpu_cores": cpu,
            "generator": "locust (python -m client loadtest)",
            "generator_cpu_ms_per_request": generator_ms,
            "raw_batch": batch,
            "raw_images_per_s": capacity and capacity["best"],
            "raw": capacity,
            "served_over_raw": ratio,
            "worker_cpu_ms_per_image": worker_cpu_ms,
            "worker_cpu_over_raw_cpu": cpu_ratio,
        }
    )
    bench.tables.levels.add(
        target.arch,
        layout.key,
        label,
        users,
        summary["requests_per_s"],
        summary["p50_ms"],
        summary["p95_ms"],
        summary["p99_ms"],
        summary["failures"],
        " / ".join(f"{cpu[role]:.2f}" for role in ("workers", "frontend", "load generator")),
        generator_ms,
        capacity and f"{capacity['best']:.1f} ({batch})",
        ratio and f"{ratio:.2f}",
        worker_cpu_ms,
        capacity and capacity["cpu_ms_per_image"],
        cpu_ratio and f"{cpu_ratio:.2f}x",
    )


def measure_latency(bench: Bench, target: ServedArch) -> None:
    """Latency under load, where the closed loop served the most: our handler on fp32 ONNX."""
    plan = bench.plan
    capacity, best_layout, capacity_users = max(
        (target.results[(layout.key, "ours onnx", users)]["requests_per_s"], layout.key, users)
        for layout in plan.layouts
        for users in plan.levels
    )
    model = target.served[(best_layout, "ours onnx")]
    bench.report.data["cross_check"] += cross_check(
        target.info,
        target.meter,
        model,
        target.arch,
        best_layout,
        plan.one_jpeg,
        plan.args.cross_check_users,
        plan.duration,
        plan.work,
        bench.tables.cross,
    )
    if not plan.args.no_open_loop:
        ladder = OpenLoopTarget(target.arch, "TorchServe", target.info, model, best_layout, "torchserve")
        open_loop_ladder(bench, ladder, capacity, capacity_users)


@dataclass(frozen=True)
class OpenLoopTarget:
    """One served model an open-loop ladder runs against."""

    arch: str
    served_by: str  # "TorchServe" or "Triton"
    info: Any  # the server's info: inference_url, key()
    model: str
    layout: str
    protocol: str  # the client's --protocol

    @property
    def label(self) -> str:
        return self.arch if self.served_by == "TorchServe" else f"{self.arch} ({self.served_by})"


def open_loop_ladder(bench: Bench, target: OpenLoopTarget, capacity: float, capacity_users: int) -> float | None:
    """Poisson arrivals at fractions of the closed-loop `capacity`: the highest rate within the p99 bound."""
    plan = bench.plan
    rates = latency.rate_ladder(capacity, plan.fractions)
    plan.log(f"{target.label}: open loop on {target.model} at {', '.join(f'{r:g}' for r in rates)} req/s")
    summary = latency.open_loop(
        target.info.inference_url,
        target.info.key("inference"),
        target.model,
        rates,
        plan.open_loop_seconds,
        plan.photos[0].parent,
        plan.args.p99_bound_ms,
        plan.work / "openloop",
        protocol=target.protocol,
    )
    bench.latency_points += latency.add_open_loop_rows(
        bench.tables.open_loop, target.label, target.layout, capacity, summary
    )
    best_rate = summary["max_rate_under_p99_bound"]
    bench.tables.bounded.add(
        target.label,
        target.layout,
        best_rate if best_rate is not None else "none (the lowest rate missed it)",
        best_rate and f"{best_rate / capacity:.2f}",
        f"{capacity:.1f} ({capacity_users})",
    )
    bench.report.data["open_loop"].append(
        {
            "model": target.arch,
            "served_by": target.served_by,
            "layout": target.layout,
            "closed_loop_capacity_rps": capacity,
            "closed_loop_capacity_users": capacity_users,
            "fractions": list(plan.fractions),
            "max_rate_under_p99_bound": best_rate,
            "summary": summary,
        }
    )
    return best_rate


def compare_triton(bench: Bench, arch: str, export_dir: Path) -> None:
    """Triton on the same export in the first layout, against TorchServe's ours-onnx levels there."""
    plan, report = bench.plan, bench.report
    first = plan.layouts[0]
    ours = [
        lv
        for lv in report.data["levels"]
        if (lv["model"], lv["layout"], lv["served_by"]) == (arch, first.key, "ours onnx")
    ]
    triton_compare.compare(
        arch,
        export_dir,
        first,
        plan.levels,
        plan.duration,
        plan.photos[0].parent,
        plan.work,
        load_level=load_level,
        torchserve={lv["users"]: lv["summary"] for lv in ours},
        raw_cpu_ms={lv["users"]: lv["raw"] and lv["raw"]["cpu_ms_per_image"] for lv in ours},
        table=bench.tables.triton,
        report=report,
        log=plan.log,
        open_loop=None if plan.args.no_open_loop else partial(triton_ladder, bench, arch, first.key),
        torchserve_bounded_rps=next(
            (
                entry["max_rate_under_p99_bound"]
                for entry in report.data["open_loop"]
                if (entry["model"], entry["served_by"]) == (arch, "TorchServe")
            ),
            None,
        ),
    )


def triton_ladder(bench: Bench, arch: str, layout: str, info, model: str, capacity: float, users: int) -> float | None:
    """The open-loop ladder against Triton (v2), while `triton_compare.compare` serves it."""
    return open_loop_ladder(bench, OpenLoopTarget(arch, "Triton", info, model, layout, "v2"), capacity, users)


def judge_layout(bench: Bench, target: ServedArch, layout: Layout) -> None:
    """The CPU verdict of one layout and, when the stock handler ran, ours against it."""
    plan, report, arch, top = bench.plan, bench.report, target.arch, bench.plan.top
    cpu_ratio = target.cpu_over_raw.get((layout.key, top))
    report.verdicts.append(
        Verdict(
            f"worker CPU ms per served image <= {CPU_TARGET:g}x the raw runner's ({arch}, onnx, "
            f"layout {layout.key}, {top} users)",
            f"{cpu_ratio:.2f}x" if cpu_ratio else "not measured",
            cpu_ratio <= CPU_TARGET if cpu_ratio else None,
        )
    )
    if plan.stock_missing is not None:
        return
    rps = {
        f"ours {backend}": target.results[(layout.key, f"ours {backend}", top)]["requests_per_s"]
        for backend in OUR_BACKENDS
    }
    stock = target.results[(layout.key, "stock torchscript", top)]
    stock_rps = stock["requests_per_s"] if stock["failures"] < stock["requests"] else None
    times = {label: (value / stock_rps if stock_rps else None) for label, value in rps.items()}
    bench.tables.compare.add(arch, layout.key, *rps.values(), stock_rps, *[t and f"{t:.2f}x" for t in times.values()])
    report.verdicts.append(
        Verdict(
            f"ours >= {STOCK_TARGET:g}x the stock handler ({arch}, layout {layout.key}, {top} users)",
            ", ".join(f"{t:.2f}x ({label})" for label, t in times.items())
            if stock_rps
            else "the stock handler failed every request",
            times["ours onnx"] >= STOCK_TARGET if stock_rps else None,
        )
    )
    report.data["comparisons"].append({"model": arch, "layout": layout.key, **rps, "stock": stock_rps})


def judge_best_layouts(bench: Bench, target: ServedArch) -> Verdict:
    """The stock handler never limits its threads, so it suffers from more workers than ours does:
    also compare each at its own best layout."""
    layouts, top, results = bench.plan.layouts, bench.plan.top, target.results
    ours_best = max((results[(layout.key, "ours onnx", top)]["requests_per_s"], layout.key) for layout in layouts)
    stock_best = max(
        (results[(layout.key, "stock torchscript", top)]["requests_per_s"], layout.key) for layout in layouts
    )
    best_ratio = ours_best[0] / stock_best[0] if stock_best[0] else None
    return Verdict(
        f"ours >= {STOCK_TARGET:g}x the stock handler, each at its best layout ({target.arch}, {top} users)",
        f"{best_ratio:.2f}x (ours {ours_best[0]:.1f} req/s at {ours_best[1]}, stock {stock_best[0]:.1f} at {stock_best[1]})"
        if best_ratio
        else "the stock handler failed every request",
        best_ratio >= STOCK_TARGET if best_ratio else None,
    )


def judge(bench: Bench, target: ServedArch) -> None:
    plan = bench.plan
    for layout in plan.layouts:
        judge_layout(bench, target, layout)
    if plan.stock_missing is not None:
        bench.report.verdicts.append(
            Verdict(f"ours >= {STOCK_TARGET:g}x the stock handler ({target.arch})", plan.stock_missing, None)
        )
    elif len(plan.layouts) > 1:
        bench.report.verdicts.append(judge_best_layouts(bench, target))


def run_arch(bench: Bench, arch: str) -> None:
    plan = bench.plan
    export_dir = export_model(arch, plan.args.work_dir, threads=plan.cores, log=plan.log)
    served = build_archives(plan, arch, export_dir)
    measure_splits(bench, arch, export_dir)
    torch.set_num_threads(plan.cores)  # the handler set its worker's count in this process
    target = measure_served(bench, arch, export_dir, served)
    if plan.triton_missing is None:
        compare_triton(bench, arch, export_dir)
    judge(bench, target)


def startup_table(report: Report) -> Table:
    startup = Table(
        "Cold start and memory",
        [
            "model",
            "server start to every model answering s",
            "models loaded",
            "open_runner s per artifact",
            "workers (every model and layout)",
            "workers' RSS idle MiB, all / per worker",
            "workers' RSS after the top level MiB",
        ],
    )
    for cold, memory in zip(report.data.get("cold_start", []), report.data.get("memory", [])):
        after = [lv["summary"]["worker_rss_mb_after"] for lv in report.data["levels"] if lv["model"] == cold["model"]]
        startup.add(
            cold["model"],
            cold["server_start_to_first_answers_s"],
            cold["models_loaded"],
            ", ".join(f"{k} {v:.2f}" for k, v in cold["session_s"].items()),
            memory["workers"],
            f"{memory['worker_rss_mb_idle']:,.0f} / {memory['worker_rss_mb_idle'] / max(1, memory['workers']):,.0f}",
            max(after) if after else None,
        )
    return startup


def open_loop_method(plan: Plan) -> str:
    return (
        f"Open loop: {latency.OPEN_LOOP_GENERATOR}, at the layout with the highest closed-loop capacity, at "
        f"{', '.join(f'{f:g}' for f in plan.fractions)} x that capacity, {plan.open_loop_seconds} s per rate, "
        f"at most {DEFAULT_CONNECTIONS} connections (a request that finds them all busy waits, counted late). Latency runs from "
        "each request's scheduled send time, so a server that falls behind cannot hide its tail by slowing the "
        f"load down. Bound: p99 <= {plan.args.p99_bound_ms:g} ms with no errors, at that rate and every lower one "
        "(MLPerf's server scenario reports its throughput the same way)."
    )


def finish_report(bench: Bench) -> None:
    """The tables, the method lines that depend on what ran, and the notes on what did not."""
    plan, report, tables = bench.plan, bench.report, bench.tables
    startup = startup_table(report)
    report.tables += (
        [tables.levels, tables.compare, tables.split] if plan.stock_missing is None else [tables.levels, tables.split]
    )
    report.tables.append(tables.cross)
    if bench.latency_points:
        report.tables += [tables.open_loop, tables.bounded]
        report.figures["latency_vs_load.png"] = latency_vs_load(bench.latency_points, plan.args.p99_bound_ms)
        report.method.append(open_loop_method(plan))
    report.method.append(
        f"Cross-check: at {plan.args.cross_check_users} requests in flight on one JPEG (chelsea), locust and ApacheBench "
        "(`ab -k`, C, keep-alive) against the same model; generator CPU from the finished child process's counters "
        "(getrusage). ab's 'Length' failures (our JSON's length varies with the probabilities' digits) are not "
        "counted as failures."
    )
    report.tables.append(startup)
    if plan.triton_missing is None:
        report.tables.append(tables.triton)
        report.method.append(
            f"Triton: {triton_compare.__doc__.split(chr(10) + chr(10))[0].replace(chr(10), ' ')} Cold start and the "
            "backend processes' memory are in the JSON (`triton`)."
        )
    else:
        report.notes.append(f"Triton beside TorchServe not run: {plan.triton_missing}.")
    if plan.stock_missing is not None:
        report.notes.append(f"Stock handler comparison not run: {plan.stock_missing}.")


def run(args: argparse.Namespace) -> Report:
    plan = make_plan(args)
    bench = Bench(plan, new_report(plan), make_tables(plan))
    for arch in plan.archs:
        run_arch(bench, arch)
    finish_report(bench)
    return bench.report

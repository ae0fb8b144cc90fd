"""`python -m benchmarks serve`: TorchServe with our handler under locust, against the raw runner and the stock handler.

For each architecture the random-init export (`python -m export`) is packaged twice with
`python -m serve package`'s code (our handler; ONNX Runtime, the backend it picks on CPU, and the
TorchScript artifact), and once with TorchServe's stock `image_classifier` handler on the same
TorchScript file, all with the same workers, batch size and batch delay. One real TorchServe
(`serve.server.start`) serves the three; `python -m client loadtest` (headless locust, closed loop:
`users` = requests in flight) sends ~1-megapixel JPEGs of scikit-image's sample photos at rising
concurrency. Next to each load level, the raw runner (`export.runners.open_runner`, the same artifact
and threads as a worker) is timed on decoded batches of the size the server can form at that level.

The request-time split runs our handler in-process on the unpacked archive with TorchServe's
`Context`: decode (`models.imageio.decode_image`), preprocess (`eval_transform`), inference (the runner)
and postprocess (softmax, top-k, labels), on one 1-megapixel JPEG per request.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import torch
import yaml
from PIL import Image

from export.manifest import find_artifact, read_manifest
from export.runners import open_runner

from .artifacts import export_model
from .errors import BenchmarkError, check_archs, positive_int
from .report import Report, Table, Verdict, usable_cores
from .timing import Budget, interleaved
from .variants import with_onnx_session

RAW_TARGET = 0.85  # served images/s over the raw runner's at the same batch
STOCK_TARGET = 2.0  # ours over the stock image_classifier handler, same model, same load
SPLIT_TARGET = 0.10  # (decode + preprocess) / handler time, 1-megapixel JPEG
PHOTOS = ("chelsea", "coffee", "astronaut")
TUNED_HANDLER = Path(__file__).with_name("tuned_handler.py")
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ServerShape:
    workers: int
    batch_size: int
    max_batch_delay_ms: int

    @property
    def threads_per_worker(self) -> int:
        return max(1, usable_cores() // self.workers)


def write_photos(folder: Path, megapixels: float = 1.0) -> list[Path]:
    """scikit-image's sample photos, upscaled (bicubic) to about `megapixels`, saved as JPEG (quality 90)."""
    import skimage.data  # noqa: PLC0415

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


def model_config(shape: ServerShape) -> dict:
    return {"minWorkers": shape.workers, "maxWorkers": shape.workers, "batchSize": shape.batch_size,
            "maxBatchDelay": shape.max_batch_delay_ms, "responseTimeout": 120}  # fmt: skip


def our_archive(export_dir: Path, store: Path, name: str, backend: str, shape: ServerShape) -> Path:
    from serve.package import PackageOptions, package  # noqa: PLC0415

    options = PackageOptions(backend=backend, workers=shape.workers, batch_size=shape.batch_size,
                             max_batch_delay_ms=shape.max_batch_delay_ms, response_timeout_s=120)  # fmt: skip
    return package(export_dir, store, name=name, options=options)


def tuned_archive(export_dir: Path, store: Path, name: str, shape: ServerShape) -> Path:
    """Our ONNX archive with `benchmarks/tuned_handler.py` added and made the entry point (MANIFEST's
    `handler`): the same files and settings, the handler's two changes on top."""
    packaged = our_archive(export_dir, store, name, "onnx", shape)
    tmp = packaged.with_name(f".{packaged.name}.tmp")
    with zipfile.ZipFile(packaged) as source, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["handler"] = TUNED_HANDLER.name
                data = json.dumps(manifest, indent=2).encode()
            target.writestr(item, data)
        target.write(TUNED_HANDLER, TUNED_HANDLER.name)
    os.replace(tmp, packaged)
    return packaged


def stock_archive(export_dir: Path, store: Path, name: str, shape: ServerShape, staging: Path) -> Path:
    """TorchServe's own `image_classifier` handler on the export's TorchScript file (what
    `torch-model-archiver --handler image_classifier --serialized-file model.pt` makes)."""
    from model_archiver.model_archiver_config import ModelArchiverConfig  # noqa: PLC0415
    from model_archiver.model_packaging import generate_model_archive  # noqa: PLC0415

    manifest = read_manifest(export_dir)
    artifact = find_artifact(manifest, "torchscript")
    staging.mkdir(parents=True, exist_ok=True)
    # BaseHandler loads a serialized file as TorchScript only when its name ends in ".pt".
    model_file = staging / "model.pt"
    model_file.write_bytes((export_dir / artifact["file"]).read_bytes())
    labels = staging / "index_to_name.json"
    labels.write_text(json.dumps({str(i): n for i, n in enumerate(manifest["class_names"])}))
    config = staging / "model-config.yaml"
    config.write_text(yaml.safe_dump(model_config(shape)))
    generate_model_archive(
        ModelArchiverConfig(model_name=name, handler="image_classifier", version="1.0",
                            serialized_file=str(model_file), extra_files=str(labels),
                            config_file=str(config), export_path=str(store), force=True)  # fmt: skip
    )
    return store / f"{name}.mar"


def stock_handler_available() -> str | None:
    """None when TorchServe's stock vision handlers can be imported, else why not."""
    try:
        import ts.torch_handler.image_classifier  # noqa: F401, PLC0415
    except ImportError as e:
        return (
            f"TorchServe's stock image_classifier handler cannot be imported here ({e}); its base class "
            "ts.torch_handler.vision_handler imports captum at module level. `pip install captum` "
            "(the project's `bench` extra) to run this comparison"
        )
    return None


def start_server(store: Path, models: list[str], run_dir: Path, log):
    from serve.server import ServerError, ServerSettings, free_ports, start  # noqa: PLC0415

    port, management, metrics, grpc_inference, grpc_management = free_ports(5)
    settings = ServerSettings(model_store=store, models=models, run_dir=run_dir, host="127.0.0.1", port=port,
                              management_port=management, metrics_port=metrics, grpc_inference_port=grpc_inference,
                              grpc_management_port=grpc_management, startup_timeout_s=240, job_queue_size=1000)  # fmt: skip
    # Workers import our packages from this checkout whatever the editable install points at.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    try:
        return start(settings, log=log)
    except ServerError as e:
        raise BenchmarkError(f"TorchServe did not start: {e}") from None


def load_level(info, model: str, users: int, seconds: int, images: Path, out_root: Path) -> dict:
    """One headless locust run through `python -m client loadtest`; its summary.json."""
    from client.loadtest import loadtest_main  # noqa: PLC0415

    out_root.mkdir(parents=True, exist_ok=True)
    before = set(out_root.iterdir())
    argv = ["--host", info.inference_url, "--model", model, "--users", str(users), "--duration", f"{seconds}s",
            "--images", str(images), "--output-root", str(out_root), f"--token={info.key('inference')}",  # a key may start with "-"
            "--max-failure-ratio", "1"]  # fmt: skip
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
        rows = [(int(r["Timestamp"]), int(r["Total Request Count"])) for r in csv.DictReader(f)
                if r["Name"] == "Aggregated" and int(r["User Count"]) == summary["users"]]  # fmt: skip
    window = [row for row in rows if row[0] >= rows[0][0] + skip_s] if rows else []
    if len(window) >= 3 and window[-1][0] > window[0][0]:
        return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
    return summary["requests"] / seconds  # too short to have a steady window (--quick)


def raw_throughput(runner, batch_images: torch.Tensor, batch: int, budget: Budget) -> float:
    x = batch_images[:batch]
    return interleaved({"raw": lambda: runner.predict(x)}, budget, items=batch)["raw"].items_per_s


def decoded_batch(photos: list[Path], spec, count: int) -> torch.Tensor:
    """The photos as the handler's preprocess leaves them (float32 NCHW), repeated to `count` images."""
    from models import EncodedImageTransform  # noqa: PLC0415

    to_input = EncodedImageTransform(spec)
    tensors = [to_input(p.read_bytes()) for p in photos]
    return torch.stack([tensors[i % len(tensors)] for i in range(count)])


def in_process_handler(mar: Path, unpack_dir: Path):
    """Our handler initialised on the unpacked archive with TorchServe's own `Context`, as a worker does."""
    import ts  # noqa: PLC0415
    from ts.context import Context  # noqa: PLC0415

    from serve.handler import ImageClassifierHandler  # noqa: PLC0415

    zipfile.ZipFile(mar).extractall(unpack_dir)
    manifest = json.loads((unpack_dir / "MAR-INF" / "MANIFEST.json").read_text())
    config = yaml.safe_load((unpack_dir / "model-config.yaml").read_text())
    context = Context(mar.stem, str(unpack_dir), manifest, config["batchSize"], None, ts.__version__, model_yaml_config=config)
    handler = ImageClassifierHandler()
    handler.initialize(context)
    return handler


SPLIT_SETTINGS = {
    "as packaged": "the handler as `python -m serve package` ships it",
    "tuned": "ONNX Runtime's intra-op spin-waiting off, decode + preprocess with 1 PyTorch thread",
}


def request_split(mar: Path, unpack_dir: Path, jpeg: bytes, repeats: int) -> dict[str, dict[str, float]]:
    """Median ms of each stage of our handler for one request carrying `jpeg`, in-process, per setting of
    SPLIT_SETTINGS; the settings take turns request by request so load from elsewhere hits both alike."""
    handlers = {name: in_process_handler(mar, unpack_dir) for name in SPLIT_SETTINGS}
    threads = torch.get_num_threads()  # what initialize() set for the worker
    tuned = handlers["tuned"]
    with_onnx_session(tuned.runner, unpack_dir / tuned.runner.artifact["file"], spinning=False)
    stages = {name: {"decode": [], "preprocess": [], "inference": [], "postprocess": []} for name in handlers}
    for i in range(repeats + 2):  # the first two are warm-up
        for name, handler in handlers.items():
            torch.set_num_threads(1 if name == "tuned" else threads)
            t0 = time.perf_counter()
            image = handler.to_input.decode(jpeg)
            t1 = time.perf_counter()
            tensor = handler.to_input.transform(image)
            t2 = time.perf_counter()
            torch.set_num_threads(threads)
            inferred = handler.inference(([[tensor]], [None]))
            t3 = time.perf_counter()
            handler.postprocess(inferred)
            t4 = time.perf_counter()
            if i >= 2:
                for stage, seconds in zip(stages[name], (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    stages[name][stage].append(seconds)
    return {name: {stage: 1e3 * median(v) for stage, v in per_stage.items()} for name, per_stage in stages.items()}


def stock_preprocess_ms(jpeg: bytes, repeats: int) -> float | None:
    """Median ms of the stock handler's per-image preprocessing (PIL full decode + its torchvision transforms)."""
    if stock_handler_available() is not None:
        return None
    from ts.torch_handler.image_classifier import ImageClassifier  # noqa: PLC0415

    seconds = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        ImageClassifier.image_processing(Image.open(io.BytesIO(jpeg)))
        if i >= 2:
            seconds.append(time.perf_counter() - start)
    return 1e3 * median(seconds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archs", nargs="+", help="architectures (default: resnet50 resnet18; --quick: resnet20)")
    parser.add_argument("--users", type=positive_int, nargs="+",
                        help="concurrency levels, requests in flight (default: 1 4 8; --quick: 1 2)")
    parser.add_argument("--duration", type=positive_int, default=15, help="seconds of load per level (default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="TorchServe workers per model; each gets cores // workers threads (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="TorchServe dynamic batch size (default: %(default)s)")
    parser.add_argument("--max-batch-delay", type=int, default=10, help="TorchServe maxBatchDelay in ms (default: %(default)s)")
    parser.add_argument("--no-stock", action="store_true", help="skip the stock image_classifier handler")  # fmt: skip


def run(args: argparse.Namespace) -> Report:
    log = args.log
    archs = args.archs or (["resnet20"] if args.quick else ["resnet50", "resnet18"])
    check_archs(archs)
    levels = sorted(args.users or ([1, 2] if args.quick else [1, 4, 8]))
    duration = 3 if args.quick else args.duration
    warmup_s = 5
    shape = ServerShape(args.workers, args.batch_size, args.max_batch_delay)
    threads = shape.threads_per_worker  # what the handler gives each worker; --threads does not reach it
    if args.threads != threads:
        log(f"note: TorchServe workers use cores // workers = {threads} thread(s) each (not --threads {args.threads}); "
            "the raw runner uses all usable cores")
    budget = Budget(warmup=1, min_rounds=2, max_rounds=3, seconds=0) if args.quick else Budget(warmup=2, min_rounds=5, seconds=5)
    repeats = 3 if args.quick else 30
    work = Path(args.work_dir) / "serve"
    photos = write_photos(work / "photos")
    jpeg = photos[0].read_bytes()
    with Image.open(photos[0]) as probe:
        photo_size = f"{probe.width}x{probe.height} ({probe.width * probe.height / 1e6:.2f} MP, {len(jpeg) / 1e3:.0f} kB)"
    stock_missing = "skipped (--no-stock)" if args.no_stock else stock_handler_available()

    report = Report("serve", "TorchServe: our handler vs the raw runner and the stock handler", threads=threads, quick=args.quick)
    report.method = [
        f"One TorchServe 0.12 per architecture; every model: {shape.workers} worker(s) x {threads} thread(s), "
        f"batchSize {shape.batch_size}, maxBatchDelay {shape.max_batch_delay_ms} ms. Random-init weights exported "
        "with `python -m export` (parity on random pixels).",
        f"Load: `python -m client loadtest` (locust, closed loop, users = requests in flight, {duration} s per level) "
        f"on the same 2 cores as the server, sending JPEGs of scikit-image's {', '.join(PHOTOS)} upscaled to ~1 MP "
        f"(chelsea: {photo_size}). Each model first gets {warmup_s} s of discarded load at the highest level; "
        "requests/s is the completion rate once all users run (locust's per-second totals, first 2 s skipped); "
        "latency percentiles are locust's over the whole level.",
        "Raw runner: `open_runner` on the served ONNX artifact with all usable cores as threads (the machine's "
        "inference capacity), timed on decoded images in batches of min(users, batchSize) right after each level; "
        "served/raw compares images/s.",
        "Stock: TorchServe's `image_classifier` handler (PIL full decode, torchvision Resize/CenterCrop/ToTensor/"
        "Normalize, torch.jit.load without optimize_for_inference) on the same TorchScript file, same worker "
        "settings, at the highest concurrency level.",
        "Ours tuned: `benchmarks/tuned_handler.py`, our handler with two changes (" + SPLIT_SETTINGS["tuned"] + "), "
        "same archive otherwise. Request split, the same two: "
        + "; ".join(f"{name}: {what}" for name, what in SPLIT_SETTINGS.items()) + ".",
    ]
    levels_table = Table("Served throughput and latency (locust)", ["model", "served by", "users", "requests/s", "p50 ms",
                         "p95 ms", "p99 ms", "failures", "raw runner img/s (batch)", "served / raw"])  # fmt: skip
    compare_table = Table(f"Ours vs the stock image_classifier handler ({max(levels)} users)",
                          ["model", "ours onnx req/s", "ours tuned onnx req/s", "ours torchscript req/s",
                           "stock torchscript req/s", "ours onnx / stock", "ours tuned / stock",
                           "ours torchscript / stock"])  # fmt: skip
    split_table = Table("Where a request's time goes (our handler in-process, one ~1 MP JPEG, batch 1)",
                        ["model", "handler", "decode ms", "preprocess ms", "inference ms", "postprocess ms",
                         "decode+preprocess share", "end-to-end p50 ms (1 user)", "stock decode+preprocess ms"])  # fmt: skip
    report.data.update(levels=[], comparisons=[], splits=[], photo=photo_size, shape=shape.__dict__)

    from serve.server import stop  # noqa: PLC0415

    for arch in archs:
        export_dir = export_model(arch, args.work_dir, threads=usable_cores(), log=log)
        store = work / "model_store" / arch
        ours = {"onnx": our_archive(export_dir, store, f"{arch}-ours-onnx", "onnx", shape),
                "torchscript": our_archive(export_dir, store, f"{arch}-ours-torchscript", "torchscript", shape),
                "tuned": tuned_archive(export_dir, store, f"{arch}-ours-tuned", shape)}  # fmt: skip
        models = [m.stem for m in ours.values()]
        if stock_missing is None:
            models.append(stock_archive(export_dir, store, f"{arch}-stock", shape, work / "staging" / arch).stem)

        log(f"{arch}: request-time split in-process")
        splits = request_split(ours["onnx"], work / "unpacked" / arch, jpeg, repeats)
        stock_pre = stock_preprocess_ms(jpeg, repeats)

        runner = open_runner(export_dir, "onnx", threads=usable_cores())
        decoded = decoded_batch(photos, runner.preprocess, max(min(max(levels), shape.batch_size), 1))
        run_dir = work / "ts" / arch
        log(f"{arch}: starting TorchServe with {', '.join(models)}")
        info = start_server(store, models, run_dir, log)
        results: dict[tuple[str, int], dict] = {}
        served_over_raw: dict[int, float] = {}
        raw_at: dict[int, float] = {}
        try:
            for model in models if not args.quick else []:  # JIT profiling runs, ORT's first batch of each size
                log(f"{arch}: warming up {model}")
                load_level(info, model, max(levels), warmup_s, photos[0].parent, work / "warmup")
            for users in levels:
                log(f"{arch}: ours (onnx) at {users} user(s)")
                summary = load_level(info, f"{arch}-ours-onnx", users, duration, photos[0].parent, work / "loadtests")
                batch = min(users, shape.batch_size)
                raw = raw_throughput(runner, decoded, batch, budget)
                results[("ours onnx", users)] = summary
                raw_at[users] = raw
                ratio = served_over_raw[users] = summary["requests_per_s"] / raw
                report.data["levels"].append({"model": arch, "served_by": "ours onnx", "users": users, "summary": summary,
                                              "raw_images_per_s": raw, "raw_batch": batch, "served_over_raw": ratio})  # fmt: skip
                levels_table.add(arch, "ours (onnx)", users, summary["requests_per_s"], summary["p50_ms"], summary["p95_ms"],
                                 summary["p99_ms"], summary["failures"], f"{raw:.1f} ({batch})", f"{ratio:.2f}")  # fmt: skip
            top = max(levels)
            others = [("ours tuned (onnx)", f"{arch}-ours-tuned"), ("ours torchscript", f"{arch}-ours-torchscript")]
            if stock_missing is None:
                others.append(("stock torchscript", f"{arch}-stock"))
            for label, model in others:
                log(f"{arch}: {label} at {top} user(s)")
                summary = load_level(info, model, top, duration, photos[0].parent, work / "loadtests")
                results[(label, top)] = summary
                # The tuned handler serves the same ONNX artifact: the same raw runner applies.
                raw = raw_at[top] if "onnx" in label else None
                ratio = summary["requests_per_s"] / raw if raw else None
                report.data["levels"].append({"model": arch, "served_by": label, "users": top, "summary": summary,
                                              "raw_images_per_s": raw, "served_over_raw": ratio})  # fmt: skip
                levels_table.add(arch, label, top, summary["requests_per_s"], summary["p50_ms"], summary["p95_ms"],
                                 summary["p99_ms"], summary["failures"], None if raw is None else f"{raw:.1f} ({min(top, shape.batch_size)})",
                                 None if ratio is None else f"{ratio:.2f}")  # fmt: skip
        finally:
            stop(run_dir)

        top = max(levels)
        top_ratio = served_over_raw[top]
        report.verdicts.append(Verdict(f"served >= {RAW_TARGET:.0%} of the raw runner ({arch}, onnx, {top} users)",
                                       f"{top_ratio:.0%}", top_ratio >= RAW_TARGET))  # fmt: skip
        tuned_ratio = results[("ours tuned (onnx)", top)]["requests_per_s"] / raw_at[top]
        report.verdicts.append(Verdict(f"served >= {RAW_TARGET:.0%} of the raw runner ({arch}, onnx, {top} users, tuned handler)",
                                       f"{tuned_ratio:.0%}", tuned_ratio >= RAW_TARGET))  # fmt: skip
        rps = {label: results[(label, top)]["requests_per_s"] for label in ("ours onnx", "ours tuned (onnx)", "ours torchscript")}
        if stock_missing is None:
            stock = results[("stock torchscript", top)]
            stock_rps = stock["requests_per_s"] if stock["failures"] < stock["requests"] else None
            times = {label: (value / stock_rps if stock_rps else None) for label, value in rps.items()}
            compare_table.add(arch, *rps.values(), stock_rps, *[None if t is None else f"{t:.2f}x" for t in times.values()])
            report.verdicts.append(Verdict(
                f"ours >= {STOCK_TARGET:g}x the stock handler ({arch}, {top} users)",
                ", ".join(f"{t:.2f}x ({label})" for label, t in times.items()) if stock_rps
                else "the stock handler failed every request",
                times["ours onnx"] >= STOCK_TARGET if stock_rps else None,
            ))  # fmt: skip
            report.data["comparisons"].append({"model": arch, **rps, "stock": stock_rps})
        else:
            report.verdicts.append(Verdict(f"ours >= {STOCK_TARGET:g}x the stock handler ({arch})", stock_missing, None))
        e2e = results[("ours onnx", min(levels))]["p50_ms"] if min(levels) == 1 else None
        for setting, split in splits.items():
            handler_ms = sum(split.values())
            share = (split["decode"] + split["preprocess"]) / handler_ms
            split_table.add(arch, setting, split["decode"], split["preprocess"], split["inference"], split["postprocess"],
                            f"{share:.1%}", e2e if setting == "as packaged" else None, stock_pre)  # fmt: skip
            report.data["splits"].append({"model": arch, "setting": setting, **split, "handler_ms": handler_ms,
                                          "decode_preprocess_share": share, "end_to_end_p50_ms": e2e,
                                          "stock_decode_preprocess_ms": stock_pre})  # fmt: skip
            report.verdicts.append(Verdict(f"decode + preprocess <= {SPLIT_TARGET:.0%} of handler time ({arch}, ~1 MP JPEG, "
                                           f"{setting})", f"{share:.1%}", share <= SPLIT_TARGET))  # fmt: skip

    report.tables += [levels_table, compare_table, split_table] if stock_missing is None else [levels_table, split_table]
    if stock_missing is not None:
        report.notes.append(f"Stock handler comparison not run: {stock_missing}.")
    return report

"""`python -m client soak`: minutes of mixed traffic against a local TorchServe (or Triton, `--protocol v2`),
about a tenth of it hostile, and a pass/fail verdict on what a long run must not do.

    python -m client soak --run-dir .serve --duration 10m --threads 4
    python -m client soak --run-dir .triton --protocol v2 --duration 10m   # serve start --server triton

It reads the server's ports and keys from its run directory (`python -m serve start --run-dir`), so the
traffic only ever goes to that server on 127.0.0.1. Each thread sends valid photos and, with probability
--hostile, one of the inputs that once hurt the server (over v2 the same images as rows of an inference
request, the flood refused with 400 like any bad request, no `form`, and `json` a v2 request whose image is
a URL string):

  flood          a multipart POST of 1,000 parts, each a 1x1 PNG          -> 413 (images per request)
  png_bomb       a tiny PNG whose header claims 20000x20000 pixels        -> 400 (refused from the header)
  png_16bit      a 16-bit grayscale PNG of 3000x3000                      -> 200 (decoded without wide copies)
  junk           random bytes                                             -> 400
  empty          zero bytes                                               -> 400
  truncated      the first half of a JPEG                                 -> 400
  form           a JPEG sent as application/x-www-form-urlencoded (curl -d) -> the frontend's 4xx/500 form error
  json           a JSON body                                              -> 400

It fails (exit 1) on any of: a valid request that failed or got a different answer than its first one;
a hostile request answered otherwise than above; a worker restart (a worker pid that changed); worker
memory (RSS, summed over the model's workers) that grew more than --max-rss-growth between the end of
the warm-up (--warmup, and every case sent once, which the first thread does first) and the end of the run
(Triton's workers are its backend stubs). Exit 2: bad arguments, no server in --run-dir, or a --protocol
that server does not speak.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests
from PIL import Image
from urllib3 import encode_multipart_formdata

from classify.response import V2_INPUT

from .images import read_image
from .loadtest import parse_duration
from .remote import FORM_DECODER_TYPE, error_body, is_busy, parse_predictions
from .v2 import Predictions, add_protocol, http_request, parse_http_response, prediction_client

SHED_RETRIES = 5
PROBABILITY_TOLERANCE = 1e-3  # the same image through a different batch composition
RSS_SAMPLE_S = 2.0
OCTET = "application/octet-stream"


@dataclass(frozen=True)
class Case:
    """One kind of request: its body, content type (and other headers) and the HTTP statuses that are a
    correct answer."""

    name: str
    body: bytes
    content_type: str
    expected: tuple[int, ...]
    valid: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def image_case(name: str, images: list[bytes], expected: tuple[int, ...], protocol: str, valid: bool = False) -> Case:
    """A request of `images` as `protocol` sends them: TorchServe's raw body (one image) or multipart (several),
    or the rows of one v2 inference request."""
    if protocol == "v2":
        body, headers = http_request(images)
        content_type = headers.pop("Content-Type")
        return Case(name, body, content_type, expected, valid, headers)
    if len(images) == 1:
        return Case(name, images[0], OCTET, expected, valid)
    body, content_type = encode_multipart_formdata(
        {f"img{i}": (f"{i}.png", im, "image/png") for i, im in enumerate(images)}
    )
    return Case(name, body, content_type, expected, valid)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A photo-sized JPEG of smooth random colour fields (varied enough for distinct predictions)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return encode(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC), "JPEG", quality=90)


def png_claiming_size(width: int, height: int) -> bytes:
    """A well-formed PNG header claiming `width` x `height` RGB pixels over a tiny IDAT: a bomb's shape."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def valid_cases(images: list[Path] | None = None, protocol: str = "torchserve") -> list[Case]:
    bodies = [read_image(p) for p in images] if images else [photo(seed) for seed in range(4)]
    return [image_case(f"valid{i}", [body], (200,), protocol, valid=True) for i, body in enumerate(bodies)]


def hostile_cases(protocol: str = "torchserve") -> list[Case]:
    tiny = encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG")
    jpeg = photo(99)
    gray16 = np.linspace(0, 65535, 3000 * 3000, dtype=np.uint16).reshape(3000, 3000)
    junk = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    v2 = protocol == "v2"
    cases = [
        # v2: past Triton's max batch size (or our image bound), an INVALID_ARG like any bad request.
        image_case("flood", [tiny] * 1000, (400,) if v2 else (413,), protocol),
        image_case("png_bomb", [png_claiming_size(20000, 20000)], (400,), protocol),
        image_case("png_16bit", [encode(Image.fromarray(gray16), "PNG")], (200,), protocol),
        image_case("junk", [junk], (400,), protocol),
        image_case("empty", [b""], (400,), protocol),
        image_case("truncated", [jpeg[: len(jpeg) // 2]], (400,), protocol),
    ]
    if v2:
        url = {"name": V2_INPUT, "shape": [1, 1], "datatype": "BYTES", "data": ["http://example.com/cat.jpg"]}
        return [*cases, Case("json", json.dumps({"inputs": [url]}).encode(), "application/json", (400,))]
    return [
        *cases,
        # TorchServe's frontend parses it as an HTML form: 500 ErrorDataDecoderException (checked by type).
        Case("form", jpeg, "application/x-www-form-urlencoded", (400, 500)),
        Case("json", json.dumps({"image": "http://example.com/cat.jpg"}).encode(), "application/json", (400,)),
    ]


@dataclass
class Report:
    duration_s: float = 0.0
    requests: Counter = field(default_factory=Counter)  # per case name
    valid_failures: list[str] = field(default_factory=list)
    hostile_unexpected: list[str] = field(default_factory=list)
    worker_pids_start: list[int] = field(default_factory=list)
    worker_pids_seen: list[int] = field(default_factory=list)
    rss_after_warmup_mb: float | None = None
    rss_end_mb: float | None = None
    rss_max_mb: float | None = None
    max_rss_growth: float = 0.10
    latency_s: dict = field(default_factory=dict)  # per case: max seconds

    @property
    def worker_restarts(self) -> int:
        return len(set(self.worker_pids_seen) - set(self.worker_pids_start))

    @property
    def rss_growth(self) -> float | None:
        if not self.rss_after_warmup_mb or self.rss_end_mb is None:
            return None
        return self.rss_end_mb / self.rss_after_warmup_mb - 1

    def problems(self) -> list[str]:
        found = []
        if self.valid_failures:
            found.append(f"{len(self.valid_failures)} valid request(s) failed, e.g. {self.valid_failures[0]}")
        if self.hostile_unexpected:
            found.append(
                f"{len(self.hostile_unexpected)} hostile request(s) answered unexpectedly, "
                f"e.g. {self.hostile_unexpected[0]}"
            )
        if self.worker_restarts:
            found.append(
                f"{self.worker_restarts} worker restart(s): pids {self.worker_pids_start} at the start, "
                f"{sorted(set(self.worker_pids_seen))} seen"
            )
        growth = self.rss_growth
        if growth is None:
            found.append("worker memory was not measured (no sample after the warm-up: make --duration longer)")
        elif growth > self.max_rss_growth:
            found.append(
                f"worker RSS grew {growth:.1%} after the warm-up ({self.rss_after_warmup_mb:.0f} -> "
                f"{self.rss_end_mb:.0f} MB), above {self.max_rss_growth:.0%}"
            )
        return found

    def to_dict(self) -> dict:
        d = asdict(self)
        d |= {
            "requests": dict(self.requests),
            "worker_restarts": self.worker_restarts,
            "rss_growth": self.rss_growth,
            "problems": self.problems(),
            "passed": not self.problems(),
        }
        d["valid_failures"], d["hostile_unexpected"] = d["valid_failures"][:20], d["hostile_unexpected"][:20]
        return d


class Soak:
    """`server` (its inference_url, models and headers) is a run directory's state; `status` returns
    `python -m serve status --json`'s report, whose per-model pids are the workers watched for restarts
    and memory."""

    def __init__(
        self,
        server,
        model: str,
        *,
        protocol: str,
        status: Callable[[], dict | None],
        valid: list[Case],
        hostile: list[Case],
        hostile_fraction: float,
        timeout_s: float,
        seed: int,
    ) -> None:
        self.server, self.model, self.protocol, self.status = server, model, protocol, status
        self.endpoint = prediction_client(protocol, server.inference_url, model).endpoint
        self.valid, self.hostile, self.hostile_fraction = valid, hostile, hostile_fraction
        self.timeout_s, self.seed = timeout_s, seed
        self.first_answers: dict[str, list[tuple[str, float]]] = {}
        self.lock = threading.Lock()
        self.primed = threading.Event()  # every case sent once (the warm-up ends after it)
        self.report = Report()

    def worker_pids(self) -> list[int]:
        report = self.status() or {"state": "gone"}
        model = report.get("models", {}).get(self.model, {})
        if report["state"] != "running" or "pids" not in model:
            raise WorkersUnknown(f"server {report['state']}, model {self.model}: {model.get('error', 'no workers')}")
        return model["pids"]

    def send(self, session: requests.Session, case: Case) -> None:
        headers = {"Content-Type": case.content_type, **case.headers, **self.server.headers("inference")}
        started = time.perf_counter()
        try:
            for attempt in range(SHED_RETRIES + 1):  # a valid request shed under load (503) goes again
                response = session.post(self.endpoint, data=case.body, headers=headers, timeout=self.timeout_s)
                if not (case.valid and is_busy(response)) or attempt == SHED_RETRIES:
                    break
                time.sleep(1.0)
            outcome = self.judge(case, response)
        except requests.RequestException as e:
            outcome = f"{case.name}: {type(e).__name__}: {str(e)[:200]}"
        elapsed = time.perf_counter() - started
        with self.lock:
            self.report.requests[case.name] += 1
            self.report.latency_s[case.name] = round(max(self.report.latency_s.get(case.name, 0.0), elapsed), 3)
            if outcome is not None:
                (self.report.valid_failures if case.valid else self.report.hostile_unexpected).append(outcome)

    def judge(self, case: Case, response: requests.Response) -> str | None:
        """None when the answer is right; else what was wrong."""
        status = response.status_code
        if status not in case.expected:
            return f"{case.name}: HTTP {status} {error_body(response)[1][:200]} (expected {case.expected})"
        if case.name == "form" and status == 500 and error_body(response)[0] != FORM_DECODER_TYPE:
            return f"form: HTTP 500 that is not the frontend's form error: {response.text[:200]}"
        if status != 200 or not case.valid:
            return None
        try:
            answer = self.parse(response)
        except Exception as e:
            return f"{case.name}: {e}"
        with self.lock:
            first = self.first_answers.setdefault(case.name, answer)
        return None if same_answer(first, answer) else f"{case.name}: answer changed from {first[:2]} to {answer[:2]}"

    def parse(self, response: requests.Response) -> Predictions:
        if self.protocol == "v2":
            return parse_http_response(response.status_code, response.content)[0]
        return parse_predictions(response)

    def client_thread(self, index: int, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        with requests.Session() as session:
            if index == 0:
                # Every kind of request once first, so that the warm-up has seen each one's allocations
                # (a rare case's first large decode would otherwise read as growth after it).
                for case in [*self.valid, *self.hostile]:
                    if time.monotonic() < deadline:
                        self.send(session, case)
                self.primed.set()
            while time.monotonic() < deadline:
                hostile = rng.random() < self.hostile_fraction
                self.send(session, rng.choice(self.hostile if hostile else self.valid))

    def rss_mb(self, pids: list[int]) -> float | None:
        total = 0
        for pid in pids:
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                return None
        return total / 2**20

    def run(self, duration_s: float, warmup_s: float, threads: int, log=print) -> Report:
        report = self.report
        report.worker_pids_start = self.worker_pids()
        seen = set(report.worker_pids_start)
        started = time.monotonic()
        deadline = started + duration_s
        pool = [threading.Thread(target=self.client_thread, args=(i, deadline), daemon=True) for i in range(threads)]
        for thread in pool:
            thread.start()
        next_log = started + 30
        while any(t.is_alive() for t in pool):
            time.sleep(RSS_SAMPLE_S)
            try:
                pids = self.worker_pids()
            except WorkersUnknown as e:
                report.valid_failures.append(f"worker status: {str(e)[:200]}")
                continue
            seen |= set(pids)
            rss = self.rss_mb(pids)
            now = time.monotonic()
            if rss is not None:
                report.rss_max_mb = max(report.rss_max_mb or 0.0, rss)
                if now - started >= warmup_s and self.primed.is_set() and report.rss_after_warmup_mb is None:
                    report.rss_after_warmup_mb = round(rss, 1)
                if now < deadline:
                    report.rss_end_mb = round(rss, 1)
            if now >= next_log:
                log(
                    f"  {now - started:.0f} s: {sum(report.requests.values())} requests, "
                    f"{len(report.valid_failures)} valid failures, workers {pids}, RSS {rss or 0:.0f} MB"
                )
                next_log = now + 30
        for thread in pool:
            thread.join()
        report.worker_pids_seen = sorted(seen)
        report.duration_s = round(time.monotonic() - started, 1)
        return report


class WorkersUnknown(RuntimeError):
    """The server's status names no workers for the model (it died, or its management API failed)."""


def same_answer(first: list[tuple[str, float]], answer: list[tuple[str, float]]) -> bool:
    """The same top-k within `PROBABILITY_TOLERANCE`: the probabilities, highest first, and every label in
    both; near-ties may swap places or labels at the k-th place (an untrained model's are all near-ties)."""
    if len(first) != len(answer):
        return False
    if not all(math.isclose(p, q, abs_tol=PROBABILITY_TOLERANCE) for (_, p), (_, q) in zip(first, answer)):
        return False
    before = dict(first)
    return all(math.isclose(before[label], p, abs_tol=PROBABILITY_TOLERANCE) for label, p in answer if label in before)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(".serve"),
        help="the server's run directory (python -m serve start --run-dir; default: %(default)s)",
    )
    parser.add_argument("--model", help="model to soak (default: the server's only model)")
    add_protocol(parser)
    parser.add_argument(
        "--duration", type=parse_duration, default=parse_duration("5m"), help="how long, e.g. 90s, 10m (default: 5m)"
    )
    parser.add_argument(
        "--warmup",
        type=parse_duration,
        default=None,
        help="memory growth is measured from this point on (default: a fifth of --duration)",
    )
    parser.add_argument(
        "--threads", type=int, default=4, help="client threads, each one request at a time (default: %(default)s)"
    )
    parser.add_argument(
        "--hostile", type=float, default=0.10, help="fraction of hostile requests (default: %(default)s)"
    )
    parser.add_argument(
        "--max-rss-growth",
        type=float,
        default=0.10,
        help="most growth of the workers' RSS after the warm-up, as a fraction (default: %(default)s)",
    )
    parser.add_argument(
        "--images", type=Path, nargs="+", help="valid images to send (default: four generated photo-sized JPEGs)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON here")
    return parser


def soak_main(argv: list[str], recorded: Callable[[Path], Any]) -> int:
    """`recorded(run_dir)` is `serve.servers.recorded` (the record of the server a run directory holds, with
    its read_state, status and protocol, or None), handed in by the front door so that this library module
    does not import `serve`, a package beside it."""
    args = build_parser().parse_args(argv)

    if args.threads < 1 or not 0 <= args.hostile <= 1:
        print("error: --threads must be at least 1 and --hostile within 0..1", file=sys.stderr)
        return 2
    run_dir = args.run_dir.resolve()
    kind = recorded(run_dir)
    server = kind.read_state(run_dir) if kind is not None else None
    if server is None:
        print(
            f"error: no TorchServe running from {args.run_dir} (nor Triton); start one with python -m serve start "
            f"--run-dir {args.run_dir}",
            file=sys.stderr,
        )
        return 2
    if kind.protocol != args.protocol:
        print(f"error: {kind.title} runs from {args.run_dir}: soak it with --protocol {kind.protocol}", file=sys.stderr)
        return 2
    if args.model is None and len(server.models) != 1:
        print(f"error: the server has models {server.models}: choose one with --model", file=sys.stderr)
        return 2
    model = args.model or server.models[0]
    warmup = args.warmup if args.warmup is not None else args.duration / 5
    soak = Soak(
        server,
        model,
        protocol=args.protocol,
        status=lambda: kind.status(run_dir),
        valid=valid_cases(args.images, args.protocol),
        hostile=hostile_cases(args.protocol),
        hostile_fraction=args.hostile,
        timeout_s=args.timeout,
        seed=args.seed,
    )
    soak.report.max_rss_growth = args.max_rss_growth
    print(
        f"soaking {model} at {server.inference_url} for {args.duration} s with {args.threads} thread(s), "
        f"{args.hostile:.0%} hostile; memory measured after {warmup:.0f} s",
        flush=True,
    )
    report = soak.run(args.duration, warmup, args.threads)
    print(
        f"{sum(report.requests.values())} requests in {report.duration_s} s: "
        + ", ".join(f"{name} {n} (max {report.latency_s[name]:.2f} s)" for name, n in sorted(report.requests.items()))
    )
    print(
        f"valid-request failures: {len(report.valid_failures)}; hostile answered unexpectedly: "
        f"{len(report.hostile_unexpected)}; worker restarts: {report.worker_restarts}"
    )
    growth = report.rss_growth
    print(
        f"worker RSS: {report.rss_after_warmup_mb} MB after the warm-up, {report.rss_end_mb} MB at the end"
        + (f" ({growth:+.1%})" if growth is not None else "")
        + f", {report.rss_max_mb and round(report.rss_max_mb)} MB at most"
    )
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
    problems = report.problems()
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    print("soak FAILED" if problems else "soak passed")
    return 1 if problems else 0

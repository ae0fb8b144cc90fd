"""`python -m client openloop`: open-loop load at fixed arrival rates, latency measured from the schedule.

    python -m client openloop --host http://127.0.0.1:8080 --model resnet50 --rate 10 20 40 --duration 30s

A closed-loop test (`python -m client loadtest`) sends each user's next request only when the last
answer arrives, so a slow server slows the load down and its worst moments are sampled less: the
tail looks better than users see it ("coordinated omission"). Here the send times are drawn before
the run (Poisson arrivals: exponential gaps from a seeded RNG, or evenly spaced with --arrival
uniform) and do not depend on the answers. Each request's latency runs from its *scheduled* send
time to the end of its answer, so time a request spent waiting to be sent counts against the server.

Requests go out on keep-alive HTTP/1.1 connections from a pool of --connections (opened as needed).
When every connection is busy at a request's send time, the request waits for one and is counted as
"late"; a run with many late requests means the server had more requests in flight than the pool
allows (it was overloaded), and its latencies say how long they waited. The generator is one asyncio
loop with a minimal HTTP client (no per-request threads), and it reports its own CPU time, because
on a small machine the load generator and the server share the cores.

Per rate: offered and achieved rate, p50/p90/p99/max latency of the answered requests, errors by
kind, late requests, send lag (how late the generator itself was), the generator's CPU seconds.
Writes `<output-root>/<UTC timestamp>/summary.json` (atomically) and prints a table.

Exit status: 0 measured, within the thresholds; 1 a rate failed --max-failure-ratio or --p99-bound-ms;
2 bad command line; 3 the server cannot be reached; 4 the model is not served there; 5 the server
refused the token.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from classify.response import MAX_RESPONSE_BYTES, InvalidAnswer, parse_answer, parse_refusal

from .arguments import positive_int
from .errors import ClientError
from .images import ImageTooLarge, check_image_size, images_in_folder, read_image, sample_photos
from .loadtest import make_run_dir, parse_duration, write_json
from .remote import TOKEN_ENV
from .v2 import add_protocol, http_request, prediction_client, v2_error_kind

ARRIVALS = ("poisson", "uniform")
DEFAULT_CONNECTIONS = 64  # TorchServe's job queue holds 100 by default: the pool stays below it


def arrival_times(rate: float, duration_s: float, arrival: str = "poisson", seed: int = 0) -> list[float]:
    """Scheduled send times, seconds from the start, of every request before `duration_s`.

    Poisson arrivals: gaps drawn from an exponential distribution of mean 1/rate by a `random.Random(seed)`
    (the same seed gives the same schedule, and the schedules of two rates are one schedule scaled).
    Uniform: one request every 1/rate seconds.
    """
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"the arrival rate must be a positive number of requests per second, got {rate!r}")
    if arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival process {arrival!r}: one of {', '.join(ARRIVALS)}")
    rng = random.Random(seed)
    times, t = [], 0.0
    while True:
        t += rng.expovariate(rate) if arrival == "poisson" else 1.0 / rate
        if t >= duration_s:
            return times
        times.append(t)


def quantile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank quantile of already sorted values (None when there are none)."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


@dataclass
class RateResult:
    """One rate's run. Latencies (ms) are from the scheduled send time to the end of the answer, over
    the requests answered 200 with a JSON object; the others are counted in `errors` by kind."""

    offered_rps: float
    arrival: str
    duration_s: float
    scheduled: int  # requests in the schedule (a Poisson schedule's count varies around rate x duration)
    answered: int  # answered 200 with predictions
    errors: dict[str, int]
    elapsed_s: float  # from the start of the schedule to the last answer (or timeout)
    throughput_rps: float  # answered / elapsed_s
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    late_no_connection: int  # requests that found every connection busy at their send time
    send_lag_p99_ms: float  # how late the generator sent (scheduling and waiting for a connection)
    send_lag_max_ms: float
    connections_opened: int
    generator_cpu_s: float  # this process's CPU time (user + system) during the run
    problems: list[str] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def generator_cores(self) -> float:
        return self.generator_cpu_s / self.elapsed_s if self.elapsed_s else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "error_count": self.error_count, "generator_cores": self.generator_cores}


def max_rate_under_bound(results: list[dict], bound_ms: float) -> float | None:
    """The highest offered rate that met the bound, with every lower rate meeting it too (MLPerf's server
    scenario: the load at which the p99 latency stays within the bound). A rate meets it when its p99 is
    at most `bound_ms` and no request failed. `results`: dicts with offered_rps, p99_ms, error_count.
    None when even the lowest rate missed it."""
    best = None
    for result in sorted(results, key=lambda r: r["offered_rps"]):
        p99 = result["p99_ms"]
        if p99 is None or p99 > bound_ms or result["error_count"]:
            break
        best = result["offered_rps"]
    return best


class ServerClosed(ConnectionResetError):
    """The connection ended before an answer began (a kept-alive connection the server had closed)."""


class Connection:
    """One keep-alive HTTP/1.1 connection: a request written whole, its answer read by Content-Length
    (or chunked, or to the end when the server closes)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int, tls: ssl.SSLContext | None) -> Connection:
        return cls(*await asyncio.open_connection(host, port, ssl=tls))

    async def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """(status, body, whether the connection can be reused)."""
        self.writer.write(request)
        status_line = await self.reader.readline()
        if not status_line:
            raise ServerClosed("the server closed the connection without answering")
        status = int(status_line.split(None, 2)[1])
        length, chunked, reusable = None, False, True
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                reusable = value != b"close"
        if chunked:
            parts, total = [], 0
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                total += size
                check_size(total)
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            content = b"".join(parts)
        elif length is not None:
            check_size(length)
            content = await self.reader.readexactly(length)
        else:  # until the server closes: never more than an answer may take
            parts, total, reusable = [], 0, False
            while chunk := await self.reader.read(64 * 1024):
                total += len(chunk)
                check_size(total)
                parts.append(chunk)
            content = b"".join(parts)
        return status, content, reusable

    def close(self) -> None:
        self.writer.close()


class AnswerTooLarge(ValueError):
    pass


def check_size(size: int) -> None:
    if size > MAX_RESPONSE_BYTES:
        raise AnswerTooLarge(f"an answer of over {MAX_RESPONSE_BYTES:,} bytes")


def error_kind(status: int, content: bytes) -> str | None:
    """None for a good answer (200, one image's predictions), else a short name for what went wrong."""
    if status == 200:
        try:
            parse_answer(content, images=1)
        except InvalidAnswer:
            return "HTTP 200 with an invalid answer"
        return None
    kind, _ = parse_refusal(content)
    return f"HTTP {status} {kind}".strip()


class RequestBuilder:
    """Each image's whole HTTP request, built when first sent and kept while the kept ones fit in
    `CACHE_BYTES` (a folder of many or large files is read again per request instead of held in memory);
    a file over the client's size limit is refused (images.read_image), never read whole."""

    CACHE_BYTES = 256 * 2**20

    def __init__(self, head: str, images: list[bytes | Path], encode: Callable[[bytes], bytes] | None = None) -> None:
        self.head, self.images, self.encode = head, images, encode
        self.cache: dict[int, bytes] = {}
        self.cached_bytes = 0

    def build(self, index: int) -> bytes:
        if index in self.cache:
            return self.cache[index]
        image = self.images[index]
        body = image if isinstance(image, bytes) else read_image(image)
        if self.encode is not None:  # the protocol's body around the image (v2: its JSON header)
            body = self.encode(body)
        request = (
            f"{self.head}Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
        if self.cached_bytes + len(request) <= self.CACHE_BYTES:
            self.cache[index] = request
            self.cached_bytes += len(request)
        return request


@dataclass
class _RunState:
    """One rate's run: the pool of idle keep-alive connections and what the requests measured."""

    loop: asyncio.AbstractEventLoop
    slots: asyncio.Semaphore
    idle: list[Connection] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    opened: int = 0
    late: int = 0


class OpenLoop:
    """Sends requests to `url`/predictions/`model` at scheduled times over a pool of keep-alive connections."""

    def __init__(
        self,
        url: str,
        model: str,
        images: list[bytes | Path],
        *,
        token: str | None = None,
        method: str = "POST",
        connections: int = DEFAULT_CONNECTIONS,
        timeout_s: float = 30.0,
        protocol: str = "torchserve",
    ) -> None:
        parts = urlsplit(url if "://" in url else "http://" + url)
        self.host = parts.hostname or "127.0.0.1"
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        self.port = parts.port or (443 if self.tls else 80)
        path = f"{parts.path.rstrip('/')}/predictions/{model}"
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.error_kind, encode = error_kind, None
        if protocol == "v2":  # Triton: one image per v2 request (client/v2.py)
            path, method, self.error_kind = f"{parts.path.rstrip('/')}/v2/models/{model}/infer", "POST", v2_error_kind
            auth += "".join(f"{k}: {v}\r\n" for k, v in http_request([b""])[1].items() if k != "Content-Type")

            def encode(image: bytes) -> bytes:
                return http_request([image])[0]

        self.requests = RequestBuilder(f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{auth}", images, encode)
        self.connections = connections
        self.timeout_s = timeout_s

    async def _run(self, schedule: list[float]) -> tuple[list[float], Counter, list[float], int, int, float, float]:
        loop = asyncio.get_running_loop()
        state = _RunState(loop, asyncio.Semaphore(self.connections))
        tasks = []
        started = time.process_time()
        start = loop.time()
        requests = itertools.cycle(range(len(self.requests.images)))
        for offset in schedule:
            scheduled = start + offset
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if state.slots.locked():
                state.late += 1
            await state.slots.acquire()
            tasks.append(loop.create_task(self._one(state, scheduled, self.requests.build(next(requests)))))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
        cpu_s = time.process_time() - started
        for connection in state.idle:
            connection.close()
        return state.latencies, state.errors, state.lags, state.late, state.opened, elapsed, cpu_s

    async def _one(self, state: _RunState, scheduled: float, request: bytes) -> None:
        """Send one request at its scheduled time (lag recorded) and tally its answer or its failure."""
        state.lags.append(state.loop.time() - scheduled)
        connection = None
        try:
            connection, (status, content, reusable) = await self._exchange(state, scheduled, request)
            kind = self.error_kind(status, content)
            if kind is None:
                state.latencies.append(state.loop.time() - scheduled)
            else:
                state.errors[kind] += 1
            if reusable:
                state.idle.append(connection)
                connection = None
        except asyncio.TimeoutError:
            state.errors[f"timeout (no answer within {self.timeout_s:g} s of the scheduled time)"] += 1
        except ConnectionRefusedError:
            state.errors["connection refused"] += 1
        except (ConnectionError, asyncio.IncompleteReadError, OSError, ValueError, IndexError) as e:
            state.errors[f"connection failed: {type(e).__name__}"] += 1
        finally:
            if connection is not None:
                connection.close()
            state.slots.release()

    async def _exchange(self, state: _RunState, scheduled: float, request: bytes):
        """(connection, answer): on an idle keep-alive connection, or a new one when there is none or the
        idle one was closed meanwhile; the answer is due `timeout_s` after the scheduled time."""

        def exchange(connection: Connection):
            return asyncio.wait_for(
                connection.exchange(request), max(scheduled + self.timeout_s - state.loop.time(), 1e-3)
            )

        if state.idle:
            connection = state.idle.pop()
            try:
                return connection, await exchange(connection)
            except ServerClosed:  # closed while it was idle: the request goes again on a new connection
                connection.close()
            except BaseException:
                connection.close()
                raise
        connection = await asyncio.wait_for(Connection.open(self.host, self.port, self.tls), self.timeout_s)
        state.opened += 1
        try:
            return connection, await exchange(connection)
        except BaseException:
            connection.close()
            raise

    def run(self, rate: float, duration_s: float, arrival: str = "poisson", seed: int = 0) -> RateResult:
        schedule = arrival_times(rate, duration_s, arrival, seed)
        latencies, errors, lags, late, opened, elapsed, cpu_s = asyncio.run(self._run(schedule))
        latencies.sort()
        lags.sort()
        ms = [1e3 * s for s in latencies]
        return RateResult(
            offered_rps=rate,
            arrival=arrival,
            duration_s=duration_s,
            scheduled=len(schedule),
            answered=len(latencies),
            errors=dict(errors.most_common()),
            elapsed_s=elapsed,
            throughput_rps=len(latencies) / elapsed if elapsed else 0.0,
            p50_ms=quantile(ms, 0.50),
            p90_ms=quantile(ms, 0.90),
            p99_ms=quantile(ms, 0.99),
            max_ms=ms[-1] if ms else None,
            late_no_connection=late,
            send_lag_p99_ms=1e3 * (quantile(lags, 0.99) or 0.0),
            send_lag_max_ms=1e3 * (lags[-1] if lags else 0.0),
            connections_opened=opened,
            generator_cpu_s=cpu_s,
        )


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client openloop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", required=True, help="TorchServe inference API, e.g. http://127.0.0.1:8080")
    parser.add_argument("--model", default="resnet50", help="model name on the server (default: %(default)s)")
    parser.add_argument(
        "--rate",
        type=positive_float,
        nargs="+",
        required=True,
        metavar="RPS",
        help="arrival rates to run, requests per second, one after another (each after the last one's answers)",
    )
    parser.add_argument(
        "--duration", type=parse_duration, default="30s", help="schedule length per rate: 30s, 5m (default: 30s)"
    )
    parser.add_argument(
        "--arrival",
        choices=ARRIVALS,
        default="poisson",
        help="poisson: exponential gaps (independent users); uniform: evenly spaced (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the Poisson schedule (default: %(default)s)")
    parser.add_argument(
        "--connections",
        type=positive_int,
        default=DEFAULT_CONNECTIONS,
        help="keep-alive connections at most, i.e. requests in flight at most; a request that finds them all "
        "busy waits and is counted late (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=30.0,
        help="seconds from a request's scheduled time until it counts as a timeout error (default: %(default)s)",
    )
    parser.add_argument("--images", type=Path, help="folder of images to send (default: scikit-image's sample photos)")
    parser.add_argument("--method", choices=["POST", "PUT"], default="POST", help="HTTP method (default: %(default)s)")
    add_protocol(parser)
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"TorchServe inference key (default: ${TOKEN_ENV}); `python -m serve token` prints it",
    )
    parser.add_argument(
        "--p99-bound-ms",
        type=positive_float,
        help="latency bound: report the highest rate whose p99 stays within it (and every lower rate's too), "
        "and fail (exit 1) when a rate's p99 exceeds it",
    )
    parser.add_argument(
        "--max-failure-ratio",
        type=float,
        default=0.0,
        help="fail (exit 1) when failed/scheduled requests at a rate exceeds this (default: %(default)s)",
    )
    parser.add_argument(
        "--output-root",
        type=Path,
        default=Path("loadtests"),
        help="where the run's folder is made (default: %(default)s)",
    )
    return parser


def load_images(folder: Path | None) -> list[bytes | Path]:
    """The sample photos' bytes, or the folder's image files (read when first sent, RequestBuilder)."""
    if folder is None:
        return [data for _, data in sample_photos()]
    paths = images_in_folder(folder)
    for path in paths:  # by size, before the run: a file refused mid-run would end it
        check_image_size(path, path.stat().st_size)
    return paths


def judge(result: RateResult, args: argparse.Namespace) -> list[str]:
    problems = []
    if not result.scheduled:
        problems.append(f"no request scheduled at {result.offered_rps:g} req/s in {result.duration_s:g} s")
    elif result.error_count / result.scheduled > args.max_failure_ratio:
        problems.append(
            f"{result.offered_rps:g} req/s: {result.error_count} of {result.scheduled} requests failed, over "
            f"--max-failure-ratio {args.max_failure_ratio:g}"
        )
    if args.p99_bound_ms is not None and (result.p99_ms is None or result.p99_ms > args.p99_bound_ms):
        measured = "n/a" if result.p99_ms is None else f"{result.p99_ms:.0f} ms"
        problems.append(f"{result.offered_rps:g} req/s: p99 {measured} exceeds --p99-bound-ms {args.p99_bound_ms:g}")
    return problems


def format_row(r: RateResult) -> str:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f}"

    return (
        f"{r.offered_rps:>9.2f} {r.scheduled:>8} {r.throughput_rps:>9.2f} {ms(r.p50_ms):>6} {ms(r.p90_ms):>6} {ms(r.p99_ms):>6} "
        f"{ms(r.max_ms):>6} {r.error_count:>6} {r.late_no_connection:>5} {r.generator_cores:>9.2f}"
    )


def openloop_main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.images is not None and not (args.images.is_dir() and images_in_folder(args.images)):
        parser.error(f"--images {args.images}: not a folder holding image files")
    if not 0 <= args.max_failure_ratio <= 1:
        parser.error(f"--max-failure-ratio must be between 0 and 1, got {args.max_failure_ratio:g}")
    if "://" not in args.host:
        args.host = "http://" + args.host
    try:
        images = load_images(args.images)
    except (ImageTooLarge, OSError) as e:
        parser.error(str(e))

    # One request first, through the command-line client: an unreachable server, an unknown model or a
    # refused key stops here with its own message and exit status, and the model is warm before timing.
    try:
        first = images[0] if isinstance(images[0], bytes) else read_image(images[0])
        prediction_client(
            args.protocol, args.host, args.model, timeout_s=args.timeout, retries=0, token=args.token
        ).predict(first)
    except ClientError as e:
        if e.fatal:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
    except (ImageTooLarge, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    run_dir = make_run_dir(args.output_root)
    generator = OpenLoop(
        args.host,
        args.model,
        images,
        token=args.token,
        method=args.method,
        connections=args.connections,
        timeout_s=args.timeout,
        protocol=args.protocol,
    )
    print(
        f"open loop: {args.arrival} arrivals at {', '.join(f'{r:g}' for r in args.rate)} req/s, {args.duration}s each, "
        f"{args.method} {args.host}/predictions/{args.model}, at most {args.connections} connections\n"
        f"writing {run_dir}/summary.json\n"
        f"{'offered/s':>9} {'requests':>8} {'served/s':>9} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>6} {'errors':>6} {'late':>5} "
        "gen cores",
        flush=True,
    )
    results = []
    for rate in args.rate:
        result = generator.run(rate, args.duration, args.arrival, args.seed)
        result.problems = judge(result, args)
        results.append(result)
        print(format_row(result), flush=True)
        for kind, count in result.errors.items():
            print(f"  {count} x {kind}")
    rows = [r.to_dict() for r in results]
    best = max_rate_under_bound(rows, args.p99_bound_ms) if args.p99_bound_ms is not None else None
    problems = [p for r in results for p in r.problems]
    write_json(
        run_dir / "summary.json",
        {
            "host": args.host,
            "model": args.model,
            "generator": "python -m client openloop (asyncio, keep-alive HTTP/1.1)",
            "arrival": args.arrival,
            "seed": args.seed,
            "connections": args.connections,
            "duration_s": args.duration,
            "timeout_s": args.timeout,
            "latency_from": "scheduled send time",
            "rates": rows,
            "p99_bound_ms": args.p99_bound_ms,
            "max_rate_under_p99_bound": best,
            "thresholds": {"max_failure_ratio": args.max_failure_ratio, "p99_bound_ms": args.p99_bound_ms},
            "passed": not problems,
            "problems": problems,
        },
    )
    print("latency (ms) from each request's scheduled send time; late: sent after its time, every connection busy")
    if args.p99_bound_ms is not None:
        print(
            f"highest rate with p99 <= {args.p99_bound_ms:g} ms: "
            + (f"{best:g} req/s" if best is not None else "none (the lowest rate missed it)")
        )
    if problems:
        print("FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("PASSED")
    return 0

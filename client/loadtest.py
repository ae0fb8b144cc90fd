"""`python -m client loadtest`: a headless locust run with a verdict.

Runs `client/locustfile.py` in a locust subprocess (locust monkey-patches the standard library with
gevent on import, so it never runs inside this process), then reads its statistics and writes, under
`loadtests/<UTC timestamp>/`:

    locust_stats.csv, locust_stats_history.csv, locust_failures.csv, locust_exceptions.csv
    locust_final_stats.json  the final statistics per endpoint (the summary is computed from it)
    report.html              locust's HTML report
    throughput_latency.png   requests/s and p50/p95/p99 latency over the run
    summary.json             the numbers printed at the end and the verdict
    locust.log               locust's own output

Exit status: 0 the thresholds held; 1 the failure ratio exceeded --max-failure-ratio, p95 exceeded
--p95-ms, or no request completed; 2 bad command line; 3 locust itself failed (its log is printed).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from fsutil.atomic import atomic_save_figure, atomic_write_text

from .images import images_in_folder
from .remote import TOKEN_ENV
from .v2 import add_protocol

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
CSV_PREFIX = "locust"
FINAL_STATS = "locust_final_stats"  # locust appends ".json"
# Startup, the stop timeout for requests in flight and writing the report, on top of --duration.
GRACE_S = 120
STOP_TIMEOUT_S = 10


def parse_duration(text: str) -> int:
    """'60s', '5m', '1h30m', '90' (seconds) -> seconds, as locust's --run-time reads it."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not text.strip() or not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 60s, 5m or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total < 1:
        raise argparse.ArgumentTypeError("the duration must be at least 1 second")
    return total


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", required=True, help="TorchServe inference API, e.g. http://127.0.0.1:8080")
    parser.add_argument("--model", default="resnet50", help="model name on the server (default: %(default)s)")
    parser.add_argument(
        "--users", type=int, default=4, help="concurrent users, each with one request in flight (default: %(default)s)"
    )
    parser.add_argument("--spawn-rate", type=float, help="users started per second (default: all at once)")
    parser.add_argument(
        "--duration", type=parse_duration, default="60s", help="run time: 60s, 5m, 1h30m (default: 60s)"
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
        "--token-lifetime-min",
        type=float,
        default=60.0,
        help="minutes the --token stays valid: the server's `serve start --token-expiration-min` (default: "
        "%(default)s, TorchServe's). A run longer than that would fail part-way with expired-key errors, so it "
        "is refused; start the server with a longer lifetime and pass the same value here",
    )
    parser.add_argument(
        "--max-failure-ratio",
        type=float,
        default=0.0,
        help="fail (exit 1) when failed/total requests exceeds this (default: %(default)s)",
    )
    parser.add_argument(
        "--p95-ms", type=float, help="fail (exit 1) when the 95th percentile latency exceeds this many ms"
    )
    parser.add_argument(
        "--output-root",
        type=Path,
        default=Path("loadtests"),
        help="where the run's folder is made (default: %(default)s)",
    )
    return parser


@dataclass
class Summary:
    requests: int
    failures: int
    requests_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):  # locust writes "N/A" when nothing was measured
        return None


def percentile(histogram: dict[float, int], fraction: float) -> float | None:
    """Locust's own percentile over its histogram of rounded response times (ms -> count)."""
    total = sum(histogram.values())
    if not total:
        return None
    allowed_above = int(total * fraction)
    seen = 0
    for response_time in sorted(histogram, reverse=True):
        seen += histogram[response_time]
        if total - seen <= allowed_above:
            return response_time
    return None


def read_summary(final_stats_json: Path) -> Summary:
    """The whole run, from locust's `--json-file`: written once, at exit, with every request counted.

    (The `_stats.csv` file is rewritten once a second while the test runs, so its last state can miss
    the final second.)
    """
    entries = json.loads(final_stats_json.read_text())
    histogram: Counter[float] = Counter()
    for entry in entries:
        histogram.update({float(ms): count for ms, count in entry["response_times"].items()})
    requests = sum(e["num_requests"] for e in entries)
    if requests:
        start = min(e["start_time"] for e in entries)
        end = max(e["last_request_timestamp"] or start for e in entries)
        requests_per_s = requests / max(end - start, 1e-3)
    else:
        requests_per_s = 0.0
    return Summary(
        requests=requests,
        failures=sum(e["num_failures"] for e in entries),
        requests_per_s=requests_per_s,
        p50_ms=percentile(histogram, 0.50),
        p95_ms=percentile(histogram, 0.95),
        p99_ms=percentile(histogram, 0.99),
        max_ms=max((e["max_response_time"] for e in entries), default=None),
    )


def read_failures(failures_csv: Path, limit: int = 5) -> list[tuple[int, str]]:
    """The most frequent failure messages: [(occurrences, error), ...]."""
    if not failures_csv.exists():
        return []
    with failures_csv.open(newline="") as f:
        rows = [(int(r["Occurrences"]), r["Error"]) for r in csv.DictReader(f)]
    return sorted(rows, reverse=True)[:limit]


def plot_history(history_csv: Path, png: Path) -> None:
    """Throughput (with the user count) and latency percentiles over time, from the Aggregated rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with history_csv.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    start = int(rows[0]["Timestamp"]) if rows else 0
    t = [int(r["Timestamp"]) - start for r in rows]

    def per_second(column: str) -> list[float]:
        # From the running totals rather than locust's smoothed "Requests/s", which lags by seconds.
        totals = [int(r[column]) for r in rows]
        return [0.0] + [(b - a) / max(t1 - t0, 1) for a, b, t0, t1 in zip(totals, totals[1:], t, t[1:])]

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 7), constrained_layout=True)
    top.plot(t, per_second("Total Request Count"), label="requests/s")
    top.plot(t, per_second("Total Failure Count"), label="failures/s", color="tab:red")
    top.set_ylabel("requests per second")
    users = top.twinx()
    users.plot(t, [int(r["User Count"]) for r in rows], label="users", color="tab:gray", linestyle=":")
    users.set_ylabel("users")
    lines = top.get_legend_handles_labels()[0] + users.get_legend_handles_labels()[0]
    top.legend(lines, [line.get_label() for line in lines], loc="upper left")
    top.set_title("throughput")
    for column in ("50%", "95%", "99%"):
        # Locust reports percentiles of a sliding window of the last 10 s in the full history, and 0
        # until that window holds data: a gap, not a 0 ms latency.
        values = [_number(r[column]) or math.nan for r in rows]
        bottom.plot(t, values, label=f"p{column[:-1]}", marker=".")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds since start")
    bottom.set_title("latency (sliding 10 s window)")
    bottom.legend(loc="upper left")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    atomic_save_figure(fig, png)
    plt.close(fig)


def make_run_dir(root: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(100):
        run_dir = root / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise FileExistsError(f"{root}: too many runs named {stamp}")


def locust_command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--host",
        args.host,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate if args.spawn_rate else args.users),
        "--run-time",
        f"{args.duration}s",
        "--stop-timeout",
        str(STOP_TIMEOUT_S),
        "--csv",
        str(run_dir / CSV_PREFIX),
        "--csv-full-history",
        "--html",
        str(run_dir / "report.html"),
        "--json-file",
        str(run_dir / FINAL_STATS),
        "--model",
        args.model,
        "--method",
        args.method,
        "--protocol",
        args.protocol,
    ]
    if args.images:
        command += ["--images", str(args.images)]
    return command


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def verdict(summary: Summary, args: argparse.Namespace) -> list[str]:
    """Why the run failed its thresholds (empty: it passed)."""
    problems = []
    if summary.requests == 0:
        problems.append("no request completed")
    elif summary.failure_ratio > args.max_failure_ratio:
        problems.append(
            f"failure ratio {summary.failure_ratio:.4f} exceeds --max-failure-ratio {args.max_failure_ratio:g}"
        )
    if args.p95_ms is not None and (summary.p95_ms is None or summary.p95_ms > args.p95_ms):
        measured = "n/a" if summary.p95_ms is None else f"{summary.p95_ms:g}"
        problems.append(f"p95 latency {measured} ms exceeds --p95-ms {args.p95_ms:g}")
    return problems


def loadtest_main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.users < 1:
        parser.error("--users must be at least 1")
    if args.images is not None and not (args.images.is_dir() and images_in_folder(args.images)):
        parser.error(f"--images {args.images}: not a folder holding image files")
    if args.token and args.duration + GRACE_S > args.token_lifetime_min * 60:
        parser.error(
            f"--duration {args.duration}s (+{GRACE_S}s to start and stop) outlives the inference key "
            f"(--token-lifetime-min {args.token_lifetime_min:g}): TorchServe would refuse every request after it "
            "expires. Start the server with `python -m serve start --token-expiration-min N` for a longer "
            "lifetime and pass --token-lifetime-min N, or shorten --duration"
        )
    if not re.match(r"^https?://", args.host):
        args.host = "http://" + args.host

    run_dir = make_run_dir(args.output_root)
    log_path = run_dir / "locust.log"
    print(
        f"load test: {args.users} users for {args.duration}s, {args.method} {args.host}/predictions/{args.model}"
        f"\nwriting {run_dir}/ (locust's output: {log_path})",
        flush=True,
    )
    env = dict(os.environ)
    # The locustfile imports `client.images`: make this checkout importable whatever the working directory.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(LOCUSTFILE.parent.parent), env.get("PYTHONPATH")]))
    if args.token:
        env[TOKEN_ENV] = args.token  # in the environment, not on a command line others can list
    with log_path.open("w") as log:
        try:
            process = subprocess.run(
                locust_command(args, run_dir),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=args.duration + GRACE_S,
            )
            returncode = process.returncode
        except subprocess.TimeoutExpired:
            returncode = None
    try:
        summary = read_summary(run_dir / f"{FINAL_STATS}.json")
    except (OSError, ValueError, KeyError, TypeError) as e:
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-30:])
        why = "did not finish in time" if returncode is None else f"exited with status {returncode}"
        print(f"error: locust {why} and left no statistics ({e}). Its output:\n{tail}", file=sys.stderr)
        return 3

    plot_history(run_dir / f"{CSV_PREFIX}_stats_history.csv", run_dir / "throughput_latency.png")
    failures = read_failures(run_dir / f"{CSV_PREFIX}_failures.csv")
    problems = verdict(summary, args)
    write_json(
        run_dir / "summary.json",
        {
            "host": args.host,
            "model": args.model,
            "users": args.users,
            "duration_s": args.duration,
            **asdict(summary),
            "failure_ratio": summary.failure_ratio,
            "thresholds": {"max_failure_ratio": args.max_failure_ratio, "p95_ms": args.p95_ms},
            "passed": not problems,
            "problems": problems,
        },
    )

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f} ms"

    print(
        f"requests: {summary.requests} ({summary.requests_per_s:.2f} requests/s), "
        f"failures: {summary.failures} ({summary.failure_ratio:.2%})\n"
        f"latency: p50 {ms(summary.p50_ms)}, p95 {ms(summary.p95_ms)}, p99 {ms(summary.p99_ms)}, "
        f"max {ms(summary.max_ms)}"
    )
    for count, error in failures:
        print(f"  {count} x {error}")
    print(f"report: {run_dir / 'report.html'}, plot: {run_dir / 'throughput_latency.png'}")
    if problems:
        print("FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("PASSED")
    return 0

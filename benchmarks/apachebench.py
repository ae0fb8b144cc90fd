"""ApacheBench (`ab`, Debian's apache2-utils): a closed-loop load generator written in C, run beside
locust to cross-check the server's capacity with a client that costs little CPU.

`ab -k` keeps its connections alive and sends the same file as every request's body. It counts a
response whose length differs from the first one's as a "Length" failure: our top-k JSON changes
length when a probability's last digit does, so those are reported apart from real failures.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from fsutil.atomic import atomic_write_text

AB_MISSING = "not measured: ab not installed; `./install.sh --bench-tools` installs Debian's apache2-utils"


def ab_path() -> str | None:
    return shutil.which("ab")


def ab_command(ab: str, url: str, body: Path, users: int, seconds: int, token: str | None) -> list[str]:
    """Keep-alive (-k), don't stop at a socket error (-r), no progress lines (-q), for `seconds` (-t,
    which also caps the run at 50,000 requests) with `users` requests in flight (-c)."""
    command = [ab, "-k", "-r", "-q", "-c", str(users), "-t", str(seconds), "-p", str(body)]
    command += ["-T", "application/octet-stream"]
    if token:
        # ab takes headers only on its command line; the key is the benchmark's own throwaway server's.
        command += ["-H", f"Authorization: Bearer {token}"]
    return [*command, url]


def _field(text: str, label: str, cast=float):
    match = re.search(rf"^{re.escape(label)}:\s+([\d.]+)", text, re.MULTILINE)
    return cast(match.group(1)) if match else None


def parse_ab(text: str) -> dict:
    """ab's report -> requests_per_s, complete, failed (connect, receive, exceptions, non-2xx),
    length_mismatches, time_s and its latency percentiles p50/p90/p99/max in ms (connect + processing,
    whole milliseconds). Raises ValueError when the text is not an ab report."""
    requests_per_s = _field(text, "Requests per second")
    complete = _field(text, "Complete requests", int)
    if requests_per_s is None or complete is None:
        raise ValueError(f"not an ApacheBench report: {text.strip()[-300:]!r}")
    breakdown = dict.fromkeys(("Connect", "Receive", "Length", "Exceptions"), 0)
    match = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", text)
    if match:
        breakdown = dict(zip(breakdown, map(int, match.groups())))
    percentiles = {int(p): float(ms) for p, ms in re.findall(r"^\s+(\d+)%\s+(\d+)", text, re.MULTILINE)}
    non_2xx = _field(text, "Non-2xx responses", int) or 0
    return {
        "requests_per_s": requests_per_s,
        "complete": complete,
        "failed": breakdown["Connect"] + breakdown["Receive"] + breakdown["Exceptions"] + non_2xx,
        "non_2xx": non_2xx,
        "length_mismatches": breakdown["Length"],
        "time_s": _field(text, "Time taken for tests"),
        "p50_ms": percentiles.get(50),
        "p90_ms": percentiles.get(90),
        "p99_ms": percentiles.get(99),
        "max_ms": percentiles.get(100),
    }


def run_ab(ab: str, url: str, body: Path, users: int, seconds: int, token: str | None, out_dir: Path) -> dict:
    """One ab run; its report is kept as `out_dir/ab.txt`. Raises RuntimeError with ab's own words when
    it fails."""
    out_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.run(
        ab_command(ab, url, body, users, seconds, token), capture_output=True, text=True, timeout=seconds + 120
    )
    atomic_write_text(out_dir / "ab.txt", process.stdout + process.stderr)
    try:
        result = parse_ab(process.stdout)
    except ValueError:
        raise RuntimeError(f"ab exited with status {process.returncode}: {process.stderr.strip()[-500:]}") from None
    return {**result, "report": str(out_dir / "ab.txt")}

"""The clients against a hostile or broken server (a tiny socket server in this process): a body that
never ends or drips forever, a connection reset under load. Each run ends within its deadline, with a
non-zero exit status, in bounded memory."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

DEADLINE_S = 4.0
MAX_RSS = 400 * 2**20  # the interpreter with requests and Pillow is ~60 MB; the old client grew to 18 GB


def serve(behaviour: str) -> tuple[socket.socket, list[int]]:
    """A server on a free loopback port answering every request as `behaviour` says; returns the
    listener (close it to stop) and the count of requests seen."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen = [0]

    def answer(connection: socket.socket) -> None:
        with connection:
            connection.settimeout(30)
            try:
                connection.recv(1 << 20)
                seen[0] += 1
                if behaviour == "reset-once" and seen[0] == 1:
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    return  # closing with linger 0 sends a reset
                if behaviour == "reset-once":
                    body = b'{"7": 0.9, "1": 0.1}'
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    return
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{")
                chunk, pause = (b" " * 65536, 0.0) if behaviour == "endless" else (b" ", 0.2)
                while True:
                    connection.sendall(chunk)
                    time.sleep(pause)
            except OSError:
                return

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener, seen


def run_watched(args: list[str], limit_s: float) -> tuple[int, float, int, str]:
    """(exit status, seconds, peak RSS, output) of `python -m client ARGS`, killed past `limit_s`."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "client", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    peak = 0
    watched = psutil.Process(process.pid)
    while process.poll() is None and time.monotonic() - started < limit_s:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
    output = process.communicate()[0].decode(errors="replace")
    return process.returncode, time.monotonic() - started, peak, output


@pytest.mark.parametrize("behaviour", ["endless", "drip"])
def test_the_client_ends_within_its_deadline_in_bounded_memory(behaviour, digit_images):
    listener, _ = serve(behaviour)
    image = next((digit_images / "7").iterdir())
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        status, elapsed, peak, out = run_watched(
            [str(image), "--url", url, "--model", "digits", "--timeout", str(DEADLINE_S), "--retries", "0"], 60
        )
    finally:
        listener.close()
    assert status == 1, out
    assert elapsed < DEADLINE_S + 15, out  # the interpreter's start on a loaded machine, then the deadline
    assert peak < MAX_RSS, f"{peak / 2**20:.0f} MiB"


def test_openloop_against_an_endless_body_fails_in_bounded_memory(digit_images, tmp_path):
    listener, _ = serve("endless")
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    args = ["openloop", "--host", url, "--model", "digits", "--images", str(digit_images / "7")]
    args += [
        "--rate",
        "4",
        "--duration",
        "2s",
        "--timeout",
        str(DEADLINE_S),
        "--output-root",
        str(tmp_path),
    ]
    try:
        status, elapsed, peak, out = run_watched(args, 90)
    finally:
        listener.close()
    assert status not in (0, None) and "Traceback" not in out, out
    assert peak < MAX_RSS, f"{peak / 2**20:.0f} MiB"


def test_a_connection_reset_is_retried_like_a_busy_503(digit_images, run_client):
    listener, seen = serve("reset-once")
    image = next((digit_images / "7").iterdir())
    try:
        status, out, err = run_client(
            image, "--url", f"http://127.0.0.1:{listener.getsockname()[1]}", "--model", "digits"
        )
    finally:
        listener.close()
    assert status == 0 and seen[0] == 2, out + err

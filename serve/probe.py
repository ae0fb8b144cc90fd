"""`python -m serve.probe --port 8080 --model NAME...`: exit 0 when every model answers a real image.

The readiness probe of the Kubernetes manifests (an exec probe in the serving container), and with
`--run-dir` the Docker image's health check: the port, models and inference key (renewed when expired)
of the server started from that run directory (TorchServe, or Triton, asked over the Open Inference
Protocol), at the cost of psutil and requests, still no torch. TorchServe's
`/ping` says "Healthy" while a model has no working worker (a hung worker, or none left), so only a
prediction proves that a replica can take traffic. It asks the inference API on the pod's loopback
interface, which the in-cluster mode serves without a key, with a tiny gray PNG made here: the
standard library only, so each probe costs an interpreter start and no torch, Pillow or requests.

Exit status: 0 every model answered 200 with a JSON object of class -> probability; 1 otherwise (the
reason on stderr, which the kubelet records in the pod's events).
"""

from __future__ import annotations

import argparse
import struct
import sys
import urllib.error
import urllib.request
import zlib

from classify.response import MAX_RESPONSE_BYTES, InvalidAnswer, parse_answer, parse_v2_answer, v2_request


def gray_png(size: int = 32) -> bytes:
    """A valid size x size 8-bit gray PNG."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    rows = b"".join(b"\0" + b"\x80" * size for _ in range(size))  # filter byte 0, then mid-gray pixels
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def model_answers(
    url: str, model: str, timeout_s: float, headers: dict[str, str] | None = None, protocol: str = "torchserve"
) -> str | None:
    """None when `model` answered a prediction at `url` (TorchServe's, or `protocol` "v2": Triton's), else why not."""
    if protocol == "v2":
        (body, protocol_headers), path, method = v2_request([gray_png()]), f"/v2/models/{model}/infer", "POST"
    else:
        body, protocol_headers = gray_png(), {"Content-Type": "application/octet-stream"}
        path, method = f"/predictions/{model}", "PUT"
    request = urllib.request.Request(
        f"{url}{path}", data=body, method=method, headers=protocol_headers | (headers or {})
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as e:
        return f"{model}: HTTP {e.code} {e.read()[:200].decode(errors='replace')}"
    except (urllib.error.URLError, OSError) as e:
        return f"{model}: no answer from {url} ({getattr(e, 'reason', e)})"
    try:
        parse_v2_answer(body) if protocol == "v2" else parse_answer(body, images=1)
    except InvalidAnswer as e:
        return f"{model}: {e}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve.probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8080, help="inference API port (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="inference API address (default: %(default)s)")
    parser.add_argument("--model", nargs="+", default=[], metavar="NAME", help="models that must answer")
    parser.add_argument(
        "--run-dir",
        help="probe the server started from this run directory instead: its port, its models (unless --model) "
        "and its inference key",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per model (default: %(default)s)")
    args = parser.parse_args(argv)
    url, models, headers, protocol = f"http://{args.host}:{args.port}", args.model, {}, "torchserve"
    if args.run_dir:
        from pathlib import Path

        from serve.server import ServerError  # psutil and requests, only here
        from serve.servers import recorded

        run_dir = Path(args.run_dir).resolve()
        server = recorded(run_dir)
        info = server.read_state(run_dir) if server is not None else None
        if info is None:
            print(f"not ready: no TorchServe running from {args.run_dir} (nor Triton)", file=sys.stderr)
            return 1
        try:
            url, models, headers = info.inference_url, args.model or info.models, info.headers("inference")
        except ServerError as e:
            print(f"not ready: {e}", file=sys.stderr)
            return 1
        protocol = server.protocol
    if not models:
        parser.error("name the models with --model, or the server with --run-dir")
    problems = [p for p in (model_answers(url, name, args.timeout, headers, protocol) for name in models) if p]
    for problem in problems:
        print(f"not ready: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

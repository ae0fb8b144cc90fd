"""The client against a real TorchServe serving the digits export as model `digits`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from models.imageio import ImageDecodeError, decode_image


def table_blocks(out: str) -> list[list[str]]:
    return [block.splitlines() for block in out.strip().split("\n\n")]


def test_table_per_image_in_order(torchserve_url, digit_images, run_client):
    status, out, err = run_client(digit_images, "--url", torchserve_url, "--model", "digits", "--top-k", 3)
    assert status == 0, err
    images = sorted(digit_images.rglob("*.png"))
    blocks = table_blocks(out)
    assert [block[0] for block in blocks] == [str(p) for p in images]
    correct = 0
    for block, image in zip(blocks, images):
        assert block[1].split() == ["rank", "class", "probability"]
        rows = [line.split() for line in block[2:]]
        assert [int(row[0]) for row in rows] == [1, 2, 3]
        assert all(row[1] in [str(d) for d in range(10)] for row in rows)
        percents = [float(row[2].rstrip("%")) for row in rows]
        assert percents == sorted(percents, reverse=True) and 0 <= percents[-1] <= percents[0] <= 100
        correct += rows[0][1] == image.parent.name
    assert correct >= 16, f"only {correct}/20 digits right: the served model or the client is off"


def test_json_output(torchserve_url, digit_images, run_client):
    status, out, err = run_client(
        digit_images, "--url", torchserve_url, "--model", "digits", "--json", "--concurrency", 4
    )
    assert status == 0, err
    document = json.loads(out)
    assert document["model"] == "digits" and document["url"] == torchserve_url
    assert [r["image"] for r in document["results"]] == [str(p) for p in sorted(digit_images.rglob("*.png"))]
    for result in document["results"]:
        predictions = result["predictions"]
        assert len(predictions) == 5  # the default --top-k
        probabilities = [p["probability"] for p in predictions]
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6  # softmax probabilities of the top 5 of 10 classes
        assert len({p["label"] for p in predictions}) == 5


def test_unknown_model_is_a_clear_error(torchserve_url, digit_images, run_client):
    status, out, err = run_client(digit_images / "3", "--url", torchserve_url, "--model", "no_such_model")
    assert status == 4
    assert out == ""
    assert "'no_such_model' is not served at" in err and "HTTP 404" in err
    assert "Traceback" not in err


def test_server_4xx_message_is_shown_and_other_images_still_classified(
    torchserve_url, digit_images, tmp_path, run_client
):
    text = b"This is a text file, not a picture of a digit.\n"
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(text)
    good = next((digit_images / "7").iterdir())
    status, out, err = run_client(bad, good, "--url", torchserve_url, "--model", "digits")
    assert status == 1
    (bad_block, good_block) = table_blocks(out)
    assert bad_block[0] == str(bad) and bad_block[1].startswith("  error: HTTP 4")
    with pytest.raises(ImageDecodeError) as decode_error:
        decode_image(text)
    assert str(decode_error.value) in bad_block[1], "the server's own message should reach the user"
    assert good_block[0] == str(good) and good_block[2].split()[:2] == ["1", "7"]
    assert "1 of 2 images failed" in err


@pytest.mark.parametrize("token", ["", "not-the-key"])
def test_missing_or_wrong_token_is_a_clear_error(torchserve_url, digit_images, run_client, token):
    status, out, err = run_client(digit_images / "5", "--url", torchserve_url, "--model", "digits", "--token", token)
    assert status == 5
    assert out == ""
    assert "Token Authorization failed" in err and "--token" in err and "python -m serve token" in err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused(digit_images, run_client):
    url = f"http://127.0.0.1:{closed_port()}"
    status, out, err = run_client(digit_images, "--url", url, "--model", "digits")
    assert status == 3
    assert out == ""
    assert f"cannot connect to {url} (connection refused)" in err and "python -m serve start" in err


def test_missing_file_is_a_usage_error(tmp_path, run_client):
    status, _, err = run_client(tmp_path / "cat.jpg")
    assert status == 2 and f"{tmp_path / 'cat.jpg'}: no such file or folder" in err
    status, _, err = run_client(tmp_path)
    assert status == 2 and "folder holds no image files" in err


def test_remote_mode_does_not_import_torch(digit_images):
    """Remote mode needs only requests and Pillow: checked in a fresh interpreter."""
    script = (
        "import sys\n"
        "from client.cli import main\n"
        f"status = main([{str(digit_images)!r}, '--url', 'http://127.0.0.1:{closed_port()}'])\n"
        "assert status == 3, status\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'onnxruntime', 'models', 'export') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[2]
    )
    assert result.returncode == 0, result.stderr


# TorchServe's words when every worker is busy or none is up.
NO_WORKER = 'Model "digits" has no worker to serve inference request. Please use scale workers API to add workers.'


class FlakyServer(ThreadingHTTPServer):
    """Answers 503 (TorchServe's "no worker free") `busy_answers` times, then 200 with a prediction."""

    def __init__(self, busy_answers: int):
        self.busy_answers = busy_answers
        self.requests_seen = 0
        super().__init__(("127.0.0.1", 0), FlakyHandler)


class FlakyHandler(BaseHTTPRequestHandler):
    server: FlakyServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests_seen += 1
        if self.server.requests_seen <= self.server.busy_answers:
            self.answer(503, {"code": 503, "type": "ServiceUnavailableException", "message": NO_WORKER})
        else:
            self.answer(200, {"7": 0.9, "1": 0.06, "9": 0.04})

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def flaky_server(request):
    server = FlakyServer(busy_answers=request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("flaky_server", [2], indirect=True)
def test_503_is_retried_with_backoff(flaky_server, digit_images, run_client):
    url = f"http://127.0.0.1:{flaky_server.server_address[1]}"
    image = next((digit_images / "7").iterdir())
    status, out, err = run_client(image, "--url", url, "--model", "digits", "--json", "--retries", 3)
    assert status == 0, err
    assert flaky_server.requests_seen == 3
    predictions = json.loads(out)["results"][0]["predictions"]
    assert [(p["label"], p["probability"]) for p in predictions] == [("7", 0.9), ("1", 0.06), ("9", 0.04)]


@pytest.mark.parametrize("flaky_server", [100], indirect=True)
def test_503_retries_are_bounded(flaky_server, digit_images, run_client):
    url = f"http://127.0.0.1:{flaky_server.server_address[1]}"
    image = next((digit_images / "7").iterdir())
    status, out, _ = run_client(image, "--url", url, "--model", "digits", "--retries", 2)
    assert status == 1
    assert flaky_server.requests_seen == 3  # the first try and two retries
    assert "HTTP 503" in out and "after 2 retries" in out and "has no worker to serve inference request" in out


class ScriptedServer(ThreadingHTTPServer):
    """Gives the scripted (status, JSON body) answers in turn, the last one over and over."""

    def __init__(self, answers: list[tuple[int, object]]):
        self.answers = answers
        self.requests_seen = 0
        super().__init__(("127.0.0.1", 0), ScriptedHandler)


class ScriptedHandler(FlakyHandler):
    server: ScriptedServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body = self.server.answers[min(self.server.requests_seen, len(self.server.answers) - 1)]
        self.server.requests_seen += 1
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def scripted_server(request):
    server = ScriptedServer(request.param)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "scripted_server",
    [[(503, {"code": 503, "type": "InternalServerException", "message": "Prediction failed"})]],
    indirect=True,
)
def test_a_failed_prediction_503_is_not_retried(scripted_server, digit_images, run_client):
    """Only TorchServe's "busy" 503 is worth retrying; resending an image whose batch failed fails again."""
    image = next((digit_images / "7").iterdir())
    url = f"http://127.0.0.1:{scripted_server.server_address[1]}"
    status, out, _ = run_client(image, "--url", url, "--model", "digits", "--retries", 4)
    assert status == 1 and scripted_server.requests_seen == 1
    assert "HTTP 503: Prediction failed" in out


INFERENCE_FAILED = {"code": 500, "type": "InferenceFailed", "message": "the model failed on this request (boom)"}


@pytest.mark.parametrize("scripted_server", [[(500, INFERENCE_FAILED), (200, {"7": 1.0})]], indirect=True)
def test_the_handlers_inference_failure_is_not_retried(scripted_server, digit_images, run_client):
    """The handler answers a request whose forward pass failed with its own 500 (not a batch-wide 503):
    the client reports it at once, and the next image (a new request) is still classified."""
    images = sorted((digit_images / "7").iterdir())[:2]
    url = f"http://127.0.0.1:{scripted_server.server_address[1]}"
    status, out, _ = run_client(*images, "--url", url, "--model", "digits", "--retries", 4, "--concurrency", 1)
    assert status == 1 and scripted_server.requests_seen == 2
    assert "HTTP 500: the model failed on this request (boom)" in out


FORM_ERROR = {"code": 500, "type": "ErrorDataDecoderException", "message": "Bad end of line"}


@pytest.mark.parametrize("scripted_server", [[(500, FORM_ERROR)]], indirect=True)
def test_the_form_decoder_error_says_what_to_send_instead(scripted_server, digit_images, run_client):
    """TorchServe's frontend answers `curl --data-binary @cat.jpg` (form-urlencoded) with this 500."""
    image = next((digit_images / "7").iterdir())
    url = f"http://127.0.0.1:{scripted_server.server_address[1]}"
    status, out, _ = run_client(image, "--url", url, "--model", "digits")
    assert status == 1 and "Bad end of line" in out and "curl -T cat.jpg" in out and "application/octet-stream" in out


ODD_LABELS = {"cat\nwith a newline": 0.5, "x" * 200: 0.25}


@pytest.mark.parametrize("scripted_server", [[(200, ODD_LABELS)]], indirect=True)
def test_odd_labels_from_a_server_do_not_crash_the_table_or_the_json(scripted_server, digit_images, run_client):
    image = next((digit_images / "7").iterdir())
    url = f"http://127.0.0.1:{scripted_server.server_address[1]}"
    status, out, err = run_client(image, "--url", url, "--model", "digits")
    assert status == 0, err
    assert "cat\\nwith a newline" in out and "x" * 57 + "..." in out and "x" * 58 not in out
    status, out, err = run_client(image, "--url", url, "--model", "digits", "--json")
    assert status == 0, err
    assert json.loads(out)["results"][0]["predictions"][0] == {"label": "cat\nwith a newline", "probability": 0.5}


@pytest.mark.parametrize(
    "scripted_server",
    [
        [(200, '{"tabby": NaN, "dog": Infinity}')],
        [(200, '{"tabby": 1.5}')],
        [(200, '{"tabby": 0.7, "dog": 0.6}')],
        [(200, "[" * 100_000)],
        [(200, '{"a": ' + "[" * 50 + "]" * 50 + "}")],
    ],
    indirect=True,
    ids=["non-finite", "above-1", "sum-above-1", "deep-100k", "nested"],
)
def test_an_invalid_answer_fails_the_image(scripted_server, digit_images, run_client):
    """Non-finite, out-of-range or deeply nested answers are the server's fault, reported as such:
    exit 1, no traceback, no nan%."""
    image = next((digit_images / "7").iterdir())
    url = f"http://127.0.0.1:{scripted_server.server_address[1]}"
    status, out, err = run_client(image, "--url", url, "--model", "digits")
    assert status == 1 and "invalid answer from the server" in out, out + err
    assert "nan%" not in out and "Traceback" not in err


def test_a_connection_closed_after_413_is_not_server_unreachable(digit_images, tmp_path, run_client):
    """A server that answers 413 to a large body and closes the connection before reading it (TorchServe's
    frontend past max_request_size): that image fails, the run goes on, and the exit status is not 3."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)  # the headers and the start of the body
                connection.sendall(
                    b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                connection.shutdown(socket.SHUT_RDWR)

    threading.Thread(target=serve, daemon=True).start()
    big = tmp_path / "big.png"
    big.write_bytes(bytes(30 * 2**20))
    small = next((digit_images / "7").iterdir())
    try:
        status, out, err = run_client(
            big, small, "--url", f"http://127.0.0.1:{port}", "--model", "digits", "--concurrency", 1, "--retries", 0
        )
    finally:
        listener.close()
    assert status == 1, err  # images failed, but the server was reachable: not 3
    assert "cannot connect" not in out + err
    assert "HTTP 413" in out or "closed the connection while 30.0 MiB were being sent" in out, out

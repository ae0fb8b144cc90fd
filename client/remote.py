"""Asking a TorchServe inference API for predictions over HTTP (requests only: no torch here).

`POST /predictions/<model>` with the raw image bytes as the body answers TorchServe's convention:
a JSON object of the top-k classes, highest first (`{"tabby": 0.41, "tiger_cat": 0.35, ...}`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import requests
import urllib3
from urllib3.exceptions import NewConnectionError

from classify.response import MAX_RESPONSE_BYTES, OVERLOADED, InvalidAnswer, parse_answer, parse_refusal

from .errors import AuthorizationFailed, ClientError, HTTPError, ModelNotFound, ServerUnreachable

Predictions = list[tuple[str, float]]
TOKEN_ENV = "TORCHSERVE_TOKEN"  # where the command line and the load test look for the inference key
# TorchServe's 503 for "no worker free, queue full, model loading": the only answer worth retrying. A
# 503 of another type (a prediction that failed for the whole batch) would fail again with the same image.
BUSY_TYPES = ("ServiceUnavailableException", OVERLOADED, "")  # "": no JSON type, as a proxy answers
# TorchServe's frontend parses an application/x-www-form-urlencoded body (curl -d / --data-binary
# without a Content-Type) as an HTML form, and answers 500 with this type when it is not one.
FORM_DECODER_TYPE = "ErrorDataDecoderException"
FORM_HINT = (
    "the server read the body as an HTML form (Content-Type application/x-www-form-urlencoded, what "
    "`curl -d`/`--data-binary` send by default): send the image as the raw body with "
    "`curl -T cat.jpg` or `--data-binary @cat.jpg -H 'Content-Type: application/octet-stream'`, "
    "or as multipart with `curl -F img=@cat.jpg`"
)


@dataclass(frozen=True)
class Reply:
    """A response read whole within the request's deadline and `MAX_RESPONSE_BYTES`."""

    status_code: int
    reason: str
    headers: Mapping[str, str]
    content: bytes

    @property
    def ok(self) -> bool:
        return self.status_code < 400


def error_body(response) -> tuple[str, str]:
    """(type, message) of an error response (a `Reply` or a requests.Response): TorchServe's and our
    handler's JSON `type` and `message`, or the raw text (shortened) when the body is not that JSON."""
    kind, message = parse_refusal(response.content)
    return kind, message or getattr(response, "reason", "") or "no message"


def parse_predictions(response) -> Predictions:
    """`{"label": probability, ...}` -> [(label, probability), ...] in the server's order; an answer
    that is not one (too large, too deep, NaN, out of [0, 1]) is an HTTPError."""
    try:
        [prediction] = parse_answer(response.content, images=1)
    except InvalidAnswer as e:
        raise HTTPError(response.status_code, f"invalid answer from the server: {e}") from None
    return prediction


def read_within(response: requests.Response, deadline: float, what: str) -> bytes:
    """The body of a streamed `response`, refused past `MAX_RESPONSE_BYTES` or the monotonic `deadline`.

    Read one socket read at a time (`read1`), checking both bounds between reads, so a body that never
    ends or drips a byte at a time is cut off; a server that goes silent mid-body is cut off by the
    read timeout of that one read."""
    chunks, size = [], 0
    try:
        with response:
            # decoded: a server may gzip its answer (Triton does when asked); the cap counts decoded bytes
            while chunk := response.raw.read1(64 * 1024, decode_content=True):
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise HTTPError(0, f"{what}: the answer is over {MAX_RESPONSE_BYTES:,} bytes; not read further")
                if time.monotonic() > deadline:
                    raise HTTPError(0, f"{what}: no complete answer within the deadline")
                chunks.append(chunk)
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise HTTPError(0, f"{what}: reading the answer failed: {e}") from None
    return b"".join(chunks)


class PredictionClient:
    """Sends images to one model of a TorchServe inference API. Safe to share between threads.

    TorchServe's "busy" 503 (no worker free, queue full, model loading, a request shed by the handler's
    budget) and a connection the server reset or closed under load are retried up to `retries` times
    with exponential backoff (`backoff_s`, doubling, at most `max_backoff_s`; a `Retry-After` header in
    seconds is honoured within the same cap). Other errors, including a 503 for a prediction that
    failed, are raised at once as `ClientError`s. Each attempt, its body read included, ends within
    `timeout_s`; an answer over `MAX_RESPONSE_BYTES` is not read.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        timeout_s: float = 60.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        token: str | None = None,
    ):
        self.url = url.rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        self.model = model
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # TorchServe's token authorization: the inference key (`python -m serve token`).
        self.headers = {"Content-Type": "application/octet-stream"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        # requests.Session is not documented as thread-safe: one per thread, each keeping its connection.
        self._local = threading.local()

    @property
    def endpoint(self) -> str:
        return f"{self.url}/predictions/{self.model}"

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _post(self, image: bytes) -> Reply:
        deadline = time.monotonic() + self.timeout_s
        try:
            response = self._session().post(
                self.endpoint, data=image, headers=self.headers, timeout=self.timeout_s, stream=True
            )
            content = read_within(response, deadline, f"request to {self.endpoint}")
            return Reply(response.status_code, response.reason or "", response.headers, content)
        except requests.exceptions.ConnectionError as e:
            reason, connected = _reason(e)
            if connected:  # the server dropped this one request: the next image may still work
                size = f" while {len(image) / 2**20:.1f} MiB were being sent" if len(image) > 2**20 else ""
                hint = (
                    " (a server closes the connection after answering 413 to a body over its request size "
                    "limit, 20 MiB by default)"
                    if size
                    else ""
                )
                raise HTTPError(0, f"request to {self.endpoint} failed{size}: {reason}{hint}", dropped=True) from None
            raise ServerUnreachable(
                f"cannot connect to {self.url} ({reason}). Is TorchServe running? "
                f"Start it with `python -m serve start`, or point --url at the inference API."
            ) from None
        except requests.exceptions.Timeout:
            raise HTTPError(0, f"no answer from {self.endpoint} within {self.timeout_s:g}s") from None
        except requests.exceptions.RequestException as e:
            raise HTTPError(0, f"request to {self.endpoint} failed: {e}") from None

    def _delay(self, attempt: int, response: Reply | None) -> float:
        delay = self.backoff_s * 2**attempt
        retry_after = response.headers.get("Retry-After", "") if response is not None else ""
        if retry_after.isdigit():
            delay = max(delay, float(retry_after))
        return min(delay, self.max_backoff_s)

    def predict(self, image: bytes) -> Predictions:
        """The server's top-k for one encoded image, highest first."""
        for attempt in range(self.retries + 1):
            try:
                response = self._post(image)
            except HTTPError as e:  # reset or closed under load: retried like a busy 503
                if e.status != 0 or not e.dropped or attempt == self.retries:
                    raise
                time.sleep(self._delay(attempt, None))
                continue
            if not is_busy(response) or attempt == self.retries:
                break
            time.sleep(self._delay(attempt, response))
        if response.ok:
            return parse_predictions(response)
        kind, message = error_body(response)
        if response.status_code == 404:
            raise ModelNotFound(
                f"model {self.model!r} is not served at {self.url} (HTTP 404: {message}). "
                f"Check --model; `python -m serve status` lists the models being served."
            )
        # TorchServe 0.12 refuses a missing or wrong key with 400 InvalidKeyException, not 401.
        if response.status_code == 401 or kind == "InvalidKeyException":
            raise AuthorizationFailed(
                f"HTTP {response.status_code} from {self.endpoint}: {message}. The server wants its inference key: "
                f'pass --token (or set {TOKEN_ENV}), e.g. --token "$(python -m serve token)"'
            )
        if is_busy(response):
            raise HTTPError(503, f"HTTP 503 from {self.endpoint} after {self.retries} retries: {message}")
        if kind == FORM_DECODER_TYPE:
            message = f"{message}; {FORM_HINT}"
        raise HTTPError(response.status_code, f"HTTP {response.status_code}: {message}")


def is_busy(response: Reply) -> bool:
    """A 503 that says "try again later" (TorchServe's type for it, or no JSON type at all, as a proxy
    in front of the server answers), not a prediction that failed."""
    if response.status_code != 503:
        return False
    kind, _ = error_body(response)
    return kind in BUSY_TYPES


def _reason(error: requests.exceptions.ConnectionError) -> tuple[str, bool]:
    """('connection refused', False), ... instead of urllib3's nested repr; the flag says whether a
    connection had been made (so the server exists, and only this request failed): only a failure to
    connect (refused, unknown host, connect timeout) means the server is unreachable."""
    cause = error.args[0] if error.args else None
    connected = not isinstance(getattr(cause, "reason", cause), NewConnectionError) and not isinstance(
        error, requests.exceptions.ConnectTimeout
    )
    text = str(error)
    for needle, reason in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("Temporary failure in name resolution", "unknown host"),
        ("No route to host", "no route to host"),
        ("ConnectTimeout", "connection timed out"),
        ("Connection reset", "connection reset by the server"),
        ("RemoteDisconnected", "the server closed the connection without answering"),
        ("Broken pipe", "the server closed the connection"),
        ("Connection aborted", "the server closed the connection"),
    ):
        if needle in text:
            return reason, connected
    return text, connected


__all__ = ["ClientError", "PredictionClient", "Predictions", "Reply", "error_body", "parse_predictions"]

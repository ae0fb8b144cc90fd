"""The served response: built by the servers' handlers, parsed by every client (standard library only);
also the Open Inference Protocol (v2) request of encoded images that the client and the probe send Triton.

An answer is, per image, a JSON object of its top-k `{"class name": probability}`, highest first; a
request of one image gets that object, a multipart request of several a list of them, in order. A
refusal is `{"code": N, "type": "Kind", "message": "..."}` with the same HTTP status.

A client trusts none of it: `parse_answer` reads at most `MAX_RESPONSE_BYTES`, refuses nesting deeper
than an answer has (a body of 100k `[` costs nothing), and refuses non-finite or out-of-range
probabilities, each as an `InvalidAnswer` that says what was wrong. `parse_json`, the depth-limited
parser under it, also reads the requests of KServe's envelopes (serve/envelope.py).
"""

from __future__ import annotations

import json
import math
import re
import struct

Prediction = list[tuple[str, float]]  # (class name, probability), highest first
MAX_RESPONSE_BYTES = 8 * 2**20  # 32 images x top-1000 of long class names fit many times over
MAX_DEPTH = 2  # a list of objects
PROBABILITY_SLACK = 1e-5  # rounding to 6 decimals may sum a little above 1
MAX_ERROR_TEXT = 300  # what of a refusal's text a client repeats
# A JSON string, or an unterminated one up to the end: linear (each quote starts at most one match).
STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
INNERMOST = re.compile(rb"[\[{][\]}]")


OVERLOADED = "Overloaded"  # the type of a 503 refusal that says "retry later" (with Retry-After)


class InvalidAnswer(ValueError):
    """The server's answer is not one this module builds."""


def prediction_object(prediction: Prediction) -> dict[str, float]:
    """One image's answer: `{"class name": probability}`, highest first."""
    return dict(prediction)


def answer(predictions: list[Prediction]) -> dict[str, float] | list[dict[str, float]]:
    """A request's answer: one image's object, or a list of them for several images."""
    objects = [prediction_object(p) for p in predictions]
    return objects[0] if len(objects) == 1 else objects


def refusal(code: int, kind: str, message: str) -> str:
    return json.dumps({"code": code, "type": kind, "message": message})


class InvalidJSON(ValueError):
    """A JSON text refused by `parse_json`: nested too deep, malformed, or holding NaN or Infinity."""


def _no_constant(name: str):
    raise InvalidJSON(f"holds {name}, not a number JSON allows")


def parse_json(content: bytes | bytearray | str, max_depth: int):
    """JSON of at most `max_depth` levels of nesting, without NaN or Infinity; else `InvalidJSON`, whose
        message completes "the answer ..." or "the request body ...". JSON is UTF-8 (RFC 8259): a binary body
    is "not valid JSON", whatever brackets it holds. The nesting is checked before parsing,
        at C speed (a body of 100k `[` costs nothing and never reaches the recursive parser)."""
    try:
        text = content if isinstance(content, str) else content.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidJSON(f"is not valid JSON (not UTF-8: {e}): {shorten(content)!r}") from None
    if nests_deeper(content.encode("utf-8", "replace") if isinstance(content, str) else content, max_depth):
        raise InvalidJSON(f"nests deeper than {max_depth} levels, more than it may")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        if isinstance(e, InvalidJSON):
            raise
        raise InvalidJSON(f"is not valid JSON ({e}): {shorten(content)!r}") from None


def load_json(content: bytes | str, max_depth: int = MAX_DEPTH):
    """An answer's JSON: at most `MAX_RESPONSE_BYTES`, else as `parse_json` (`InvalidAnswer` either way)."""
    if len(content) > MAX_RESPONSE_BYTES:
        raise InvalidAnswer(
            f"the answer is {len(content):,} bytes, above the {MAX_RESPONSE_BYTES:,} an answer may take"
        )
    try:
        return parse_json(content, max_depth)
    except InvalidJSON as e:
        raise InvalidAnswer(f"the answer {e}") from None


def nests_deeper(content: bytes | bytearray, max_depth: int) -> bool:
    """Whether `[` and `{` outside strings nest more than `max_depth` levels deep. Each regular-expression
    pass removes the innermost level (every adjacent opening and closing bracket): `max_depth` passes, then
    one search, each linear and none a loop per character in Python."""
    brackets = NOT_BRACKET.sub(b"", STRING.sub(b"", content))
    for _ in range(max_depth):
        brackets = INNERMOST.sub(b"", brackets)
    return INNERMOST.search(brackets) is not None


def parse_answer(content: bytes | str, images: int | None = None) -> list[Prediction]:
    """A 200's body -> one prediction per image, in order; `images` (when known) must match."""
    body = load_json(content)
    objects = body if isinstance(body, list) else [body]
    if images is not None and len(objects) != images:
        raise InvalidAnswer(f"{len(objects)} answers for {images} image(s): {shorten(content)!r}")
    return [parse_prediction(o, content) for o in objects]


V2_INPUT = "IMAGE"  # the Triton model's input: encoded image bytes (serve/triton_repo.py)
V2_NAMES, V2_PROBABILITIES = "CLASS_NAMES", "PROBABILITIES"  # the Triton model's outputs (serve/triton_backend.py)
V2_HEADER_LENGTH = "Inference-Header-Content-Length"
V2_SIZE_WIDTH = 12  # binary_data_size is right-aligned in this many characters
V2_DEPTH = 4  # {"outputs": [{"data": [...]}]}


def v2_request(images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a v2 inference request of `images` (one per batch row) with the binary extension."""
    # A BYTES element is its 4-byte little-endian length, then its bytes.
    elements = b"".join(struct.pack("<I", len(image)) + image for image in images)
    tensor = {"name": V2_INPUT, "shape": [len(images), 1], "datatype": "BYTES", "parameters": {"binary_data_size": 0}}
    outputs = [{"name": V2_NAMES, "parameters": {"binary_data": False}}, {"name": V2_PROBABILITIES}]
    header = json.dumps({"inputs": [tensor], "outputs": outputs}).replace(
        '"binary_data_size": 0', f'"binary_data_size": {len(elements):>{V2_SIZE_WIDTH}}'
    )
    headers = {V2_HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}
    return header.encode() + elements, headers


def parse_v2_answer(content: bytes | str) -> list[Prediction]:
    """An Open Inference Protocol (v2) answer of the served model -> one prediction per image, in order,
    checked like `parse_answer`'s (size, nesting, names with probabilities in [0, 1])."""
    body = load_json(content, max_depth=V2_DEPTH)
    try:
        outputs = {o["name"]: o for o in body["outputs"]}
        rows, k = outputs[V2_NAMES]["shape"]
        names, probabilities = outputs[V2_NAMES]["data"], outputs[V2_PROBABILITIES]["data"]
    except (TypeError, KeyError, ValueError) as e:
        raise InvalidAnswer(f"the v2 answer lacks {V2_NAMES}/{V2_PROBABILITIES} ({e}): {shorten(content)!r}") from None
    if not (isinstance(rows, int) and isinstance(k, int) and len(names) == len(probabilities) == rows * k):
        raise InvalidAnswer(f"the v2 answer's shapes do not match its data: {shorten(content)!r}")
    return [
        parse_prediction(dict(zip(map(str, names[i * k : (i + 1) * k]), probabilities[i * k : (i + 1) * k])), content)
        for i in range(rows)
    ]


def parse_prediction(body, content: bytes | str = b"") -> Prediction:
    if not isinstance(body, dict) or not body:
        raise InvalidAnswer(f"expected a JSON object of class -> probability, got {shorten(content)!r}")
    prediction = []
    for name, p in body.items():
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0 + PROBABILITY_SLACK:
            raise InvalidAnswer(f"class {shorten(name)!r} has probability {shorten(repr(p))}, not a number in [0, 1]")
        prediction.append((name, float(p)))
    if sum(p for _, p in prediction) > 1.0 + PROBABILITY_SLACK * len(prediction) or not all(
        math.isfinite(p) for _, p in prediction
    ):
        raise InvalidAnswer(f"the probabilities sum to {sum(p for _, p in prediction):.4f}, above 1")
    return prediction


def parse_refusal(content: bytes | str) -> tuple[str, str]:
    """(type, message) of an error body (ours or TorchServe's), or ("", the text, shortened)."""
    try:
        body = load_json(content, max_depth=1)
    except InvalidAnswer:
        body = None
    if isinstance(body, dict):
        kind = body.get("type") if isinstance(body.get("type"), str) else ""
        for key in ("message", "error", "detail"):
            if isinstance(body.get(key), str) and body[key]:
                return kind, shorten(body[key], MAX_ERROR_TEXT * 2)
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    return "", shorten(text.strip(), MAX_ERROR_TEXT)


def shorten(text, limit: int = 200):
    return text if len(text) <= limit else text[:limit] + ("..." if isinstance(text, str) else b"...")

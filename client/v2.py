"""The Open Inference Protocol (KServe v2), as Triton speaks it, for our image models: one encoded image
in (BYTES input IMAGE, binary extension), its top-k class names (BYTES) and probabilities (FP32) out.

Over HTTP with `requests` only: `POST /v2/models/<model>/infer` with a JSON header followed by the raw
bytes (length `Inference-Header-Content-Length`), and the outputs asked for as JSON. Over gRPC with
`grpcio` and no generated code: `ModelInfer` of inference.GRPCInferenceService, whose few message fields
we need are encoded and decoded here (protobuf wire format). Either way an error is a `ClientError`:
Triton's 400 / INVALID_ARGUMENT for a refused image, with its message.
"""

from __future__ import annotations

import argparse
import struct

import requests

from classify.response import V2_INPUT as INPUT
from classify.response import V2_NAMES as NAMES
from classify.response import V2_PROBABILITIES as PROBABILITIES
from classify.response import InvalidAnswer, load_json, parse_prediction, parse_v2_answer
from classify.response import v2_request as http_request

from .errors import AuthorizationFailed, ClientError, HTTPError, ModelNotFound
from .remote import PredictionClient

Predictions = list[tuple[str, float]]
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
PROTOCOLS = ("torchserve", "v2")  # what --protocol chooses: TorchServe's /predictions, or v2 (Triton)
GRPC_KEY_HEADER = "triton-grpc-protocol-authorization"  # Triton's name for a restricted protocol's key


class V2PredictionClient(PredictionClient):
    """`PredictionClient` (retries, errors, one session per thread) speaking v2 to Triton: one image per request."""

    def __init__(self, url: str, model: str, **options) -> None:
        super().__init__(url, model, **options)
        self.headers |= http_request([b""])[1]  # one image's JSON header has one length (V2_SIZE_WIDTH)

    @property
    def endpoint(self) -> str:
        return f"{self.url}/v2/models/{self.model}/infer"

    def predict(self, image: bytes) -> Predictions:
        response = self._post(http_request([image])[0])
        return parse_http_response(response.status_code, response.content)[0]


def add_protocol(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="torchserve",
        help="torchserve: POST /predictions/MODEL (serve start); v2: the Open Inference Protocol of "
        "serve start --server triton, http://localhost:8000 (default: %(default)s)",
    )


def prediction_client(protocol: str, url: str, model: str, **options) -> PredictionClient:
    """The client of `protocol`: "torchserve" (POST /predictions/MODEL) or "v2" (Triton)."""
    return (V2PredictionClient if protocol == "v2" else PredictionClient)(url, model, **options)


def parse_http_response(status: int, content: bytes) -> list[Predictions]:
    """A v2 JSON answer -> per image, [(class, probability), ...] (classify.response checks it); ClientError
    for an error answer or one that is not a valid answer."""
    if status != 200:
        try:
            body = load_json(content)
        except InvalidAnswer:
            body = None
        message = body.get("error") if isinstance(body, dict) else None
        raise error_for(status, str(message or content[:300].decode(errors="replace")))
    try:
        return parse_v2_answer(content)
    except InvalidAnswer as e:
        raise HTTPError(status, f"invalid answer from the server: {e}") from None


def v2_error_kind(status: int, content: bytes) -> str | None:
    """None for a good v2 answer, else a short name for what went wrong (`client openloop`'s tally)."""
    try:
        parse_http_response(status, content)
        return None
    except ClientError as e:
        return f"HTTP {status} {str(e).split(':', 1)[0]}" if status != 200 else f"HTTP 200 {type(e).__name__}"


def pair(names: list, probabilities: list) -> Predictions:
    """One image's names and probabilities, checked as every answer is (classify.response)."""
    if len(names) != len(probabilities):
        raise InvalidAnswer(f"{len(names)} names for {len(probabilities)} probabilities")
    return parse_prediction(
        {n.decode() if isinstance(n, bytes) else str(n): float(p) for n, p in zip(names, probabilities)}
    )


def error_for(status: int, message: str) -> ClientError:
    if status in (401, 403):
        return AuthorizationFailed(
            f"{status}: {message} (send the key: Authorization: Bearer $(python -m serve token))"
        )
    if status == 404:
        return ModelNotFound(message)
    return HTTPError(status, message)


def http_predict(session: requests.Session, url: str, model: str, image: bytes, headers: dict, timeout: float = 60):
    body, request_headers = http_request([image])
    response = session.post(
        f"{url}/v2/models/{model}/infer", data=body, headers=request_headers | headers, timeout=timeout
    )
    return parse_http_response(response.status_code, response.content)[0]


# --- gRPC: the protobuf wire format of the few fields ModelInferRequest/Response need -----------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages, packed repeated)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def grpc_request(model: str, image: bytes) -> bytes:
    """ModelInferRequest: model_name=1, inputs=5 {name=1, datatype=2, shape=3 (packed)}, outputs=6 {name=1},
    raw_input_contents=7 (the BYTES element, length-prefixed as over HTTP)."""
    tensor = field(1, INPUT.encode()) + field(2, b"BYTES") + field(3, varint(1) + varint(1))
    outputs = field(6, field(1, NAMES.encode())) + field(6, field(1, PROBABILITIES.encode()))
    return field(1, model.encode()) + field(5, tensor) + outputs + field(7, struct.pack("<I", len(image)) + image)


def read_fields(data: bytes) -> list[tuple[int, bytes | int]]:
    """(number, value) of every field of one message: bytes for length-delimited fields, int for varints."""
    fields, i = [], 0
    while i < len(data):
        key, i = read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 2:
            length, i = read_varint(data, i)
            fields.append((number, data[i : i + length]))
            i += length
        elif wire == 0:
            value, i = read_varint(data, i)
            fields.append((number, value))
        else:
            i += {1: 8, 5: 4}[wire]  # fixed64 / fixed32: nothing we read
    return fields


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def parse_grpc_response(data: bytes) -> Predictions:
    """ModelInferResponse: outputs=5 {name=1}, raw_output_contents=6 in the same order."""
    fields = read_fields(data)
    names = [dict(read_fields(o)).get(1, b"").decode() for n, o in fields if n == 5]
    raw = dict(zip(names, [value for n, value in fields if n == 6]))
    elements, i, blob = [], 0, raw[NAMES]
    while i < len(blob):
        (length,) = struct.unpack_from("<I", blob, i)
        elements.append(blob[i + 4 : i + 4 + length])
        i += 4 + length
    probabilities = struct.unpack(f"<{len(raw[PROBABILITIES]) // 4}f", raw[PROBABILITIES])
    return pair(elements, list(probabilities))


def grpc_predict(channel, model: str, image: bytes, key: str | None = None, timeout: float = 60) -> Predictions:
    """One image over gRPC on a `grpc.Channel`; the key goes as Triton's restricted-protocol metadata
    (`triton-grpc-protocol-authorization: Bearer KEY`)."""
    import grpc

    call = channel.unary_unary(GRPC_INFER, request_serializer=None, response_deserializer=None)
    metadata = [(GRPC_KEY_HEADER, f"Bearer {key}")] if key else None
    try:
        return parse_grpc_response(call(grpc_request(model, image), metadata=metadata, timeout=timeout))
    except grpc.RpcError as e:
        status = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404}
        code = e.code()
        http = status.get(code, 401 if code == grpc.StatusCode.UNAVAILABLE and "auth" in str(e.details()) else 500)
        raise error_for(http, f"{code.name}: {e.details()}") from None

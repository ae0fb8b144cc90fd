"""KServe's request envelopes, read and answered by the handler itself.

KServe's `kserve-torchserve` runtime sets TS_SERVICE_ENVELOPE (`kserve` for protocol v1, `kservev2` for
the open inference protocol). TorchServe's own envelopes for them (ts/torch_handler/request_envelope)
parse JSON without a depth limit (a deep body fails the worker call: 503), pass on only the first element
of a BYTES input and answer only the first request of a batch. So the KServe layout's config keeps
TorchServe's envelope off (`enable_envvars_config=false`, `decode_input_request=false`: every body
arrives as bytes) and this module reads each request of a batch as its own envelope:
- `kserve` (v1): `{"instances": [...]}`, each instance a base64 image: `{"data": "<base64>"}`,
  `{"data": {"b64": "<base64>"}}`, `{"b64": ...}` or a bare string; part names `instances[i]`; answered
  as `{"predictions": [...]}`, one per instance, or `{"predictions": [error]}`;
- `kservev2`: `{"id"?, "inputs": [{"name", "shape", "datatype": "BYTES", "data": [<base64>, ...]}]}`,
  every element of every input an image (part name: the input's name, `name[j]` where it holds several);
  answered as TorchServe's envelope answered, `{"id", "model_name", "model_version", "outputs": [...]}`
  with one output per input, named after it, `{"shape": [n], "datatype": "BYTES", "data": [...]}`. A
  failed request puts its error on the input at fault; the other inputs say why they were not classified.

The body is parsed with a depth limit (classify/response.py's `parse_json`): deep or malformed JSON, or a
body of another shape, gets 400 naming the problem (v2: as a bare `{"code", "type", "message"}`, there
being no inputs to put it on). One envelope's images are one request's images for
the handler's bounds and budget, and one failure fails the request.

Which layout a worker serves is explicit, never guessed from a request: model-config.yaml's
`handler.envelope`, else TS_SERVICE_ENVELOPE in the worker's environment. Outside an envelope, a
multipart field named "b64" or "datatype" is an ordinary part.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass

from classify.response import InvalidJSON, parse_json
from serve.refusal import RAW_BODY_NAMES, Refused, part_label

LAYOUTS = ("kserve", "kservev2")
MAX_DEPTH = 6  # {"instances": [{"data": {"b64": ...}}]} is 4, with room for v2 `parameters`
WHITESPACE = re.compile(rb"\s+")
USAGE = (
    'send each image file base64-encoded: {"instances": [{"data": "<base64>"}]} or '
    '{"instances": [{"data": {"b64": "<base64>"}}]} (protocol v1), '
    '{"inputs": [{"name": "cat", "shape": [1], "datatype": "BYTES", "data": ["<base64>"]}]} (v2)'
)


def layout(handler_config: dict) -> str | None:
    """The envelope this worker's requests come in: None (TorchServe's own API), kserve or kservev2."""
    name = handler_config.get("envelope") or os.environ.get("TS_SERVICE_ENVELOPE") or None
    if name is not None and name not in LAYOUTS:
        raise ValueError(f"envelope {name!r}: this handler knows {', '.join(LAYOUTS)} (or none)")
    return name


@dataclass(frozen=True)
class Envelope:
    """One request's envelope: its inputs in order, each a name and its elements (or why it has none)."""

    layout: str
    inputs: tuple[tuple[str, tuple | Refused], ...]
    request_id: str | None = None  # v2's `id`

    def parts(self):
        """(part name, input name, element) for every element of every input, in order; `Refused` for the
        first input that is not a list of images."""
        for name, elements in self.inputs:
            if isinstance(elements, Refused):
                raise elements
            for j, element in enumerate(elements):
                yield (f"{name}[{j}]" if len(elements) > 1 else name), name, element

    def images(self) -> list[tuple[str, bytes]]:
        """Every element of every input as (part name, image bytes), in order; `Refused` 400 naming the
        first input or element that holds no base64 image."""
        return [(part, image_bytes(element, part)) for part, _, element in self.parts()]

    def answer(self, predictions: list[dict], request_id: str, model: dict) -> dict:
        """The answer to a request whose every image was classified: one prediction per image, in order."""
        if self.layout == "kserve":
            return {"predictions": predictions}
        outputs, start = [], 0
        for name, elements in self.inputs:
            outputs.append(output(name, predictions[start : start + len(elements)]))
            start += len(elements)
        return self.v2_response(outputs, request_id, model)

    def refusal(self, refusal: Refused, request_id: str, model: dict) -> dict:
        """The answer to a failed request: v1, the error as its prediction; v2, the error on the input at
        fault (on every input when the whole request was refused) and the others not classified."""
        error = json.loads(refusal.body())
        if self.layout == "kserve":
            return {"predictions": [error]}
        at_fault = next((name for name, _ in self.inputs if refusal.part == name), None)
        if at_fault is None and refusal.part is not None:  # an element of an input of several
            at_fault = next((name for part, name, _ in self.parts() if part == refusal.part), None)
        skipped = Refused(refusal.code, "NotClassified", f"not classified: input {at_fault!r} of this request failed")
        outputs = [
            output(name, [error if at_fault in (None, name) else json.loads(skipped.body())]) for name, _ in self.inputs
        ]
        return self.v2_response(outputs, request_id, model)

    def v2_response(self, outputs: list[dict], request_id: str, model: dict) -> dict:
        response = {"id": self.request_id or request_id, "model_name": model.get("modelName")}
        return {**response, "model_version": model.get("modelVersion"), "outputs": outputs}


def unreadable(layout_name: str, refusal: Refused) -> dict:
    """The answer to a request whose body is no envelope (v2: no inputs to put the error on)."""
    error = json.loads(refusal.body())
    return {"predictions": [error]} if layout_name == "kserve" else error


def output(name: str, data: list) -> dict:
    """A v2 output as TorchServe's kservev2 envelope wrote a handler's list of objects."""
    return {"name": name, "datatype": "BYTES", "data": data, "shape": [len(data)]}


def read(layout_name: str, request: dict) -> Envelope:
    """One request of the batch (TorchServe's {"body": bytes}) as its envelope; `Refused` 400 naming what is
    wrong when the body is not one: not JSON, nested too deep, of another shape, or v2 inputs without names."""
    if len(request) != 1 or next(iter(request)) not in RAW_BODY_NAMES:
        raise Refused(400, "InvalidRequest", f"expected one JSON body, got a form of {len(request)} part(s); {USAGE}")
    [body] = request.values()
    try:
        document = parse_json(body if isinstance(body, (bytes, bytearray, str)) else b"", MAX_DEPTH)
    except InvalidJSON as e:
        raise Refused(400, "InvalidRequest", f"the request body {e}; {USAGE}") from None
    key = "instances" if layout_name == "kserve" else "inputs"
    values = document.get(key) if isinstance(document, dict) else None
    if not isinstance(values, list) or not values:
        raise Refused(400, "InvalidRequest", f'expected {{"{key}": [...]}} with at least one image; {USAGE}')
    if layout_name == "kserve":
        return Envelope(layout_name, tuple((f"instances[{i}]", (value,)) for i, value in enumerate(values)))
    names = [value.get("name") if isinstance(value, dict) else None for value in values]
    if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
        raise Refused(400, "InvalidRequest", f"every v2 input needs a name of its own, got {names!r:.200}; {USAGE}")
    request_id = document.get("id")
    return Envelope(
        layout_name,
        tuple((name, v2_elements(value, name)) for name, value in zip(names, values)),
        request_id if isinstance(request_id, str) and request_id.strip() else None,
    )


def v2_elements(value: dict, name: str) -> tuple | Refused:
    """A v2 input's elements, or its `Refused` 400 when it is not a flat BYTES list of its `shape`."""
    data, shape, where = value.get("data"), value.get("shape"), part_label(name)
    if value.get("datatype") != "BYTES":
        return Refused(
            400, "InvalidImage", f"{where}a {value.get('datatype')} tensor, not image bytes; {USAGE}", part=name
        )
    if not isinstance(data, list) or not data or shape != [len(data)]:
        size = len(data) if isinstance(data, list) else type(data).__name__
        return Refused(
            400,
            "InvalidImage",
            f"{where}shape {shape!r:.40} with data of {size}: a BYTES input is a flat list of base64 images, of "
            "shape [number of images]",
            part=name,
        )
    return tuple(data)


def image_bytes(instance, name: str) -> bytes:
    """The image file inside one instance or v2 element; `Refused` 400 (naming it) when it holds none, more
    than one, or malformed base64."""
    where, value = part_label(name), instance
    for _ in range(2):  # {"data": {"b64": ...}} is the deepest shape
        if not isinstance(value, dict):
            break
        value = value["b64"] if "b64" in value else value.get("data")
    if not isinstance(value, str):
        raise Refused(
            400, "InvalidImage", f"{where}no base64 image found (got {type(value).__name__}); {USAGE}", part=name
        )
    try:
        # Line breaks (MIME-style base64) are allowed; any other stray character is an error.
        return base64.b64decode(WHITESPACE.sub(b"", value.encode("ascii")), validate=True)
    except (UnicodeEncodeError, binascii.Error) as e:
        raise Refused(400, "InvalidImage", f"{where}malformed base64 ({e}); {USAGE}", part=name) from None

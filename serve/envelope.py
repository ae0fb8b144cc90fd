"""KServe's requests as TorchServe's `kserve` and `kservev2` envelopes hand them to the handler.

KServe's TorchServe runtime sets TS_SERVICE_ENVELOPE (honoured with `enable_envvars_config=true`, or
`service_envelope=` in config.properties). TorchServe 0.12's envelopes (ts/torch_handler/request_envelope)
then call the handler not with one row per request but with:
- `kserve` (protocol v1, `{"instances": [...]}`): the `instances` of the batch's first request, each one
  JSON value: `{"data": "<base64>"}`, `{"data": {"b64": "<base64>"}}`, `{"b64": ...}` or a bare string;
  whatever list the handler returns becomes that request's `{"predictions": [...]}`;
- `kservev2` (open inference protocol, `{"inputs": [...]}`): the first request's inputs, each a dict
  `{"name", "shape", "datatype", "data"}` whose BYTES `data` is cut down to its first element; the
  handler's list becomes `outputs`, one per input, named after it.
Requests batched together are not split: every request after the first is dropped and the batch fails
("number of batch response mismatched"), so under an envelope the model must run with batchSize 1.

This module recognises such rows and turns each instance into image bytes; the handler treats one
envelope's instances as the images of one request (its bounds, one failure fails it).
"""

from __future__ import annotations

import base64
import binascii
import re

from serve.refusal import Refused

INSTANCE_NAME = "instances[{}]"
WHITESPACE = re.compile(rb"\s+")
USAGE = (
    'send each image file base64-encoded: {"instances": [{"data": "<base64>"}]}, '
    '{"data": {"b64": "<base64>"}} (protocol v1) or a BYTES input (v2)'
)


def is_instance(row) -> bool:
    """Whether `row` is an envelope's instance rather than TorchServe's {parameter name: value} map."""
    if not isinstance(row, dict):
        return True  # a request row is always a dict; instances may be bare strings
    return "datatype" in row or set(row) == {"b64"} or isinstance(row.get("data"), (str, dict))


def enveloped(rows, requests: int) -> bool:
    """Whether `rows` are one request's instances: their number differs from the batch's requests (an
    envelope put them there), or they have an instance's shape.

    An envelope hands over one request only (the model runs with batchSize 1 under one), so a batch of
    several requests is never read as one request's instances: a client whose form field merely looks
    like an instance (a text part named "data") must fail its own request, not its batch neighbours'."""
    if requests > 1:
        return False
    return not isinstance(rows, list) or len(rows) != max(requests, 1) or any(is_instance(row) for row in rows)


def as_request(instances) -> dict:
    """An envelope's instances as one request's named parts, in order (a request without a list of
    instances, e.g. no "instances" key, is one part that holds no image)."""
    if not isinstance(instances, list):
        return {"instances": instances}
    return {INSTANCE_NAME.format(i): instance for i, instance in enumerate(instances)}


def image_bytes(instance, where: str) -> bytes:
    """The image file inside one instance; `Refused` 400 when it holds none or its base64 is malformed."""
    value = instance
    for _ in range(2):  # {"data": {"b64": ...}} is the deepest shape
        if not isinstance(value, dict):
            break
        datatype = value.get("datatype")
        if datatype is not None and datatype != "BYTES":
            raise Refused(400, "InvalidImage", f"{where}a {datatype} tensor, not image bytes; {USAGE}")
        value = value["b64"] if "b64" in value else value.get("data")
    if not isinstance(value, str):
        raise Refused(400, "InvalidImage", f"{where}no base64 image found (got {type(value).__name__}); {USAGE}")
    try:
        # Line breaks (MIME-style base64) are allowed; any other stray character is an error.
        return base64.b64decode(WHITESPACE.sub(b"", value.encode("ascii")), validate=True)
    except (UnicodeEncodeError, binascii.Error) as e:
        raise Refused(400, "InvalidImage", f"{where}malformed base64 ({e}); {USAGE}") from None

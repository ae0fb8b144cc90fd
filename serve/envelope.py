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

Which layout a worker serves is explicit, never guessed from a request: model-config.yaml's
`handler.envelope`, else TS_SERVICE_ENVELOPE in the worker's environment (KServe's runtime sets it).
Outside an envelope, a multipart field named "b64" or "datatype" is an ordinary part.

This module turns each instance into image bytes; the handler treats one envelope's instances as the
images of one request (its bounds, one failure fails it) and answers one output per input, in order.
TorchServe's kservev2 envelope passes on only the first element of a BYTES input, so an input of
shape other than [1] is refused by name rather than answered for its first image alone. Its JSON is
parsed by the envelope before the handler runs: a body nested too deep fails there (503), out of
this module's reach.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re

from serve.refusal import Refused, part_label

LAYOUTS = ("kserve", "kservev2")
INSTANCE_NAME = "instances[{}]"
WHITESPACE = re.compile(rb"\s+")
USAGE = (
    'send each image file base64-encoded: {"instances": [{"data": "<base64>"}]}, '
    '{"data": {"b64": "<base64>"}} (protocol v1) or one BYTES input of shape [1] per image (v2)'
)


def layout(handler_config: dict) -> str | None:
    """The envelope this worker's requests come in: None (TorchServe's own API), kserve or kservev2."""
    name = handler_config.get("envelope") or os.environ.get("TS_SERVICE_ENVELOPE") or None
    if name is not None and name not in LAYOUTS:
        raise ValueError(f"envelope {name!r}: this handler knows {', '.join(LAYOUTS)} (or none)")
    return name


def as_request(instances) -> dict:
    """An envelope's instances as one request's named parts, in order: `instances[i]` (v1) or the
    input's own name (v2). A request without a list of instances is one part that holds no image."""
    if not isinstance(instances, list):
        return {"instances": instances}
    names = [input_name(instance, i) for i, instance in enumerate(instances)]
    if len(set(names)) != len(names):  # two v2 inputs of one name: keep each, told apart by position
        names = [INSTANCE_NAME.format(i) for i in range(len(instances))]
    return dict(zip(names, instances))


def input_name(instance, index: int) -> str:
    if isinstance(instance, dict) and "datatype" in instance and isinstance(instance.get("name"), str):
        return instance["name"]
    return INSTANCE_NAME.format(index)


def image_bytes(instance, name: str) -> bytes:
    """The image file inside one instance; `Refused` 400 (naming it) when it holds none, more than one,
    or malformed base64."""
    where, value = part_label(name), instance
    if isinstance(value, dict) and "datatype" in value:
        shape = value.get("shape")
        if not (isinstance(shape, list) and all(isinstance(n, int) for n in shape) and math.prod(shape) == 1):
            raise Refused(
                400,
                "InvalidImage",
                f"{where}shape {shape}: one image per BYTES input (shape [1]); send each image as its own input",
                part=name,
            )
    for _ in range(2):  # {"data": {"b64": ...}} is the deepest shape
        if not isinstance(value, dict):
            break
        datatype = value.get("datatype")
        if datatype is not None and datatype != "BYTES":
            raise Refused(400, "InvalidImage", f"{where}a {datatype} tensor, not image bytes; {USAGE}", part=name)
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

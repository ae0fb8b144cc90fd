"""One request's failure as the handler answers it: an HTTP code and a JSON message of bounded length.

It lives outside serve/handler.py because TorchServe's model loader insists that the handler module
defines exactly one class (a second one stops every worker from loading).
"""

from __future__ import annotations

import json

RAW_BODY_NAMES = ("body", "data")  # TorchServe's parameter names for a request's raw body
MAX_MESSAGE_CHARS = 500  # an error message sent back, whatever exception text it quotes
MAX_NAME_CHARS = 60  # a multipart part name echoed in a message
PHRASES = {400: "Bad Request", 413: "Payload Too Large", 500: "Internal Server Error"}
HOW_TO_CHANGE = "the archive's model-config.yaml, handler.{key}; python -m serve package --{flag} N"


class Refused(Exception):
    """One request's failure, answered as its own HTTP `code` with a JSON `{"code", "type", "message"}`."""

    def __init__(self, code: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.code, self.kind = code, kind
        self.message = message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 3] + "..."

    def body(self) -> str:
        return json.dumps({"code": self.code, "type": self.kind, "message": self.message})


def part_label(name: str) -> str:
    """ "part 'NAME': " for a multipart part (the name cut short), "" for a raw body."""
    if name in RAW_BODY_NAMES:
        return ""
    if len(name) > MAX_NAME_CHARS:
        name = name[: MAX_NAME_CHARS - 3] + "..."
    return f"part {name!r}: "

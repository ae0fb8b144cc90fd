"""One request's failure as the handler answers it: an HTTP code, a JSON message of bounded length and,
for a request shed under load (503), a Retry-After header.

It lives outside serve/handler.py because TorchServe's model loader insists that the handler module
defines exactly one class (a second one stops every worker from loading).
"""

from __future__ import annotations

from classify.response import refusal

RAW_BODY_NAMES = ("body", "data")  # TorchServe's parameter names for a request's raw body
MAX_MESSAGE_CHARS = 500  # an error message sent back, whatever exception text it quotes
MAX_NAME_CHARS = 60  # a multipart part name echoed in a message
PHRASES = {400: "Bad Request", 413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
HOW_TO_CHANGE = "the archive's model-config.yaml, handler.{key}; python -m serve package --{flag} N"


def how_to_change(key: str, flag: str) -> str:
    """Where a TorchServe archive's operator raises the limit `key` (`serve package --flag`)."""
    return HOW_TO_CHANGE.format(key=key, flag=flag)


class Refused(Exception):
    """One request's failure, answered as its own HTTP `code` with a JSON `{"code", "type", "message"}`."""

    def __init__(
        self, code: int, kind: str, message: str, retry_after_s: int | None = None, part: str | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.kind, self.retry_after_s = code, kind, retry_after_s
        self.part = part  # the part (envelope input) at fault, when one is
        self.message = message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 3] + "..."

    def body(self) -> str:
        return refusal(self.code, self.kind, self.message)


def part_label(name: str) -> str:
    """ "part 'NAME': " for a multipart part (the name cut short), "" for a raw body."""
    if name in RAW_BODY_NAMES:
        return ""
    if len(name) > MAX_NAME_CHARS:
        name = name[: MAX_NAME_CHARS - 3] + "..."
    return f"part {name!r}: "

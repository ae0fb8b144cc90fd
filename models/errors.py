"""Error text shared by every layer above `models`."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """An exception's first message line (or its type name): enough to say what failed, in one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

"""The bounds on one request's work, judged before any pixel is decoded: how many images, how many bytes,
and how many pixels they decode to (read from their headers by `models.imageio.decoded_pixels`, a JPEG
after its draft-mode reduction), and the handler call's work budget (serve/budget.py). Server-neutral: the
TorchServe handler and the Triton backend both call `admit`; each refusal is a
`Refused` whose message says which limit, and where the server's operator changes it (`how_to_change`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from classify.response import OVERLOADED
from models.imageio import ImageDecodeError, pixel_counts
from serve.budget import CallBudget, OverBudget, Overloaded
from serve.package import DEFAULT_MAX_IMAGES, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_REQUEST_PIXELS
from serve.refusal import Refused, part_label

if TYPE_CHECKING:
    from models import EncodedImageTransform

Part = tuple[str, bytes]  # (part name, encoded image)


@dataclass(frozen=True)
class RequestLimits:
    max_images: int = DEFAULT_MAX_IMAGES
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES


@dataclass(frozen=True)
class Admitted:
    """A request within its bounds: its parts, and what its images cost (for the call's budget)."""

    parts: list[Part]
    source_pixels: list[int]  # per image, as stored in the file (what decoding costs)
    decoded_pixels: int  # all images, after draft-mode reduction (what the request holds in memory)


def admit(
    parts: Sequence[Part],
    transform: EncodedImageTransform,
    limits: RequestLimits,
    how_to_change: Callable[[str, str], str],
    call: CallBudget | None = None,
) -> Admitted:
    """`parts` when they are within `limits` (and fit `call`, the handler call's work budget), else `Refused`:
    413 over a limit or a budget no call could meet, 503 with Retry-After for a call that is full now, 400
    for what is no image. `how_to_change(key, flag)` names where the operator raises the limit `key`."""
    if not parts:
        raise Refused(400, "InvalidImage", "empty request: no image")
    if len(parts) > limits.max_images:
        raise Refused(
            413,
            "TooManyImages",
            f"{len(parts)} images in one request, above this model's limit of {limits.max_images}; send them in "
            f"several requests (the limit is set in {how_to_change('max_images', 'max-images')})",
        )
    size = sum(len(data) for _, data in parts)
    if size > limits.max_request_bytes:
        raise Refused(
            413,
            "RequestTooLarge",
            f"the images of this request are {size:,} bytes, above this model's limit of "
            f"{limits.max_request_bytes:,}; send smaller images or fewer per request (the limit is set in "
            f"{how_to_change('max_request_bytes', 'max-request-bytes')})",
        )
    sources, total = [], 0
    for count, (name, data) in enumerate(parts, 1):
        try:
            source, decoded = pixel_counts(data, max_pixels=transform.max_pixels, draft_size=transform.spec.resize_size)
        except ImageDecodeError as e:
            raise Refused(400, "InvalidImage", f"{part_label(name)}{e}", part=name) from None
        sources.append(source)
        total += decoded
        if total > limits.max_request_pixels:
            raise Refused(
                413,
                "TooManyPixels",
                f"the images of this request decode to more than {limits.max_request_pixels:,} pixels in all "
                f"({total:,} after {count} of {len(parts)}), this model's limit; send smaller images or fewer per "
                f"request (the limit is set in {how_to_change('max_request_pixels', 'max-request-pixels')})",
            )
    if call is not None:
        try:
            call.admit(sources, total)
        except OverBudget as e:
            raise Refused(
                413, "TooMuchWork", f"{e} (the timeout is set by python -m serve package --response-timeout N)"
            ) from None
        except Overloaded as e:
            raise Refused(503, OVERLOADED, str(e), retry_after_s=e.retry_after_s) from None
    return Admitted(list(parts), sources, total)

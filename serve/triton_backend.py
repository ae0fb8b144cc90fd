"""Triton's Python backend over our `Classifier`: encoded images in, top-k class names and probabilities out.

Triton's dynamic batcher hands `execute` up to `max_batch_size` images from several requests; it answers
one `InferenceResponse` per request, each with its own error, so one bad image fails only its own
request (INVALID_ARG, HTTP 400, for bad or oversized input; INTERNAL otherwise) and never its batch
neighbours. Per request, `admit` bounds the work from the images' headers before any decode
(serve/bounds.py: images, bytes, decoded pixels); the good images of every request then go through one
`Classifier.probabilities` (in chunks of the batch size), retried request by request if it fails.

The tensors (serve/triton_repo.py writes them into config.pbtxt):
  IMAGE          BYTES [n, 1]  one encoded image (JPEG, PNG, ...) per row
  CLASS_NAMES    BYTES [n, K]  the top-k class names per image, highest first
  PROBABILITIES  FP32  [n, K]  their probabilities
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from classify.classifier import Classifier
from hostinfo import usable_cores
from models.errors import first_line
from models.imageio import DEFAULT_MAX_PIXELS, ImageDecodeError
from serve.bounds import RequestLimits, admit
from serve.budget import CallBudget, ImageCost
from serve.calibrate import budget_here
from serve.refusal import Refused

INPUT, NAMES, PROBABILITIES = "IMAGE", "CLASS_NAMES", "PROBABILITIES"
EXPORT_FOLDER = "export"  # inside the model version folder: manifest.json and the artifacts
HOW_TO_CHANGE = "the model's config.pbtxt, parameter {key}; python -m serve triton-repo --{flag} N"
logger = logging.getLogger(__name__)


class TritonPythonModel:
    """What Triton's Python backend instantiates (one per instance, each in its own stub process)."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        export_dir = Path(args["model_repository"]) / args["model_version"] / EXPORT_FOLDER
        threads = int(parameters.get("threads") or 0) or max(1, usable_cores() // int(parameters.get("instances", 1)))
        self.classifier = Classifier.from_export(
            export_dir,
            fmt=parameters.get("backend") or None,
            threads=threads,
            allow_failed=parameters.get("allow_failed") == "true",
            top_k=int(parameters.get("top_k", 5)),
            max_pixels=int(parameters.get("max_pixels") or DEFAULT_MAX_PIXELS),
            batch_size=max(1, int(config.get("max_batch_size", 1))),
        )
        runner = self.classifier.runner
        torch.set_num_threads(threads if runner.computes_in_torch or runner.device != "cpu" else 1)
        self.limits = RequestLimits(
            **{key: int(parameters[key]) for key in RequestLimits.__dataclass_fields__ if key in parameters}
        )
        # The per-call work budget (serve/budget.py), as in the TorchServe handler; a repository written
        # before it was measured has none.
        self.budget = (
            budget_here(
                self.classifier,
                self.classifier.batch_size,
                call_s=float(parameters["call_s"]),
                max_call_pixels=self.limits.max_request_pixels,
                recorded=ImageCost.from_dict(parameters),
                measure_again=parameters.get("cost_source") != "given",
                log=logger.log,
            )
            if "call_s" in parameters
            else None
        )

    def execute(self, requests: list) -> list:
        """One response per request, in order; the call's work within its budget (503 for what does not fit)."""
        started, call = time.perf_counter(), self.budget.start_call() if self.budget else None
        admitted = [self.pixels(request, call) for request in requests]
        responses = [self.respond(result) for result in self.probabilities(admitted)]
        if call is not None:
            self.budget.observe(call.estimated_s, time.perf_counter() - started)
        return responses

    def pixels(self, request, call: CallBudget | None = None) -> list[torch.Tensor] | Refused:
        """The request's images, bounded (`admit`) and then decoded, resized and cropped; or its refusal."""
        try:
            tensor = pb_utils.get_input_tensor_by_name(request, INPUT)
            if tensor is None:
                raise Refused(400, "InvalidImage", f"no {INPUT} input: send the encoded images as BYTES input {INPUT}")
            images = [bytes(item) for item in tensor.as_numpy().reshape(-1)]
            names = ["body"] if len(images) == 1 else [f"image {i}" for i in range(len(images))]
            parts = admit(
                list(zip(names, images)),
                self.classifier.transform,
                self.limits,
                lambda key, flag: HOW_TO_CHANGE.format(key=key, flag=flag),
                call,
            ).parts
            return [self.classifier.pixels(data) for _, data in parts]
        except Refused as e:
            return e
        except ImageDecodeError as e:
            return Refused(400, "InvalidImage", str(e))
        except Exception as e:  # MemoryError included: the batch's other requests must still be answered
            logger.exception("processing a request failed")
            return Refused(500, "ImageProcessingFailed", f"processing the image failed: {first_line(e)}")

    def probabilities(self, admitted: list) -> list:
        """Per request: its probability rows, or its refusal. One forward pass over every good image; if it
        fails, each request again on its own, so an input that breaks it fails only its own request."""
        good = [images for images in admitted if not isinstance(images, Refused)]
        try:
            rows = iter(self.classifier.probabilities([image for images in good for image in images]))
            return [r if isinstance(r, Refused) else torch.stack([next(rows) for _ in r]) for r in admitted]
        except Exception as e:
            if len(good) < 2:
                return [r if isinstance(r, Refused) else inference_failed(e) for r in admitted]
            logger.exception("the forward pass of %d requests failed; retrying them one at a time", len(good))
        return [r if isinstance(r, Refused) else self.probabilities([r])[0] for r in admitted]

    def respond(self, result: torch.Tensor | Refused):
        if isinstance(result, Refused):
            code = (
                pb_utils.TritonError.INVALID_ARG
                if result.code < 500
                else pb_utils.TritonError.UNAVAILABLE
                if result.code == 503
                else pb_utils.TritonError.INTERNAL
            )
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{result.kind}: {result.message}", code))
        ranked = [self.classifier.top_k_of(row) for row in result]
        names = np.array([[name.encode() for name, _ in row] for row in ranked], dtype=np.object_)
        probabilities = np.array([[p for _, p in row] for row in ranked], dtype=np.float32)
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(NAMES, names), pb_utils.Tensor(PROBABILITIES, probabilities)]
        )

    def finalize(self) -> None:
        self.classifier = None


def inference_failed(error: Exception) -> Refused:
    logger.error("inference failed", exc_info=error)
    return Refused(
        500,
        "InferenceFailed",
        f"the model failed on this request ({first_line(error)}); the server logs have the details; "
        "sending the same images again will fail the same way",
    )

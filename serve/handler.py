"""The TorchServe handler: image bytes in, top-k `{"label": probability}` out, for any exported artifact.

`python -m serve package` puts this file into every model archive next to the export's
`manifest.json`, its artifact(s) and `model-config.yaml`; TorchServe imports it as a top-level module
in each worker, so it only uses absolute imports of our installed packages.

What it does per batch (TorchServe's dynamic batching hands it up to `batchSize` requests at once):
- each request is a raw body (`curl -T cat.jpg`) or a multipart form with one image per part; under
  KServe's layout each request is its own JSON envelope of base64 images (serve/envelope.py), answered
  in its format (`{"predictions": [...]}`, or v2 `outputs`) or, when one image fails, with its error;
- everything from bytes to labels is `classify.classifier.Classifier` (the manifest's preprocessing,
  the runner, softmax and top-k), the same object `client --local` and `train --predict` use; this
  module only adds TorchServe's plumbing: per image `Classifier.pixels`, on as many threads as the
  worker has (Pillow's decoder and PyTorch's resize release the GIL), then one
  `Classifier.probabilities` for all good images of the batch;
- work per request is bounded before any pixel is decoded: a request with more than `max_images`
  images, or whose images would decode to more than `max_request_pixels` pixels in all (read from the
  headers by `models.imageio.pixel_counts`, JPEG after its draft-mode reduction), gets HTTP 413;
  the forward pass runs in chunks of the configured batch size (`Classifier.logits`);
- work per call (the whole batch) is bounded too, by serve/budget.py: each request is priced from its
  files' pixels with the cost `serve package` measured (checked again when the worker loads,
  serve/calibrate.py); one that no call could finish within the
  response timeout gets 413, one that does not fit what the call's earlier requests left gets 503 with
  Retry-After, before any of its work starts, so valid traffic never runs a worker into the timeout;
- every failure is its own request's: a bad image gets HTTP 400, any other exception on an image's
  way (decode, resize, MemoryError) HTTP 500, a forward pass that fails for a batch is retried one
  request at a time and only the requests that fail again get HTTP 500. Each is a JSON
  `{"code", "type", "message"}` set through `context.set_response_status(code, phrase, idx)`; raising
  instead would make TorchServe fail every request of the batch with 503. Messages and the part names
  they echo are cut to a bounded length.

Model-config keys read from `handler:` in model-config.yaml (all optional): `backend` (an artifact format,
else the fastest that passed parity on the device), `allow_failed`, `top_k`, `max_pixels` (per image),
`max_images` and `max_request_pixels` (per request; defaults in serve/package.py), `cost` (serve/budget.py's
ImageCost) and `cost_source` (`measured`: checked again on load; `given`: kept), `threads` (the runner's intra-op threads; default: the usable cores / the workers).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from ts.torch_handler.base_handler import BaseHandler

from classify.classifier import Classifier
from classify.response import answer, prediction_object
from hostinfo import usable_cores
from models.errors import first_line
from models.imageio import DEFAULT_MAX_PIXELS, ImageDecodeError
from serve import envelope
from serve.bounds import RequestLimits, admit
from serve.budget import HEADROOM, ImageCost
from serve.calibrate import budget_here
from serve.package import DEFAULT_MAX_IMAGES, DEFAULT_MAX_REQUEST_PIXELS
from serve.refusal import PHRASES, Refused, how_to_change, part_label

logger = logging.getLogger(__name__)


class ImageClassifierHandler(BaseHandler):
    """Classifies images with an export directory's artifact; one bad image fails only its own request."""

    def initialize(self, context):
        properties = context.system_properties
        model_config = context.model_yaml_config or {}
        config = model_config.get("handler", {})
        self.context, self.manifest = context, context.manifest
        gpu_id = properties.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            torch.cuda.set_device(int(gpu_id))
            device = "cuda"
        else:
            device = "cpu"
        threads = int(config.get("threads") or threads_per_worker(model_config))
        self.classifier = Classifier.from_export(
            properties["model_dir"],
            fmt=config.get("backend"),
            device=device,
            threads=threads,
            allow_failed=bool(config.get("allow_failed", False)),
            top_k=int(config.get("top_k", 5)),
            max_pixels=int(config.get("max_pixels", DEFAULT_MAX_PIXELS)),
            batch_size=int(model_config.get("batchSize") or 1),  # one forward pass never exceeds a batch
        )
        self.envelope = envelope.layout(config)
        self.enveloped = self.envelope is not None
        self.limits = RequestLimits(
            max_images=int(config.get("max_images", DEFAULT_MAX_IMAGES)),
            max_request_pixels=int(config.get("max_request_pixels", DEFAULT_MAX_REQUEST_PIXELS)),
        )
        self.budget = budget_here(
            self.classifier,
            self.classifier.batch_size,
            call_s=float(model_config.get("responseTimeout") or 120) / HEADROOM,
            max_call_pixels=self.limits.max_request_pixels,
            recorded=ImageCost.from_dict(config["cost"]) if "cost" in config else None,
            measure_again=config.get("cost_source") != "given",
            log=logger.log,
        )
        self.runner = self.classifier.runner
        torch.set_num_threads(torch_threads(self.runner, threads))
        # A batch's images decode in parallel: one thread would leave the worker's other cores idle
        # until the forward pass.
        self.decode_pool = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 1 else None
        self.initialized = True
        logger.info(
            "serving %s on %s with %d thread(s) (PyTorch's: %d), %d classes, top-%d, forward passes of <= %s, "
            "requests of <= %d images and <= %d decoded pixels, calls of <= %.1f s at %s",
            self.runner.format,
            device,
            threads,
            torch.get_num_threads(),
            len(self.classifier.class_names),
            self.classifier.top_k,
            self.classifier.batch_size,
            self.limits.max_images,
            self.limits.max_request_pixels,
            self.budget.call_s,
            self.budget.cost,
        )

    def handle(self, data, context):
        """preprocess -> inference -> postprocess, one answer per request, in order.

        Replaces BaseHandler.handle, whose request headers `explain: True` / `describe: True` switch to
        code paths (captum insights, one description per batch) that would fail every request of the batch.
        """
        start = time.perf_counter()
        self.context, self.call = context, self.budget.start_call()
        self.envelopes = [None] * len(data)  # each request's envelope, as `admit` reads it
        output = self.postprocess(self.inference(self.preprocess(data)))
        elapsed = time.perf_counter() - start
        self.budget.observe(self.call.estimated_s, elapsed)
        if context.metrics is not None:
            context.metrics.add_time("HandlerTime", round(elapsed * 1000, 2), None, "ms")
        return output

    def preprocess(self, data):
        """Check every request's bounds, then decode, resize and crop the images of those within them.

        Returns (uint8 pixels of every good image; image count per request; `Refused` or None per
        request). A request's images are consecutive; one failed image fails its whole request.
        """
        requests, errors = [], []
        for idx, request in enumerate(data):
            try:
                requests.append(self.admit(idx, request))
                errors.append(None)
            except Refused as e:
                requests.append([])
                errors.append(e)
            except Exception as e:  # reading headers must not fail the batch either
                logger.exception("checking a request failed")
                requests.append([])
                errors.append(Refused(500, "ImageProcessingFailed", f"reading the request failed: {first_line(e)}"))
        decoded = list(self.map(self.try_decode, [part for images in requests for part in images]))
        pixels, counts, start = [], [], 0
        for i, images in enumerate(requests):
            results, start = decoded[start : start + len(images)], start + len(images)
            failure = next((r for r in results if isinstance(r, Refused)), None)
            if failure is not None:
                results, errors[i] = [], failure
            pixels += results
            counts.append(len(results))
        return pixels, counts, errors

    def admit(self, idx: int, request: dict) -> list[tuple[str, bytes]]:
        """The request's (name, image bytes) parts, or `Refused` when it is over a bound, does not fit the
        call's budget (serve/budget.py) or is not images; judged from the headers alone (serve/bounds.py),
        before any pixel is decoded. Under an envelope its parts are the envelope's images."""
        if not request:
            raise Refused(400, "InvalidImage", "empty request: no body and no multipart parts")
        if self.enveloped:
            self.envelopes[idx] = envelope.read(self.envelope, request)
            named = self.envelopes[idx].images()
        else:
            named = request.items()
        parts = []
        for name, value in named:
            if not isinstance(value, (bytes, bytearray)):
                # TorchServe decodes text/* and application/json bodies when decode_input_request is on.
                raise Refused(
                    400,
                    "InvalidImage",
                    (
                        f"{part_label(name)}expected image bytes, got {type(value).__name__} (the Content-Type made "
                        "TorchServe decode it as text or JSON); send the file as the raw body (curl -T cat.jpg) or "
                        "as a multipart file part"
                    ),
                )
            parts.append((name, bytes(value)))
        return admit(parts, self.classifier.transform, self.limits, how_to_change, self.call).parts

    def map(self, fn, items):
        """`fn` over `items`, in order: on the decode threads where there are several items and threads."""
        if self.decode_pool is None or len(items) < 2:
            return map(fn, items)
        return self.decode_pool.map(fn, items)

    def try_decode(self, part: tuple[str, bytes]) -> torch.Tensor | Refused:
        """One image's uint8 CHW pixels, resized and cropped, or its failure as a `Refused` (returned, for `map`):
        400 for a bad image, 500 for any other exception on its way (logged with its traceback)."""
        name, data = part
        try:
            return self.classifier.pixels(data)
        except ImageDecodeError as e:
            return Refused(400, "InvalidImage", f"{part_label(name)}{e}", part=name)
        except Exception as e:  # MemoryError included: the batch's other requests must still be answered
            logger.exception("processing %s failed", part_label(name) or "the body")
            return Refused(
                500,
                "ImageProcessingFailed",
                f"{part_label(name)}processing the image failed: {first_line(e)}",
                part=name,
            )

    def inference(self, data, *args, **kwargs):
        """Per request: its images' probabilities, or its `Refused`.

        One pass over all good images (in chunks of the batch size); if that fails, each request again on
        its own, so that an input that breaks the forward pass fails only its own request."""
        pixels, counts, errors = data
        try:
            return split(self.classifier.probabilities(pixels), counts, errors)
        except Exception as e:
            if sum(error is None for error in errors) < 2:
                return self.failed(e, counts, errors)
            logger.exception("the forward pass of %d requests failed; retrying them one at a time", len(counts))
        results, start = [], 0
        for count, error in zip(counts, errors):
            images, start = pixels[start : start + count], start + count
            if error is not None:
                results.append(error)
                continue
            try:
                results.append(self.classifier.probabilities(images))
            except Exception as e:
                results += self.failed(e, [count], [None])
        return results

    def failed(self, error: Exception, counts: list[int], errors: list[Refused | None]) -> list[Refused]:
        logger.error("inference failed", exc_info=error)
        refusal = Refused(
            500,
            "InferenceFailed",
            (
                f"the model failed on this request ({first_line(error)}); the server logs have the details; "
                "sending the same images again will fail the same way"
            ),
        )
        return [e if e is not None else refusal for e in errors]

    def postprocess(self, data):
        responses = []
        for idx, result in enumerate(data):
            if isinstance(result, Refused):
                self.refuse(idx, result)
                self.context.set_response_content_type(idx, "application/json")
            if self.enveloped:
                responses.append(self.envelope_answer(idx, result))
            elif isinstance(result, Refused):
                responses.append(result.body())
            else:
                responses.append(answer([self.classifier.top_k_of(row) for row in result]))
        return responses

    def envelope_answer(self, idx: int, result) -> dict:
        """Request `idx`'s answer in its envelope's format (serve/envelope.py)."""
        request, request_id, model = self.envelopes[idx], self.context.get_request_id(idx), self.manifest["model"]
        if request is None:
            return envelope.unreadable(self.envelope, result)
        if isinstance(result, Refused):
            return request.refusal(result, request_id, model)
        return request.answer([prediction_object(self.classifier.top_k_of(row)) for row in result], request_id, model)

    def refuse(self, idx: int, refusal: Refused) -> None:
        self.context.set_response_status(refusal.code, PHRASES.get(refusal.code, ""), idx)
        if refusal.retry_after_s is not None:
            self.context.set_response_header(idx, "Retry-After", str(refusal.retry_after_s))


def split(probabilities: torch.Tensor, counts: list[int], errors: list[Refused | None]) -> list:
    """The batch's probability rows -> per request: its rows, or its `Refused`."""
    results, start = [], 0
    for count, error in zip(counts, errors):
        results.append(error if error is not None else probabilities[start : start + count])
        start += count
    return results


def torch_threads(runner, threads: int) -> int:
    """PyTorch's intra-op threads in a worker whose runner has `threads`: the same where the network runs
    in PyTorch or on a GPU, else 1.

    Beside ONNX Runtime on the CPU, PyTorch only resizes and normalises, and its OpenMP threads spin
    after each parallel op on the cores the session's run starts on next: one thread forms no pool and
    never spins (benchmarks/results hold the measurement).
    """
    return threads if runner.computes_in_torch or runner.device != "cpu" else 1


def threads_per_worker(model_config: dict) -> int:
    """Intra-op threads for each worker so that workers x threads does not exceed the usable cores."""
    workers = int(model_config.get("maxWorkers") or model_config.get("minWorkers") or 1)
    return max(1, usable_cores() // workers)

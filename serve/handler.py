"""The TorchServe handler: image bytes in, top-k `{"label": probability}` out, for any exported artifact.

`python -m serve package` puts this file into every model archive next to the export's
`manifest.json`, its artifact(s) and `model-config.yaml`; TorchServe imports it as a top-level module
in each worker, so it only uses absolute imports of our installed packages.

What it does per batch (TorchServe's dynamic batching hands it up to `batchSize` requests at once):
- each request is a raw body (`curl -T cat.jpg`) or a multipart form with one image per part;
- everything from bytes to labels is `export.classifier.Classifier` (the manifest's preprocessing,
  the runner, softmax and top-k), the same object `client --local` and `train --predict` use; this
  module only adds TorchServe's plumbing: per image `Classifier.pixels`, on as many threads as the
  worker has (Pillow's decoder and PyTorch's resize release the GIL), then one
  `Classifier.probabilities` for all good images of the batch;
- a request whose image cannot be decoded gets its own HTTP 400 with a JSON message, through
  `context.set_response_status(code, phrase, idx)`; the other requests of the batch are answered
  normally. (Raising instead would make TorchServe fail the whole batch with 503.)

Model-config keys read from `handler:` in model-config.yaml (all optional): `backend` (an artifact format,
else the fastest that passed parity on the device), `allow_failed`, `top_k`, `max_pixels`, `threads` (the
runner's intra-op threads; default: the usable cores / the workers).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from ts.torch_handler.base_handler import BaseHandler

from export.classifier import Classifier
from models.imageio import DEFAULT_MAX_PIXELS, ImageDecodeError
from models.osutil import usable_cores

logger = logging.getLogger(__name__)

BAD_REQUEST = 400
RAW_BODY_NAMES = ("body", "data")  # TorchServe's parameter names for a request's raw body


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
        self.runner = self.classifier.runner
        torch.set_num_threads(torch_threads(self.runner, threads))
        # A batch's images decode in parallel: one thread would leave the worker's other cores idle
        # until the forward pass.
        self.decode_pool = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 1 else None
        self.initialized = True
        logger.info(
            "serving %s on %s with %d thread(s) (PyTorch's: %d), %d classes, top-%d, forward passes of <= %s",
            self.runner.format, device, threads, torch.get_num_threads(), len(self.classifier.class_names),
            self.classifier.top_k, self.classifier.batch_size,
        )  # fmt: skip

    def handle(self, data, context):
        """preprocess -> inference -> postprocess, one answer per request, in order.

        Replaces BaseHandler.handle, whose request headers `explain: True` / `describe: True` switch to
        code paths (captum insights, one description per batch) that would fail every request of the batch.
        """
        start = time.perf_counter()
        self.context = context
        output = self.postprocess(self.inference(self.preprocess(data)))
        if context.metrics is not None:
            context.metrics.add_time("HandlerTime", round((time.perf_counter() - start) * 1000, 2), None, "ms")
        return output

    def preprocess(self, data):
        """Decode, resize and crop every image of every request.

        Returns (uint8 pixels of every good image; image count per request; error message or None per
        request). A request's images are consecutive; one bad image fails its whole request.
        """
        requests, errors = [], []
        for request in data:
            try:
                requests.append(request_images(request))
                errors.append(None)
            except ImageDecodeError as e:
                requests.append([])
                errors.append(str(e))
        decoded = list(self.map(self.try_decode, [part for images in requests for part in images]))
        pixels, counts, start = [], [], 0
        for i, images in enumerate(requests):
            results, start = decoded[start : start + len(images)], start + len(images)
            failure = next((r for r in results if isinstance(r, ImageDecodeError)), None)
            if failure is not None:
                results, errors[i] = [], str(failure)
            pixels += results
            counts.append(len(results))
        return pixels, counts, errors

    def map(self, fn, items):
        """`fn` over `items`, in order: on the decode threads where there are several items and threads."""
        if self.decode_pool is None or len(items) < 2:
            return map(fn, items)
        return self.decode_pool.map(fn, items)

    def try_decode(self, part: tuple[str, object]) -> torch.Tensor | ImageDecodeError:
        """`decode` of one (name, value) part, returning the error instead of raising it (for `map`)."""
        try:
            return self.decode(*part)
        except ImageDecodeError as e:
            return e

    def decode(self, name: str, value) -> torch.Tensor:
        """One image of a request -> uint8 CHW pixels, resized and cropped; errors name the multipart part."""
        where = "" if name in RAW_BODY_NAMES else f"part {name!r}: "
        if not isinstance(value, (bytes, bytearray)):
            # TorchServe decodes text/* bodies to str and application/json bodies to objects.
            raise ImageDecodeError(
                f"{where}expected image bytes, got {type(value).__name__} (the Content-Type made TorchServe decode "
                "it as text or JSON); send the file as the raw body (curl -T cat.jpg) or as a multipart file part"
            )
        try:
            return self.classifier.pixels(bytes(value))
        except ImageDecodeError as e:
            raise ImageDecodeError(f"{where}{e}") from None

    def inference(self, data, *args, **kwargs):
        pixels, counts, errors = data
        return self.classifier.probabilities(pixels), counts, errors

    def postprocess(self, data):
        probabilities, counts, errors = data
        responses, offset = [], 0
        for idx, (error, count) in enumerate(zip(errors, counts)):
            if error is not None:
                self.context.set_response_status(BAD_REQUEST, "Bad Request", idx)
                self.context.set_response_content_type(idx, "application/json")
                responses.append(json.dumps({"code": BAD_REQUEST, "type": "InvalidImage", "message": error}))
                continue
            results = [dict(self.classifier.top_k_of(probabilities[offset + i])) for i in range(count)]
            offset += count
            responses.append(results[0] if len(results) == 1 else results)
        return responses


def request_images(request: dict) -> list[tuple[str, object]]:
    """The images of one request, in order: the raw body, or every part of a multipart form.

    TorchServe gives a raw body as {"body": bytes} and a multipart form as
    {field name: value}, in the order of the parts; parts must have distinct names.
    """
    if not request:
        raise ImageDecodeError("empty request: no body and no multipart parts")
    return list(request.items())


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

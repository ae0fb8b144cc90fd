"""The handler in-process, on the unpacked archive, with TorchServe's real Context: exact batches.

Over HTTP, which requests share a batch is up to TorchServe's timing; here each `handle` call is one
batch, so "one bad image fails only its own request" is checked deterministically.
"""

from __future__ import annotations

import base64
import json
import os
import time
import zipfile

import pytest
import torch
import ts
import yaml
from ts.context import Context, RequestProcessor

from serve.handler import ImageClassifierHandler, threads_per_worker
from serve.package import package
from tests.fixtures.served import SERVED_PACKAGE_OPTIONS


def unpack(mar, model_dir):
    zipfile.ZipFile(mar).extractall(model_dir)
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    return manifest, config


def make_handler(model_dir, manifest, config) -> ImageClassifierHandler:
    batch_size, gpu = config["batchSize"], None
    context = Context("digits", str(model_dir), manifest, batch_size, gpu, ts.__version__, model_yaml_config=config)
    handler = ImageClassifierHandler()
    handler.initialize(context)
    return handler


@pytest.fixture(scope="module")
def archive_dir(digits_export, tmp_path_factory):
    mar = package(digits_export, tmp_path_factory.mktemp("store"), name="digits", options=SERVED_PACKAGE_OPTIONS)
    model_dir = tmp_path_factory.mktemp("unpacked")
    return model_dir, *unpack(mar, model_dir)


@pytest.fixture(scope="module")
def handler(archive_dir):
    return make_handler(*archive_dir)


def handle(handler, requests_data):
    """One batch through handler.handle; returns [(status, body)] per request."""
    context = handler.context
    context.request_processor = [RequestProcessor({}) for _ in requests_data]
    context.request_ids = {i: f"request-{i}" for i in range(len(requests_data))}
    outputs = handler.handle(requests_data, context)
    assert len(outputs) == len(requests_data)
    return [(context.get_response_status(i)[0], outputs[i]) for i in range(len(requests_data))]


def test_one_bad_image_fails_only_its_own_request(handler, valid_images, invalid_images):
    batch = [
        {"body": valid_images["jpeg"]},
        {"body": invalid_images["random_bytes"]},
        {"body": valid_images["png_gray"]},
        {"body": invalid_images["empty"]},
        {"body": bytearray(valid_images["jpeg_cmyk"])},
        {"body": invalid_images["truncated_jpeg"]},
    ]
    answers = handle(handler, batch)
    assert handler.context.get_response_headers(1)["content-type"] == "application/json"
    assert [status for status, _ in answers] == [200, 400, 200, 400, 200, 400]
    for i in (0, 2, 4):  # each good answer is what that image gets on its own
        assert answers[i][1] == handle(handler, [batch[i]])[0][1]
    errors = [json.loads(answers[i][1]) for i in (1, 3, 5)]
    assert all(e["code"] == 400 and e["type"] == "InvalidImage" for e in errors)
    assert "not a supported image" in errors[0]["message"]
    assert "empty image: 0 bytes" in errors[1]["message"]
    assert "truncated or corrupt JPEG" in errors[2]["message"]


def test_answers_are_top_k_labels_highest_first(handler, valid_images):
    [(status, answer)] = handle(handler, [{"body": valid_images["png"]}])
    assert status == 200
    assert len(answer) == 5 and set(answer) <= set(handler.classifier.class_names)
    probabilities = list(answer.values())
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1.0 + 1e-5


def test_multipart_parts_get_one_answer_each_in_order(handler, valid_images, invalid_images):
    parts = {"first": valid_images["jpeg"], "second": valid_images["png_gray"], "third": valid_images["gif_palette"]}
    [(status, answers)] = handle(handler, [parts])
    assert status == 200 and isinstance(answers, list) and len(answers) == 3
    for (name, image), answer in zip(parts.items(), answers):
        assert answer == handle(handler, [{"body": image}])[0][1], name

    [(status, error)] = handle(handler, [{"first": valid_images["jpeg"], "second": invalid_images["text"]}])
    assert status == 400
    assert json.loads(error)["message"].startswith("part 'second': not a supported image")


def test_a_part_shaped_like_a_kserve_instance_fails_only_its_own_request(handler, valid_images):
    # Outside KServe's envelope, a text form field named "data" is one client's malformed request; reading
    # the whole batch as one envelope's instances would answer once for three requests and fail all three.
    batch = [{"body": valid_images["jpeg"]}, {"data": "hello"}, {"body": valid_images["png"]}]
    answers = handle(handler, batch)
    assert [status for status, _ in answers] == [200, 400, 200]
    assert answers[0][1] == handle(handler, [batch[0]])[0][1]
    assert "expected image bytes, got str" in json.loads(answers[1][1])["message"]


def test_multipart_fields_named_like_an_envelope_are_images_alone_and_batched(handler, valid_images):
    """`curl -F b64=@cat.jpg` and `-F datatype=@cat.jpg` are ordinary parts: envelope mode comes from the
    layout (model config or TS_SERVICE_ENVELOPE), never from a field name, so load changes nothing."""
    cat = valid_images["jpeg"]
    expected = handle(handler, [{"body": cat}])[0]
    assert handle(handler, [{"b64": cat}]) == [expected]
    assert handle(handler, [{"datatype": cat}]) == [expected]
    assert handle(handler, [{"b64": cat}, {"datatype": cat}, {"body": cat}]) == [expected] * 3


def test_text_and_json_bodies_are_refused_with_a_hint(handler):
    answers = handle(handler, [{"body": "hello"}, {"body": {"url": "http://example.com/cat.jpg"}}, {}])
    assert [status for status, _ in answers] == [400, 400, 400]
    assert "expected image bytes, got str" in json.loads(answers[0][1])["message"]
    assert "expected image bytes, got dict" in json.loads(answers[1][1])["message"]
    assert "empty request" in json.loads(answers[2][1])["message"]


def through_envelope(handler, *bodies):
    """One batch of JSON bodies through handler.handle, as TorchServe hands them with no envelope of its
    own (the KServe layout's config); returns [(status, the parsed answer)] per request."""
    return [(status, answer) for status, answer in handle(handler, [{"body": bytearray(b)} for b in bodies])]


def envelope_handler(archive_dir, envelope: str) -> ImageClassifierHandler:
    model_dir, manifest, config = archive_dir
    return make_handler(model_dir, manifest, {**config, "handler": {**config["handler"], "envelope": envelope}})


def v2_input(name, data, datatype="BYTES"):
    return {"name": name, "shape": [len(data)], "datatype": datatype, "data": data}


def test_kserve_v1_instances_are_answered_in_order_each_request_its_own(archive_dir, handler, valid_images):
    """v1 instances (base64 strings, {"b64": ...}) answer as the raw body does, several envelope requests of
    one batch each their own; bad base64, too many instances or a body that is no envelope fail only their
    own request, with its status, and the answer says what was wrong."""
    cat, gray = valid_images["jpeg"], valid_images["png_gray"]
    plain = [handle(handler, [{"body": image}])[0][1] for image in (cat, gray)]
    b64 = [base64.b64encode(image).decode() for image in (cat, gray)]
    handler = envelope_handler(archive_dir, "kserve")
    flood = {"instances": [{"data": b64[0]}] * (handler.limits.max_images + 1)}
    bodies = [
        {"instances": [{"data": b64[0]}, {"data": {"b64": b64[1]}}]},
        {"instances": [b64[1]]},
        {"instances": [{"data": b64[0]}, {"data": "c@t"}]},
        {"instances": [{"data": b64[0][:-8]}]},
        flood,
        {"inputs": [{"data": b64[0]}]},
    ]
    answers = through_envelope(handler, *(json.dumps(body).encode() for body in bodies), cat)
    assert answers[:2] == [(200, {"predictions": plain}), (200, {"predictions": plain[1:]})]
    errors = [(status, answer["predictions"][0]) for status, answer in answers[2:-1]]
    assert [status for status, _ in errors] == [400, 400, 413, 400]
    assert errors[0][1]["message"].startswith("part 'instances[1]': malformed base64")
    assert "truncated" in errors[1][1]["message"] and errors[2][1]["type"] == "TooManyImages"
    assert 'expected {"instances": [...]}' in errors[3][1]["message"]
    status, answer = answers[-1]  # a raw image on this layout
    assert status == 400 and "the request body is not valid JSON" in answer["predictions"][0]["message"]


def test_deep_json_is_refused_cheaply_and_the_worker_answers_on(archive_dir, valid_images):
    handler = envelope_handler(archive_dir, "kservev2")
    started = time.perf_counter()
    [(status, answer)] = through_envelope(handler, b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "the request body nests deeper than" in answer["message"]
    [(status, answer)] = through_envelope(handler, b'{"inputs": ' + b"[" * 1_000_000)
    assert status == 400 and "not valid JSON" in answer["message"]
    assert time.perf_counter() - started < 5  # no recursion, no loop per character in Python
    v2 = {"inputs": [v2_input("cat", [base64.b64encode(valid_images["jpeg"]).decode()])]}
    assert through_envelope(handler, json.dumps(v2).encode())[0][0] == 200


def test_kserve_v2_answers_every_element_of_every_input_by_name(archive_dir, handler, valid_images):
    """Every element of every BYTES input is answered, in order, in the outputs TorchServe's kservev2
    envelope wrote; a failure goes on the input at fault, the others say they were not classified."""
    cat, gray = valid_images["jpeg"], valid_images["png_gray"]
    plain = [handle(handler, [{"body": image}])[0][1] for image in (cat, gray)]
    b64 = [base64.b64encode(image).decode() for image in (cat, gray)]
    handler = envelope_handler(archive_dir, "kservev2")
    bodies = [
        {"id": "r1", "inputs": [v2_input("pair", b64), v2_input("gray", [b64[1]])]},
        {"inputs": [v2_input("a", [b64[0]]), v2_input("b", [b64[1], "c@t"])]},
        {"inputs": [v2_input("x", [0.5], "FP32"), v2_input("cat", [b64[0]])]},
        {"inputs": [v2_input("a", [b64[0]]), {**v2_input("b", [b64[0]]), "shape": [1, 1]}]},
        {"inputs": [v2_input("a", [b64[0]]), v2_input("a", [b64[0]])]},
    ]
    answers = through_envelope(handler, *(json.dumps(body).encode() for body in bodies))
    status, answer = answers[0]
    assert status == 200 and answer["id"] == "r1" and answer["model_name"] == "digits"
    assert answer["outputs"] == [
        {"name": "pair", "datatype": "BYTES", "data": plain, "shape": [2]},
        {"name": "gray", "datatype": "BYTES", "data": plain[1:], "shape": [1]},
    ]
    assert answers[1][1]["id"] == "request-1"  # no id of its own: TorchServe's request id, as its envelope did

    def outputs(answer):
        return {output["name"]: output["data"][0] for output in answer["outputs"]}

    status, answer = answers[1]
    assert status == 400 and list(outputs(answer)) == ["a", "b"]
    assert outputs(answer)["b"]["message"].startswith("part 'b[1]': malformed base64")
    assert outputs(answer)["a"]["type"] == "NotClassified" and "input 'b'" in outputs(answer)["a"]["message"]
    status, answer = answers[2]
    assert status == 400 and "part 'x': a FP32 tensor, not image bytes" in outputs(answer)["x"]["message"]
    assert outputs(answer)["cat"]["type"] == "NotClassified"
    status, answer = answers[3]
    assert status == 400 and "part 'b': shape [1, 1]" in outputs(answer)["b"]["message"]
    status, answer = answers[4]
    assert status == 400 and "every v2 input needs a name of its own" in answer["message"]


def test_explain_and_describe_headers_do_not_change_the_answer(handler, valid_images):
    context = handler.context
    context.request_processor = [RequestProcessor({"explain": "True", "describe": "True"})]
    context.request_ids = {0: "request-0"}
    [answer] = handler.handle([{"body": valid_images["jpeg"]}], context)
    assert answer == handle(handler, [{"body": valid_images["jpeg"]}])[0][1]


def test_top_k_is_capped_by_the_number_of_classes(archive_dir, valid_images):
    model_dir, manifest, config = archive_dir
    config = {**config, "handler": {**config["handler"], "top_k": 50}}
    handler = make_handler(model_dir, manifest, config)
    [(status, answer)] = handle(handler, [{"body": valid_images["jpeg"]}])
    assert status == 200 and len(answer) == len(handler.classifier.class_names) == manifest_classes(model_dir)


def manifest_classes(model_dir) -> int:
    return json.loads((model_dir / "manifest.json").read_text())["num_classes"]


def test_pixel_limit_comes_from_the_model_config(archive_dir, valid_images):
    model_dir, manifest, config = archive_dir
    handler = make_handler(model_dir, manifest, {**config, "handler": {**config["handler"], "max_pixels": 10_000}})
    [(status, error)] = handle(handler, [{"body": valid_images["jpeg"]}])
    assert status == 400 and "above the limit of 10,000" in json.loads(error)["message"]


def test_workers_times_threads_fit_the_cores():
    cores = len(os.sched_getaffinity(0))
    for workers in (1, 2, 3, cores, 2 * cores):
        threads = threads_per_worker({"minWorkers": workers, "maxWorkers": workers})
        assert threads >= 1
        assert workers * threads <= max(cores, workers)


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_pytorch_keeps_one_thread_beside_onnx_runtime(archive_dir, backend):
    """Beside ONNX Runtime, PyTorch's spinning OpenMP threads would take the session's cores; a
    PyTorch runner gets every thread of the worker."""
    model_dir, manifest, config = archive_dir
    previous = torch.get_num_threads()
    try:
        handler = make_handler(
            model_dir, manifest, {**config, "handler": {**config["handler"], "backend": backend, "threads": 2}}
        )
        assert handler.runner.format == backend
        assert torch.get_num_threads() == (1 if backend == "onnx" else 2)
    finally:
        torch.set_num_threads(previous)


def test_decoding_on_several_threads_answers_as_one_thread_does(archive_dir, valid_images, invalid_images):
    """A 2-thread worker decodes a batch's images in parallel; answers, their order and the errors are
    those of a 1-thread worker."""
    model_dir, manifest, config = archive_dir
    previous = torch.get_num_threads()
    try:
        handlers = {
            threads: make_handler(model_dir, manifest, {**config, "handler": {**config["handler"], "threads": threads}})
            for threads in (1, 2)
        }
    finally:
        torch.set_num_threads(previous)
    assert handlers[1].decode_pool is None and handlers[2].decode_pool is not None
    batch = [
        {"body": valid_images["jpeg"]},
        {"first": valid_images["png"], "second": invalid_images["truncated_jpeg"], "third": valid_images["jpeg"]},
        {"body": valid_images["png_gray"]},
        {"first": valid_images["gif_palette"], "second": valid_images["jpeg_cmyk"]},
        {"body": invalid_images["random_bytes"]},
        {"body": valid_images["png"]},
    ]
    answers = {threads: handle(handler, batch) for threads, handler in handlers.items()}
    assert [status for status, _ in answers[2]] == [200, 400, 200, 200, 400, 200]
    assert answers[2] == answers[1]
    assert json.loads(answers[2][1][1])["message"].startswith("part 'second': truncated or corrupt JPEG")


def test_requests_over_the_bounds_get_413_before_decoding(archive_dir, valid_images, monkeypatch):
    """1,000 parts, or more decoded pixels than the model config allows, get 413 with the limit and how to
    change it; the batch's other requests are answered, and no image of a refused request is decoded."""
    model_dir, manifest, config = archive_dir
    handler = make_handler(
        model_dir, manifest, {**config, "handler": {**config["handler"], "max_request_pixels": 300_000}}
    )
    decoded = []
    pixels = handler.classifier.pixels
    monkeypatch.setattr(handler.classifier, "pixels", lambda data: decoded.append(len(data)) or pixels(data))
    flood = {f"part{i}": valid_images["png_1x1"] for i in range(1000)}
    big = {"a": valid_images["png"], "b": valid_images["png"], "c": valid_images["png"]}  # 3 x 451x300 PNG
    started = time.perf_counter()
    answers = handle(handler, [flood, {"body": valid_images["jpeg"]}, big])
    elapsed = time.perf_counter() - started
    assert [status for status, _ in answers] == [413, 200, 413]
    assert decoded == [len(valid_images["jpeg"])]
    assert elapsed < 5  # header reads only (generous for a loaded 2-core machine)
    flood_error, pixel_error = json.loads(answers[0][1]), json.loads(answers[2][1])
    assert flood_error["type"] == "TooManyImages" and "1000 images" in flood_error["message"]
    assert "limit of 32" in flood_error["message"] and "--max-images" in flood_error["message"]
    assert pixel_error["type"] == "TooManyPixels" and "300,000" in pixel_error["message"]
    assert "handler.max_request_pixels" in pixel_error["message"]


def test_a_call_takes_only_the_work_that_fits_its_budget(archive_dir, valid_images, monkeypatch):
    """Priced with the archive's cost (here 1 s a photo, a 60 s timeout: 15 s a call), a batch is served
    while it fits, the rest shed with 503 and Retry-After before decoding, and a request no call could
    finish gets 413; the archive itself carries the cost `serve package` measured."""
    model_dir, manifest, config = archive_dir
    assert config["handler"]["cost"]["image_s"] > 0 and config["jobQueueSize"] >= config["batchSize"]
    slow = {"image_s": 1.0, "megapixel_s": 0.0}
    handler = make_handler(
        model_dir, manifest, {**config, "responseTimeout": 60, "handler": {**config["handler"], "cost": slow}}
    )
    decoded = []
    pixels = handler.classifier.pixels
    monkeypatch.setattr(handler.classifier, "pixels", lambda data: decoded.append(len(data)) or pixels(data))
    ten = {f"p{i}": valid_images["jpeg"] for i in range(10)}
    answers = handle(
        handler, [ten, ten, {"body": valid_images["png"]}, {f"p{i}": valid_images["jpeg"] for i in range(16)}]
    )
    assert [status for status, _ in answers] == [200, 503, 200, 413]
    assert len(decoded) == 11
    assert handler.context.get_response_headers(1)["Retry-After"] == "15"
    assert json.loads(answers[1][1])["type"] == "Overloaded"
    assert json.loads(answers[3][1])["type"] == "TooMuchWork" and "15.0 s" in json.loads(answers[3][1])["message"]


def test_any_failure_on_an_images_way_fails_only_its_request(handler, valid_images, monkeypatch):
    """Not only decode errors: a MemoryError or a bug in the resize of one image is that request's 500."""
    pixels = handler.classifier.pixels

    def failing(data):
        if data == valid_images["png_gray"]:
            raise MemoryError()
        if data == valid_images["gif_palette"]:
            raise RuntimeError("resize exploded\n" + "x" * 5000)
        return pixels(data)

    monkeypatch.setattr(handler.classifier, "pixels", failing)
    batch = [
        {"body": valid_images["jpeg"]},
        {"body": valid_images["png_gray"]},
        {"x" * 5000: valid_images["gif_palette"]},
        {"body": valid_images["png"]},
    ]
    answers = handle(handler, batch)
    assert [status for status, _ in answers] == [200, 500, 500, 200]
    memory, resize = json.loads(answers[1][1]), json.loads(answers[2][1])
    assert memory["type"] == "ImageProcessingFailed" and "MemoryError" in memory["message"]
    assert "resize exploded" in resize["message"] and len(resize["message"]) < 200  # name and text cut short


def test_a_failed_forward_pass_is_retried_per_request(handler, valid_images, monkeypatch):
    """A forward pass that fails for the batch fails only the request that breaks it (500 InferenceFailed,
    not TorchServe's 503 for all); the others are answered as on their own."""
    alone = {name: handle(handler, [{"body": valid_images[name]}])[0][1] for name in ("jpeg", "png")}
    predict = handler.runner.predict
    poison = handler.classifier.transform.batch([handler.classifier.pixels(valid_images["png_gray"])])

    def failing(batch):
        if any(torch.equal(image, poison[0]) for image in batch):
            raise RuntimeError("the runtime failed")
        return predict(batch)

    monkeypatch.setattr(handler.runner, "predict", failing)
    answers = handle(
        handler, [{"body": valid_images["jpeg"]}, {"body": valid_images["png_gray"]}, {"body": valid_images["png"]}]
    )
    assert [status for status, _ in answers] == [200, 500, 200]
    assert answers[0][1] == alone["jpeg"] and answers[2][1] == alone["png"]
    error = json.loads(answers[1][1])
    assert error["type"] == "InferenceFailed" and "the runtime failed" in error["message"]


def test_an_allowed_large_request_runs_in_forward_passes_of_the_batch_size(handler, valid_images, monkeypatch):
    """20 images in one request (within max_images) and a batch of several requests: every forward pass holds
    at most the model config's batchSize images, and the answers are those of each image on its own."""
    alone = {name: handle(handler, [{"body": valid_images[name]}])[0][1] for name in ("jpeg", "png")}
    passes, predict = [], handler.runner.predict
    monkeypatch.setattr(handler.runner, "predict", lambda batch: passes.append(len(batch)) or predict(batch))
    names = ["jpeg", "png"] * 10
    [(status, body)] = handle(handler, [{f"part{i}": valid_images[name] for i, name in enumerate(names)}])
    assert status == 200 and handler.classifier.batch_size == 8
    assert passes == [8, 8, 4]
    answers = body  # one {label: probability} per image, in order (TorchServe serialises it)
    assert len(answers) == 20
    for name, answer in zip(names, answers):
        assert list(answer) == list(alone[name])
        assert answer == pytest.approx(alone[name], abs=1e-5)
    passes.clear()
    batch = [{f"p{i}": valid_images["jpeg"] for i in range(5)} for _ in range(3)]
    assert [status for status, _ in handle(handler, batch)] == [200, 200, 200]
    assert passes == [8, 7]

"""Locust load test of a TorchServe model: each user sends real images to `/predictions/<model>`.

    locust -f client/locustfile.py --headless --host http://127.0.0.1:8080 --model resnet50 \\
        --images photos/ -u 8 -r 8 -t 60s

or `python -m client loadtest ...`, which also checks thresholds and plots the run. Options (flags or
environment variables):

    --model   LOCUST_MODEL    model name on the server (default resnet50)
    --images  LOCUST_IMAGES   folder of images to send (default: scikit-image's sample photos,
                              each encoded as JPEG and as PNG in memory at start)
    --method  LOCUST_METHOD   POST (default) or PUT (what `curl -T` sends); the raw image is the body
    --token   TORCHSERVE_TOKEN  TorchServe's inference key (`python -m serve token`), when it wants one
    --protocol LOCUST_PROTOCOL  torchserve (default) or v2: one image per /v2/models/<model>/infer (Triton)

Users run a closed loop (no think time): each sends its next image as soon as the answer arrives, so
`--users` is the number of requests in flight. A request counts as failed unless the server answers
200 with a non-empty JSON object of class -> probability.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import gevent
from locust import FastHttpUser, constant, events, task

from classify.response import InvalidAnswer, parse_answer
from client.errors import ClientError
from client.images import ImageTooLarge, images_in_folder, read_image, sample_photos
from client.v2 import PROTOCOLS, http_request, parse_http_response

# (name, encoded bytes), filled once per process by `load_images` before any user starts.
IMAGES: list[tuple[str, bytes]] = []


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    parser.add_argument("--protocol", env_var="LOCUST_PROTOCOL", default="torchserve", choices=list(PROTOCOLS))
    parser.add_argument("--model", env_var="LOCUST_MODEL", default="resnet50", help="model name on the server")
    parser.add_argument(
        "--images",
        env_var="LOCUST_IMAGES",
        default="",
        help="folder of images to send (default: scikit-image's sample photos as JPEG and PNG)",
    )
    parser.add_argument(
        "--method",
        env_var="LOCUST_METHOD",
        default="POST",
        choices=["POST", "PUT"],
        help="HTTP method; the raw image is the body either way",
    )
    parser.add_argument(
        "--token",
        env_var="TORCHSERVE_TOKEN",
        default="",
        is_secret=True,
        help="TorchServe inference key, sent as 'Authorization: Bearer' (python -m serve token)",
    )


def read_folder(folder: str) -> list[tuple[str, bytes]]:
    path = Path(folder)
    if not path.is_dir():
        raise SystemExit(f"--images {folder}: no such folder")
    files = images_in_folder(path)
    if not files:
        raise SystemExit(f"--images {folder}: the folder holds no image files")
    try:
        return [(str(f.relative_to(path)), read_image(f)) for f in files]
    except (ImageTooLarge, OSError) as e:
        raise SystemExit(f"--images {folder}: {e}") from None


@events.init.add_listener
def load_images(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:  # imported by a tool that is not running a test (e.g. `locust --list`)
        return
    IMAGES[:] = read_folder(options.images) if options.images else sample_photos()
    # That took a second or two without yielding to gevent, whose loop caches the time: refresh it, or
    # the --run-time timer locust sets next would start in the past and end the test early.
    gevent.get_hub().loop.update_now()


class PredictionUser(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.path = f"/predictions/{options.model}"
        self.method = options.method
        self.headers = {"Content-Type": "application/octet-stream"}
        if options.token:
            self.headers["Authorization"] = f"Bearer {options.token}"
        self.protocol = options.protocol
        if self.protocol == "v2":
            self.path, self.method = f"/v2/models/{options.model}/infer", "POST"
            self.headers |= http_request([b""])[1]
        # Each user walks the images from its own random starting point, so all are sent evenly.
        start = random.randrange(len(IMAGES))
        self.images = itertools.islice(itertools.cycle(IMAGES), start, None)

    @task
    def predict(self) -> None:
        name, body = next(self.images)
        if self.protocol == "v2":
            body = http_request([body])[0]
        with self.client.request(
            self.method, self.path, data=body, headers=self.headers, name=self.path, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code} for {name}: {(response.text or '')[:200]}")
                return
            if self.protocol == "v2":
                try:
                    parse_http_response(200, response.content)
                    response.success()
                except ClientError as e:
                    response.failure(f"{name}: {e}")
                return
            try:
                parse_answer(response.content, images=1)
            except InvalidAnswer as e:
                response.failure(f"{name}: {e}")
            else:
                response.success()

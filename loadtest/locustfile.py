"""Locust users that call the app the way any HTTP client does through Gradio's API:
upload the file (/gradio_api/upload), POST /gradio_api/call/<api_name>, then read the event
stream until `complete` (or `error`). Each whole round trip is also reported as one request
named "<api_name> round trip", so its latency percentiles are those a user sees.

The users are FastHttpUsers (geventhttpclient): the same requests for a third of the CPU of
`requests`, which matters where Locust shares the app's cores. They keep cookies like a browser,
so a cookie-sticky balancer pins each user to one replica.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:7860      # web UI on :8089
Environment: CIFAR_DATA (test images), LOCUST_WAIT (seconds between tasks, default 0).
"""
import io
import json
import os
import random
import time
from pathlib import Path

from locust import FastHttpUser, between, events, task
from PIL import Image
from urllib3 import encode_multipart_formdata

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CIFAR_DATA", ROOT.parent / "shared" / "cifar10"))


def _load_images() -> list[tuple[str, bytes]]:
    files = sorted((DATA / "test").glob("*/*.jpg"))[::50] if (DATA / "test").is_dir() else []
    files = files or sorted((ROOT / "assets" / "examples").glob("*.png"))
    return [(f.name, f.read_bytes()) for f in files]


def _large_photo() -> bytes:
    """A 2400x1800 photo-sized JPEG (about what a phone sends)."""
    import numpy as np

    y, x = np.mgrid[0:1800, 0:2400]
    pixels = np.stack([x * 255 // 2400, y * 255 // 1800, (x + y) % 256], axis=2).astype(np.uint8)
    pixels = pixels + np.random.default_rng(0).integers(0, 24, pixels.shape, dtype=np.uint8)
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


IMAGES = _load_images()
LARGE = _large_photo()


class Failure(Exception):
    pass


def _lines(response):
    """The lines of a streamed response as they arrive (an event stream)."""
    buffer = b""
    for chunk in response.iter_content(chunk_size=4096, decode_content=False):
        buffer += chunk if isinstance(chunk, bytes) else chunk.encode()
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode("utf-8", "replace").rstrip("\r")
    if buffer:
        yield buffer.decode("utf-8", "replace")


class AppUser(FastHttpUser):
    wait_time = between(0, float(os.environ.get("LOCUST_WAIT", "0")))
    network_timeout = connection_timeout = 120.0

    def _upload(self, files: list[tuple[str, bytes]]) -> list[str]:
        body, content_type = encode_multipart_formdata(
            [("files", (name, data, "application/octet-stream")) for name, data in files])
        with self.client.post("/gradio_api/upload", data=body, headers={"Content-Type": content_type},
                              name="/gradio_api/upload", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"upload HTTP {response.status_code}")
                raise Failure(f"upload HTTP {response.status_code}")
            return response.json()

    def _call(self, api_name: str, data: list):
        with self.client.post(f"/gradio_api/call/{api_name}", json={"data": data},
                              name=f"/gradio_api/call/{api_name}", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"call HTTP {response.status_code}")
                raise Failure(f"call HTTP {response.status_code}")
            event_id = response.json()["event_id"]
        with self.client.get(f"/gradio_api/call/{api_name}/{event_id}", name=f"/gradio_api/call/{api_name}/[event]",
                             stream=True, catch_response=True) as response:
            event = None
            for line in _lines(response):
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    body = line.split(":", 1)[1].strip()
                    if event == "error":
                        response.failure(f"app error: {body[:200]}")
                        raise Failure(f"app error: {body[:200]}")
                    return json.loads(body)
            response.failure("event stream ended without a result")
            raise Failure("event stream ended without a result")

    def _round_trip(self, name: str, work) -> None:
        started = time.perf_counter()
        exception = None
        try:
            work()
        except Exception as exc:  # reported to Locust with its reason
            exception = exc
        events.request.fire(request_type="FLOW", name=f"{name} round trip",
                            response_time=(time.perf_counter() - started) * 1000, response_length=0,
                            exception=exception, context={})

    @staticmethod
    def _file(path: str) -> dict:
        return {"path": path, "meta": {"_type": "gradio.FileData"}}

    def _check_label(self, result) -> None:
        label = result[0]
        if not isinstance(label, dict) or label.get("label") not in CLASSES:
            raise Failure(f"not a valid class: {str(result)[:200]}")

    @task(16)
    def predict_cifar_image(self):
        def work():
            path = self._upload([random.choice(IMAGES)])[0]
            self._check_label(self._call("predict", [self._file(path)]))
        self._round_trip("predict", work)

    @task(2)
    def predict_large_photo(self):
        def work():
            path = self._upload([("photo.jpg", LARGE)])[0]
            self._check_label(self._call("predict", [self._file(path)]))
        self._round_trip("predict large photo", work)

    @task(2)
    def predict_batch(self):
        def work():
            paths = self._upload(random.sample(IMAGES, 4))
            table = self._call("predict_batch", [[self._file(p) for p in paths]])[0]
            if [row[1] in CLASSES for row in table["data"]] != [True] * 4:
                raise Failure(f"bad batch rows: {str(table)[:200]}")
        self._round_trip("predict_batch", work)

    @task(1)
    def metrics(self):
        def work():
            summary = self._call("metrics", ["", ""])[0]
            if "accuracy" not in summary:
                raise Failure(f"metrics without accuracy: {summary[:200]}")
        self._round_trip("metrics", work)

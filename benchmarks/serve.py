"""Load test of `condnet serve`: routed + micro-batching against soft serving, on loopback.

    python benchmarks/serve.py [--backend tensorflow|jax|torch] [--quick] [--width W]

Saves the 4-expert model of `benchmarks/inference.py` with experts `--width`
times as wide (default 4: about 80 MMACs each; 8: about 310 MMACs, the cost of
MobileNetV2 at 224 px; gate balanced on CIFAR-10 test images) as a run
directory, then for each configuration starts `condnet serve` on 127.0.0.1 (a
subprocess) and sends a bounded number of PNG requests from a lean asyncio client
(`_Connection`, one keep-alive connection per request in flight) at
concurrency 1, 8 and 32:

- routed + batching: `--routing hard --max-batch 32 --max-wait-ms 5`
- routed, no batching: `--routing hard --max-batch 1`
- soft + batching, soft, no batching: the same with `--routing soft`.

Every response is checked against offline `predict` of the same image (class
and expert); a lost, failed or mismatched response is counted. Reports
requests/s and p50 / p99 latency. Client and server share this machine's two
cores, so absolute figures are low; the ratios compare configurations under
the same load. Replaces the "Serving" section of benchmarks/results/serve.md.
"""

import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import data_sets

os.environ["KERAS_BACKEND"] = common.choose_backend()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import httpx  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from condnet.choices import INFERENCE_ROUTINGS  # noqa: E402
from condnet.runs.files import BEST, CONFIG  # noqa: E402
from condnet.testing import free_port  # noqa: E402

CONFIGS = {
    "routed + batching": ["--routing", "hard", "--max-batch", "32", "--max-wait-ms", "5"],
    "routed, no batching": ["--routing", "hard", "--max-batch", "1"],
    "soft + batching": ["--routing", "soft", "--max-batch", "32", "--max-wait-ms", "5"],
    "soft, no batching": ["--routing", "soft", "--max-batch", "1"],
}
CONCURRENCY = (1, 8, 32)
TARGET = (
    "at concurrency 32, routed + micro-batching >= 3x the throughput of soft serving "
    "without micro-batching; no request lost or mismatched"
)


def main(argv=None):
    args = common.parse_args(__doc__, argv, more=_width_option)
    requests = 64 if args.quick else 256
    images, _, source = data_sets.load_images(args.data, requests, models.HIERARCHIES[4])
    # Experts --width times as wide as inference.py's (MACs grow as its square): with its
    # 5-MMAC experts, HTTP and decoding would cost more than the model.
    model = models.conditional_model(4, width=args.width, routing="hard")
    model(images[:2])
    models.balance_gate(model.gate, images)
    bodies = [_png(image) for image in images]
    with tempfile.TemporaryDirectory() as folder:
        run = _save_run(model, Path(folder))
        expected = _expected(model, bodies)
        results = {name: _measure(run, flags, bodies, expected) for name, flags in CONFIGS.items()}
    expert_macs = max(models.macs_of(model)[1].values())
    body = _markdown(results, source, requests, expert_macs)
    print(body)
    title = f"Serving: {os.environ['KERAS_BACKEND']}"
    if args.width != 4:
        title += f", experts of {expert_macs / 1e6:.0f} MMACs"
    document = {"source": source, "results": results}
    common.write_results("serve", f"width-{args.width}", document, title, body, args.results)
    return 0


def _width_option(parser):
    parser.add_argument(
        "--width", type=int, default=4, help="experts' width multiplier (MACs grow as its square)"
    )


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image.astype("uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


def _save_run(model, folder):
    run = folder / "run"
    run.mkdir()
    model.save(run / BEST)
    options = {"image_size": 32, "color_mode": "rgb"}
    (run / CONFIG).write_text(json.dumps({"options": options}))
    return run


def _expected(model, bodies):
    """(class, expert) of each request body, offline: decoded as the service decodes."""
    from condnet.data.decode import decode_image_bytes

    pixels = np.stack([decode_image_bytes(b, (32, 32)) for b in bodies]).astype("float32")
    expected = {}
    for routing in INFERENCE_ROUTINGS:
        model.routing = routing
        outputs = model.predict(pixels, batch_size=256, verbose=0)
        classes = model.hierarchy.decode(outputs["classes"].argmax(1))
        experts = [model.hierarchy.groups[r] for r in outputs["route"]]
        expected[routing] = list(zip(classes, experts))
    return expected


def _measure(run, flags, bodies, expected):
    port = free_port()
    command = [sys.executable, "-m", "condnet", "serve", str(run), "--port", str(port), *flags]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_health(url, server)
        routing = flags[flags.index("--routing") + 1]
        return {str(c): asyncio.run(_load(url, bodies, c, expected[routing])) for c in CONCURRENCY}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_for_health(url, server, seconds=180):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"condnet serve exited with status {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError(f"condnet serve did not answer {url}/health in {seconds} s")


async def _load(url, bodies, concurrency, expected):
    """Send every body once (after a warm-up), `concurrency` requests in flight, each
    worker on its own keep-alive connection (`_Connection`)."""
    latencies, failures, mismatches = [], 0, 0
    queue = list(range(len(bodies)))
    host, port = url.removeprefix("http://").split(":")
    connections = [await _Connection.open(host, int(port)) for _ in range(concurrency)]
    try:
        # Warm-up: compile the model's batch shapes.
        await asyncio.gather(*[c.post(body) for c, body in zip(connections, bodies)])

        async def worker(connection):
            nonlocal failures, mismatches
            while queue:
                i = queue.pop()
                start = time.perf_counter()
                try:
                    status, payload = await connection.post(bodies[i])
                except (OSError, asyncio.IncompleteReadError, KeyError, ValueError):
                    failures += 1
                    connection = await _Connection.open(host, int(port))
                    continue
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    failures += 1
                    continue
                got = json.loads(payload)[0]
                mismatches += (got["class"], got["expert"]) != tuple(expected[i])

        start = time.perf_counter()
        await asyncio.gather(*[worker(c) for c in connections])
        seconds = time.perf_counter() - start
    finally:
        for connection in connections:
            connection.close()
    latencies.sort()
    return {
        "requests": len(bodies),
        "requests_per_second": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        "failed": failures,
        "mismatched": mismatches,
    }


class _Connection:
    """A minimal HTTP/1.1 keep-alive client for the load test: POST an image, read the
    status and the body (uvicorn always sends Content-Length for these JSON answers).

    The load generator shares the cores with the server, so it should cost far less
    CPU per request than the service does; a general client (connection pools,
    header models, retries) spends its time where this one needs none.
    """

    def __init__(self, reader, writer, host):
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host, port):
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, host)

    async def post(self, body, path="/predict"):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode("latin-1") + body)
        await self.writer.drain()
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        return status, await self.reader.readexactly(int(headers["content-length"]))

    def close(self):
        self.writer.close()


def _uvicorn_stack():
    """What uvicorn's "auto" picks: httptools and uvloop when installed, else h11 and asyncio."""
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"{http}, {loop}"


def _markdown(results, source, requests, expert_macs):
    rows = []
    for name, by_concurrency in results.items():
        for c, r in by_concurrency.items():
            rows.append(
                [
                    name,
                    c,
                    f"{r['requests_per_second']:.1f}",
                    f"{r['p50_ms']:.1f}",
                    f"{r['p99_ms']:.1f}",
                    f"{r['failed']}",
                    f"{r['mismatched']}",
                ]
            )
    table = common.markdown_table(
        ["configuration", "concurrency", "requests/s", "p50 ms", "p99 ms", "failed", "mismatched"],
        rows,
    )
    best = results["routed + batching"]["32"]["requests_per_second"]
    base = results["soft, no batching"]["32"]["requests_per_second"]
    lost = sum(r["failed"] + r["mismatched"] for c in results.values() for r in c.values())
    verdict = "MET" if best >= 3 * base and lost == 0 else "NOT MET"
    return (
        f"`{common.command_line()}`: {requests} requests per row (one PNG image each, "
        f"{source}), 4 experts of {expert_macs / 1e6:.0f} MMACs each, client and server on "
        f"this machine's cores; uvicorn's HTTP parser and event loop: {_uvicorn_stack()}."
        f"\n\n{table}\n\n"
        f"Target ({TARGET}): **{verdict}**: {best / base:.2f}x at concurrency 32; "
        f"{lost} failed or mismatched responses in all rows.\n"
    )


if __name__ == "__main__":
    sys.exit(main())

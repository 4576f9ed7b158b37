"""A burst at `condnet serve` while a large upload decodes: nothing lost, /health answers.

    python benchmarks/serve_burst.py [--backend tensorflow|jax|torch] [--quick]

Saves the model of `benchmarks/serve.py` as a run directory and starts `condnet
serve` on 127.0.0.1 (a subprocess, `--header-timeout 2 --body-timeout 2`). Then
it sends one large request, 10 PNGs of 8,000 x 8,000 pixels in one multipart
form (blocks of one colour, so a few MB: under the default limits, the case of
issue 31; 2 with `--quick`), and while it decodes:

- a bounded burst at concurrency 32: good requests (one CIFAR-10 image each, or
  three in a multipart form), bad ones (not an image, truncated, empty, wrong
  content type, too many pixels, too large) and slow ones (headers or body never
  finished, a client that hangs up mid-body);
- `GET /health` every 20 ms from a thread of its own, on its own keep-alive
  connection, for as long as the large request is in flight.

Every good answer (the large one's too) is checked against offline `predict` of
the same images (class and expert, in order): a lost or failed good request and a
mismatched answer are counted, and so is a bad one answered with another status
than expected. The server's resident memory (VmRSS of /proc/PID/status) is read
after a warm-up (the good requests once, at the same concurrency: the model traces
its batch shapes), after the burst and the large request, and its peak (VmHWM).
Writes `benchmarks/results/serve_burst-<backend>.json` and the "Serving: a burst during a large
upload" section of benchmarks/results/serve_burst.md.
"""

import asyncio
import http.client
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common
import data_sets

os.environ["KERAS_BACKEND"] = common.choose_backend()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import httpx  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402
import serve as load_test  # noqa: E402  (benchmarks/serve.py: the model, run and helpers)
from PIL import Image  # noqa: E402

from condnet.data.decode import decode_image_bytes  # noqa: E402
from condnet.evaluation.evaluate import prediction_row  # noqa: E402
from condnet.testing import free_port  # noqa: E402

CONCURRENCY = 32
TARGET = (
    "no good request lost or mismatched, every bad one refused with its status, /health p99 "
    "under 100 ms while the large request decodes, memory after the burst within 10% of before"
)
SERVER_FLAGS = ["--routing", "hard", "--header-timeout", "2", "--body-timeout", "2"]


def main(argv=None):
    args = common.parse_args(__doc__, argv)
    images, _, source = data_sets.load_images(
        args.data, 64 if args.quick else 160, models.HIERARCHIES[4]
    )
    model = models.conditional_model(4, width=4, routing="hard")
    model(images[:2])
    models.balance_gate(model.gate, images)
    good = _good_requests([load_test._png(image) for image in images])
    large = [(f"large-{i}.png", _big_png(i)) for i in range(2 if args.quick else 10)]
    expected = _expected(model, [*(pair for _, pairs in good for pair in pairs), *large])
    with tempfile.TemporaryDirectory() as folder:
        run = load_test._save_run(model, Path(folder))
        result = _measure(run, good, large, expected, Path(folder) / "server.log")
    result = {"source": source, "large_request_bytes": sum(len(d) for _, d in large), **result}
    body = _markdown(result, len(large))
    print(body)
    variant = "quick" if args.quick else "full"
    heading = "Serving: a burst during a large upload"
    common.write_results("serve_burst", variant, result, heading, body, args.results)
    return 0


# === Requests ===


def _good_requests(bodies):
    """[(kind, [(name, png)])]: one image per request, and every fifth three in a form."""
    requests, i = [], 0
    while i < len(bodies):
        count = 3 if len(requests) % 5 == 4 else 1
        pairs = [(f"image-{j}.png", bodies[j]) for j in range(i, min(i + count, len(bodies)))]
        requests.append(("form" if count > 1 else "raw", pairs))
        i += count
    return requests


def _big_png(seed, size=8000):
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST).save(buffer, "PNG")
    return buffer.getvalue()


def _bad_requests():
    """[(httpx keyword arguments, status expected)]."""
    png = {"Content-Type": "image/png"}
    bomb = io.BytesIO()
    Image.new("L", (9000, 9000)).save(bomb, format="PNG")  # 81 MP: over the default 67 MP
    truncated = load_test._png(np.zeros((32, 32, 3)))[:60]
    return [
        ({"content": b"hello", "headers": png}, 400),
        ({"content": truncated, "headers": png}, 400),
        ({"content": b"", "headers": png}, 400),
        ({"content": b"{}", "headers": {"Content-Type": "application/json"}}, 415),
        ({"content": bomb.getvalue(), "headers": png}, 413),
        ({"content": b"x" * (17 * 2**20), "headers": png}, 413),
    ] * 4


def _slow_requests():
    """[(bytes that never complete a request, answer expected: None when the client hangs up)]."""
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
    body = head + b"Content-Length: 5000\r\n\r\n" + b"\x89PNG" * 25
    return [(head, b"HTTP/1.1 408"), (body, b"HTTP/1.1 408"), (body, None)] * 4


def _expected(model, named):
    """(class, expert) of each named image, offline, decoded as the service decodes."""
    pixels = np.stack([decode_image_bytes(data, (32, 32)) for _, data in named])
    outputs = model.predict(pixels.astype("float32"), batch_size=256, verbose=0)
    rows = [prediction_row(model.hierarchy, n, outputs, i) for i, (n, _) in enumerate(named)]
    return {row["path"]: (row["class"], row["expert"]) for row in rows}


# === Measuring ===


def _measure(run, good, large, expected, log):
    port = free_port()
    command = [sys.executable, "-m", "condnet", "serve", str(run), "--port", str(port)]
    with open(log, "w") as errors:  # uvicorn's error log; its access log is stdout
        server = subprocess.Popen(
            [*command, *SERVER_FLAGS], stdout=subprocess.DEVNULL, stderr=errors
        )
    try:
        url = f"http://127.0.0.1:{port}"
        load_test._wait_for_health(url, server)
        asyncio.run(_warm_up(url, good))
        before = _memory(server.pid)
        result = asyncio.run(_burst(url, good, large, expected))
        time.sleep(2)  # let freed buffers go back to the system
        after = _memory(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    tracebacks = log.read_text().count("Traceback")
    memory = {"rss_before_mb": before["VmRSS"], "rss_after_mb": after["VmRSS"]}
    memory["rss_peak_mb"] = after["VmHWM"]
    memory["rss_after_over_before"] = round(after["VmRSS"] / before["VmRSS"], 3)
    return {**result, **memory, "tracebacks_in_server_log": tracebacks}


async def _warm_up(url, good):
    """Send the good requests once at full concurrency: the model traces its batch
    shapes, a one-time cost that memory "before" should already hold."""
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        answers = await asyncio.gather(*[_send(client, kind, pairs) for kind, pairs in good])
    for answer in answers:
        answer.raise_for_status()


def _memory(pid):
    """VmRSS and VmHWM of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return fields


async def _send(client, kind, pairs):
    if kind == "raw":
        return await client.post(
            "/predict", content=pairs[0][1], headers={"Content-Type": "image/png"}
        )
    return await client.post(
        "/predict", files=[("images", (name, data, "image/png")) for name, data in pairs]
    )


async def _burst(url, good, large, expected):
    bad, slow = _bad_requests(), _slow_requests()
    limits = httpx.Limits(max_connections=CONCURRENCY + 1)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def bounded(coroutine):
            async with gate:
                try:
                    return await coroutine
                except (httpx.HTTPError, OSError, asyncio.TimeoutError) as error:
                    return error

        poller = _HealthPoller(url)
        poller.start()
        big = asyncio.create_task(_send(client, "form", large))
        big.add_done_callback(lambda _: poller.done.set())  # measure during it only
        await asyncio.sleep(0.5)  # the large request is decoding
        host, port = url.removeprefix("http://").split(":")
        answers = await asyncio.gather(
            *[bounded(_send(client, kind, pairs)) for kind, pairs in good],
            *[bounded(client.post("/predict", **kwargs)) for kwargs, _ in bad],
            *[bounded(_raw(host, int(port), message, want)) for message, want in slow],
        )
        large_answer = await big
        health = poller.stop()
    good_answers = answers[: len(good)]
    bad_answers = answers[len(good) : len(good) + len(bad)]
    slow_answers = answers[len(good) + len(bad) :]
    failed, mismatched = _check([*good, ("form", large)], [*good_answers, large_answer], expected)
    return {
        "requests": len(good) + len(bad) + len(slow) + 1,
        "good_requests": len(good) + 1,
        "good_images": sum(len(pairs) for _, pairs in good) + len(large),
        "failed": failed,
        "mismatched": mismatched,
        "bad_requests": len(bad),
        "bad_with_wrong_status": sum(
            not isinstance(a, httpx.Response) or a.status_code != want
            for a, (_, want) in zip(bad_answers, bad)
        ),
        "slow_requests": len(slow),
        "slow_not_cut_off": sum(
            a is not True
            for a in slow_answers  # True: cut off as expected
        ),
        **health,
    }


def _check(requests, answers, expected):
    """(failed, mismatched) good requests: lost or not 200; any image with another
    (class, expert) than offline, or answered out of order."""
    failed = mismatched = 0
    for (_, pairs), answer in zip(requests, answers):
        if not isinstance(answer, httpx.Response) or answer.status_code != 200:
            failed += 1
            continue
        rows = answer.json()
        names = [name if len(pairs) > 1 else "upload" for name, _ in pairs]
        got = [(row["path"], row["class"], row["expert"]) for row in rows]
        want = [(n, *expected[name]) for n, (name, _) in zip(names, pairs)]
        mismatched += got != want
    return failed, mismatched


async def _raw(host, port, message, want):
    """Send a request that never completes; True when the server cuts it off as expected
    (the answer `want`, then the end of the connection), or at once when `want` is None."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(message)
    await writer.drain()
    try:
        if want is None:
            return True  # hangs up mid-body: the server logs one line
        return (await asyncio.wait_for(reader.read(), 30)).startswith(want)
    finally:
        writer.close()


class _HealthPoller(threading.Thread):
    """GET /health every 20 ms on one keep-alive connection until `stop()`; latencies."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.address = url.removeprefix("http://").split(":")
        self.latencies, self.errors, self.done = [], 0, threading.Event()

    def run(self):
        connection = http.client.HTTPConnection(*self.address, timeout=60)
        while not self.done.is_set():
            start = time.perf_counter()
            try:
                connection.request("GET", "/health")
                response = connection.getresponse()
                ok = response.read() == b'{"status":"ok"}'
            except (OSError, http.client.HTTPException):
                connection.close()
                ok = False
            self.latencies.append(time.perf_counter() - start)
            self.errors += not ok
            self.done.wait(0.02)

    def stop(self):
        self.done.set()
        self.join()
        latencies = sorted(self.latencies)
        return {
            "health_requests": len(latencies),
            "health_errors": self.errors,
            "health_p50_ms": round(1000 * statistics.median(latencies), 1),
            "health_p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
            "health_max_ms": round(1000 * latencies[-1], 1),
        }


# === Report ===


def _pair(result, *keys):
    return " / ".join(str(result[key]) for key in keys)


def _markdown(r, large_images):
    rows = [
        ["requests sent", r["requests"]],
        ["good requests (images)", f"{r['good_requests']} ({r['good_images']})"],
        ["failed or lost good requests", r["failed"]],
        ["mismatched good answers", r["mismatched"]],
        ["bad requests / with another status", _pair(r, "bad_requests", "bad_with_wrong_status")],
        ["slow requests / not cut off", _pair(r, "slow_requests", "slow_not_cut_off")],
        ["/health during the large request / errors", _pair(r, "health_requests", "health_errors")],
        ["/health p50 / p99 / max ms", _pair(r, "health_p50_ms", "health_p99_ms", "health_max_ms")],
        ["server RSS before / after the burst MB", _pair(r, "rss_before_mb", "rss_after_mb")],
        ["after / before", r["rss_after_over_before"]],
        ["server peak RSS MB", r["rss_peak_mb"]],
        ["tracebacks in the server log", r["tracebacks_in_server_log"]],
    ]
    met = (
        r["failed"] + r["mismatched"] + r["bad_with_wrong_status"] + r["slow_not_cut_off"] == 0
        and r["health_errors"] == 0
        and r["health_p99_ms"] < 100
        and r["rss_after_over_before"] <= 1.1
        and r["tracebacks_in_server_log"] == 0
    )
    return (
        f"`{common.command_line()}`: `condnet serve {' '.join(SERVER_FLAGS)}` on "
        f"{os.environ['KERAS_BACKEND']}; one large request of {large_images} PNGs of "
        f"8,000 x 8,000 pixels ({r['large_request_bytes'] / 2**20:.1f} MB) and, while it "
        f"decodes, a burst at concurrency {CONCURRENCY} ({r['source']}) and /health every "
        "20 ms; client and server share this machine's cores.\n\n"
        + common.markdown_table(["measure", "value"], rows)
        + "\n\n"
        + "\n".join(common.machine(os.environ["KERAS_BACKEND"]))
        + f"\n\nTarget ({TARGET}): **{'MET' if met else 'NOT MET'}**.\n"
    )


if __name__ == "__main__":
    sys.exit(main())

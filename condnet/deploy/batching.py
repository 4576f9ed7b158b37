"""Dynamic micro-batching: requests that arrive together are routed as one batch.

A routed model is cheapest on full batches (each expert sees only its share
of a batch), and a web service receives images one request at a time. The
`MicroBatcher` keeps one worker task: it takes the first waiting request,
collects more until `max_batch` images are waiting or `max_wait_ms` has passed
since the first, runs the model once on all of them in its own thread (so the
event loop keeps accepting requests, and the model never waits behind other work
queued in a shared pool), and hands each request its own rows back.
"""

import asyncio
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class MicroBatcher:
    """Run `predict(images) -> {name: array}` on micro-batches of concurrent requests.

    Args:
        predict: function of a numpy batch, returning a dict of arrays with
            one row per image.
        max_batch: at most this many images per model call (a request with
            more runs alone). 1 turns batching off.
        max_wait_ms: how long the first request of a batch waits for others
            (finite: an infinite wait would never answer).
        sleep: coroutine function of seconds, awaited to time that wait.
            Defaults to `asyncio.sleep`; a test passes one that returns when it
            says so, and so decides when a batch stops waiting.
    """

    def __init__(self, predict, max_batch=32, max_wait_ms=5.0, sleep=asyncio.sleep):
        if int(max_batch) < 1 or not 0 <= float(max_wait_ms) < math.inf:  # NaN fails too
            raise ValueError(
                "max_batch must be at least 1 and max_wait_ms a finite number, at least 0. "
                f"Received: max_batch={max_batch!r}, max_wait_ms={max_wait_ms!r}"
            )
        self.predict = predict
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.sleep = sleep
        self.batch_sizes = Counter()  # images per model call -> number of calls
        self._queue = None
        self._worker = None
        self._thread = None  # the one thread the model runs in

    async def submit(self, images):
        """The model's outputs for `images` (a numpy batch), batched with other requests."""
        if self._worker is None or self._worker.done():
            if self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="condnet-model")
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._work())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((images, future))
        return await future

    async def close(self):
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None

    async def _work(self):
        while True:
            batch = [await self._queue.get()]
            await self._collect(batch)
            await self._run(batch)

    async def _collect(self, batch):
        rows = len(batch[0][0])
        timer = asyncio.ensure_future(self.sleep(self.max_wait))
        try:
            while rows < self.max_batch:
                item = await self._next(timer)
                if item is None:
                    return
                if rows + len(item[0]) > self.max_batch:
                    self._queue.put_nowait(item)  # it runs first in the next batch...
                    self._requeue_first()
                    return
                batch.append(item)
                rows += len(item[0])
        finally:
            timer.cancel()

    async def _next(self, timer):
        """The next waiting request, or None when `timer` ends before one arrives."""
        if self._queue.empty():
            get = asyncio.ensure_future(self._queue.get())
            try:
                await asyncio.wait({get, timer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                get.cancel()  # no-op once it holds its request; else the request stays queued
            if get.done():
                return get.result()
        return None if self._queue.empty() else self._queue.get_nowait()

    def _requeue_first(self):
        """...so move it from the back of the queue to the front (requests keep their order)."""
        items = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        for item in [items[-1], *items[:-1]]:
            self._queue.put_nowait(item)

    async def _run(self, batch):
        images = np.concatenate([item[0] for item in batch])
        self.batch_sizes[len(images)] += 1
        try:
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self._thread, self.predict, images)
        except Exception as error:  # every waiting request gets the error; the worker lives on
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        start = 0
        for rows, future in batch:
            stop = start + len(rows)
            if not future.done():  # a client that went away
                future.set_result({k: np.asarray(v)[start:stop] for k, v in outputs.items()})
            start = stop

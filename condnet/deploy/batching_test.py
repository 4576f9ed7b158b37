import asyncio
import threading

import numpy as np
import pytest

from condnet.deploy.batching import MicroBatcher


class Timer:
    """A `sleep` for the batcher whose wait ends only when the test calls `ring()`."""

    def __init__(self):
        self.waits = []  # the seconds asked for, one per batch
        self.asked = None
        self.rung = None

    async def sleep(self, seconds):
        self.waits.append(seconds)
        self.asked.set()
        await self.rung.wait()

    def start(self):  # the events belong to the test's event loop
        self.asked, self.rung = asyncio.Event(), asyncio.Event()

    def ring(self):
        self.rung.set()


def _recorder(calls):
    """A model that doubles its input, records each batch's size, and fails on negatives."""

    def predict(x):
        calls.append(len(x))
        if (x < 0).any():
            raise RuntimeError("model failed")
        return {"double": x * 2}

    return predict


def _rows(n, value):
    return np.full((n, 1), float(value))


def test_a_full_batch_runs_without_waiting_for_the_timer():
    calls, timer = [], Timer()
    batcher = MicroBatcher(_recorder(calls), max_batch=4, max_wait_ms=250, sleep=timer.sleep)

    async def go():
        timer.start()
        results = await asyncio.gather(*[batcher.submit(_rows(1, i)) for i in range(4)])
        await batcher.close()
        return results, timer.rung.is_set()

    results, rung = asyncio.run(go())
    assert calls == [4] and dict(batcher.batch_sizes) == {4: 1} and not rung
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["double"], _rows(1, 2 * i))


def test_a_request_that_would_overflow_the_batch_opens_the_next_one_in_order():
    calls, timer = [], Timer()
    batcher = MicroBatcher(_recorder(calls), max_batch=4, max_wait_ms=250, sleep=timer.sleep)
    sizes = [1, 2, 3, 1]

    async def go():
        timer.start()
        results = await asyncio.gather(*[batcher.submit(_rows(n, i)) for i, n in enumerate(sizes)])
        await batcher.close()
        return results

    results = asyncio.run(go())
    assert calls == [3, 4]  # 1+2 (3 does not fit), then 3+1: no batch waited for the timer
    for i, (n, result) in enumerate(zip(sizes, results)):
        np.testing.assert_array_equal(result["double"], _rows(n, 2 * i))


def test_a_lone_request_is_answered_when_the_wait_ends():
    calls, timer = [], Timer()
    batcher = MicroBatcher(_recorder(calls), max_batch=4, max_wait_ms=250, sleep=timer.sleep)

    async def go():
        timer.start()
        request = asyncio.ensure_future(batcher.submit(_rows(1, 3)))
        await timer.asked.wait()
        waiting = not request.done() and calls == []
        timer.ring()
        result = await request
        await batcher.close()
        return waiting, result

    waiting, result = asyncio.run(go())
    assert waiting and calls == [1] and timer.waits == [0.25]
    np.testing.assert_array_equal(result["double"], _rows(1, 6))


def test_a_request_that_arrives_during_the_wait_joins_the_batch():
    calls, timer = [], Timer()
    batcher = MicroBatcher(_recorder(calls), max_batch=4, max_wait_ms=250, sleep=timer.sleep)

    async def go():
        timer.start()
        first = asyncio.ensure_future(batcher.submit(_rows(1, 1)))
        await timer.asked.wait()
        second = asyncio.ensure_future(batcher.submit(_rows(2, 2)))
        await asyncio.sleep(0)  # let the second request reach the queue
        timer.ring()
        results = await asyncio.gather(first, second)
        await batcher.close()
        return results

    first, second = asyncio.run(go())
    assert calls == [3]
    np.testing.assert_array_equal(first["double"], _rows(1, 2))
    np.testing.assert_array_equal(second["double"], _rows(2, 4))


def test_a_failing_model_fails_every_request_of_its_batch_and_the_next_batch_runs():
    calls = []
    batcher = MicroBatcher(_recorder(calls), max_batch=2, max_wait_ms=0)

    async def go():
        failed = await asyncio.gather(
            batcher.submit(_rows(1, -1)), batcher.submit(_rows(1, 5)), return_exceptions=True
        )
        after = await batcher.submit(_rows(2, 1))
        await batcher.close()
        return failed, after

    failed, after = asyncio.run(go())
    assert calls == [2, 2]
    assert all(isinstance(error, RuntimeError) and "model failed" in str(error) for error in failed)
    np.testing.assert_array_equal(after["double"], _rows(2, 2))


def test_close_ends_the_models_thread_and_a_later_request_starts_a_new_one():
    threads = []

    def predict(x):
        threads.append(threading.current_thread())
        return {"same": x}

    batcher = MicroBatcher(predict, max_batch=1)

    async def go():
        before = await batcher.submit(_rows(1, 1))
        await batcher.close()
        threads[0].join(timeout=30)  # a safety net: the closed pool's thread exits at once
        after = await batcher.submit(_rows(1, 2))
        await batcher.close()
        return before, after

    before, after = asyncio.run(go())
    assert not threads[0].is_alive() and threads[1] is not threads[0]
    assert threads[0].name.startswith("condnet-model")
    np.testing.assert_array_equal(before["same"], _rows(1, 1))
    np.testing.assert_array_equal(after["same"], _rows(1, 2))


@pytest.mark.parametrize(
    "options, received",
    [
        ({"max_wait_ms": float("inf")}, "max_wait_ms=inf"),
        ({"max_wait_ms": float("nan")}, "max_wait_ms=nan"),
        ({"max_wait_ms": -1}, "max_wait_ms=-1"),
        ({"max_batch": 0}, "max_batch=0"),
    ],
)
def test_the_batcher_refuses_an_empty_batch_or_a_wait_that_never_ends(options, received):
    with pytest.raises(ValueError, match=f"max_wait_ms a finite number.*Received:.*{received}"):
        MicroBatcher(lambda x: {"x": x}, **options)

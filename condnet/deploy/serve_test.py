import asyncio
import contextlib
import io
import logging
import random
import re
import socket
import threading
import types

import numpy as np
import pytest
from PIL import Image

from condnet import Hierarchy
from condnet.data.decode import decode_image_bytes
from condnet.deploy import serve
from condnet.deploy.serve import create_app, run_server, server_config
from condnet.evaluation.evaluate import prediction_row
from condnet.testing import serve_in_thread
from condnet.vision.image_model import build_image_model

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

SIZE = (16, 16)
PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def model():
    hierarchy = Hierarchy({"round": ["circle", "ring"], "angular": ["square", "star", "kite"]})
    model = build_image_model(hierarchy, image_size=16, filters=(4, 8, 8), routing="hard")
    model(np.zeros((1, 16, 16, 3), "float32"))
    return model


def _png(seed, size=(20, 24)):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _expected(model, data, name="upload"):
    pixels = decode_image_bytes(data, SIZE)[None].astype("float32")
    outputs = model.predict(pixels, verbose=0)
    return prediction_row(model.hierarchy, name, outputs, 0)


def _client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _run(coroutine):
    return asyncio.run(coroutine)


def _assert_same(got, expected):
    assert {k: got[k] for k in ("group", "class", "expert")} == {
        k: expected[k] for k in ("group", "class", "expert")
    }
    assert got["confidence"] == pytest.approx(expected["confidence"], abs=1e-5)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(model):
    # The batch closes when all 12 images wait (the 10 s wait is only a safety net).
    app = create_app(model, SIZE, max_batch=12, max_wait_ms=10_000)
    images = [_png(seed) for seed in range(12)]

    async def go():
        async with _client(app) as client:
            headers = {"Content-Type": "image/png"}
            return await asyncio.gather(
                *[client.post("/predict", content=data, headers=headers) for data in images]
            )

    responses = _run(go())
    assert [r.status_code for r in responses] == [200] * 12
    for data, response in zip(images, responses):
        (got,) = response.json()
        _assert_same(got, _expected(model, data))
    assert dict(app.state.batcher.batch_sizes) == {12: 1}  # one model call for all


def test_a_multipart_request_with_several_images_answers_each_by_name(model):
    app = create_app(model, SIZE)
    files = [("images", (f"photo-{i}.png", _png(i + 50), "image/png")) for i in range(3)]

    async def go():
        async with _client(app) as client:
            return await client.post("/predict", files=files)

    response = _run(go())
    assert response.status_code == 200
    body = response.json()
    assert [row["path"] for row in body] == ["photo-0.png", "photo-1.png", "photo-2.png"]
    for (_, (name, data, _)), got in zip(files, body):
        _assert_same(got, _expected(model, data, name))


def _bomb():
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")  # 25 MP, a few KB packed
    return buffer.getvalue()


BAD_REQUESTS = [
    ("not an image", {"content": b"hello", "headers": {"Content-Type": "image/png"}}, 400),
    ("empty", {"content": b"", "headers": {"Content-Type": "image/png"}}, 400),
    ("truncated", {"content": _png(1)[:60], "headers": {"Content-Type": "image/png"}}, 400),
    ("text", {"content": b"{}", "headers": {"Content-Type": "application/json"}}, 415),
    ("too big", {"content": b"x" * 5000, "headers": {"Content-Type": "image/png"}}, 413),
    ("too many pixels", {"content": _bomb(), "headers": {"Content-Type": "image/png"}}, 413),
]


@pytest.mark.parametrize(
    "name, request_kwargs, status", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_a_4xx_with_a_reason_and_the_service_lives_on(
    model, name, request_kwargs, status
):
    limit = 4000 if name == "too big" else 2**20
    app = create_app(model, SIZE, max_upload_bytes=limit, max_pixels=10**6)

    async def go():
        async with _client(app) as client:
            bad = await client.post("/predict", **request_kwargs)
            health = await client.get("/health")
            good = await client.post(
                "/predict", content=_png(7), headers={"Content-Type": "image/png"}
            )
            return bad, health, good

    bad, health, good = _run(go())
    assert bad.status_code == status
    assert bad.json()["error"] and "BytesIO" not in bad.json()["error"]
    assert health.json() == {"status": "ok"}
    assert good.status_code == 200


def test_a_token_guards_everything_but_health_and_the_page(model):
    app = create_app(model, SIZE, token="s3cret")

    async def go():
        async with _client(app) as client:
            image = {"content": _png(3), "headers": {"Content-Type": "image/png"}}
            return {
                "none": await client.post("/predict", **image),
                "wrong": await client.get("/model", headers={"Authorization": "Bearer nope"}),
                "right": await client.get("/model", headers={"Authorization": "Bearer s3cret"}),
                "health": await client.get("/health"),
                "page": await client.get("/"),
            }

    r = _run(go())
    assert r["none"].status_code == 401 and r["wrong"].status_code == 401
    assert r["right"].status_code == 200
    assert r["right"].json()["hierarchy"] == model.hierarchy.to_dict()
    assert r["health"].status_code == 200 and "<title>condnet</title>" in r["page"].text


def test_model_endpoint_describes_routing_input_and_limits(model):
    app = create_app(model, SIZE, info={"macs_per_route": {"round": 10, "angular": 12}})

    async def go():
        async with _client(app) as client:
            return (await client.get("/model")).json()

    info = _run(go())
    assert info["routing"] == "hard"
    assert info["input"] == {"image_size": [16, 16], "color_mode": "rgb"}
    assert info["macs_per_route"] == {"round": 10, "angular": 12}
    assert info["limits"]["max_batch"] == 32


def test_a_missing_web_framework_names_the_extra_that_installs_it(model, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"needs uvicorn: pip install 'condnet\[serve\]'"):
        create_app(model, SIZE)


# === A server no request can stall or open ===


def _big_png(seed, size=(1000, 1000)):
    """A large image that packs small (blocks of one colour), as a 1.9 MB 8,000 x 8,000 PNG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize(size[::-1], Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def held(monkeypatch):
    """Decoding an image named `held-*` waits in its thread until `release` is set: a
    large upload decoding, for as long as a test needs. `waited` says, per held image,
    whether it was released (True) rather than given up on (False)."""
    started, release, waited = threading.Event(), threading.Event(), []
    decode = serve.decode_image_bytes

    def held_decode(data, *args, name="<upload>", **kwargs):
        if name.startswith("held-"):
            started.set()
            waited.append(release.wait(timeout=10))  # a safety net, never reached when fixed
        return decode(data, *args, name=name, **kwargs)

    monkeypatch.setattr(serve, "decode_image_bytes", held_decode)
    yield types.SimpleNamespace(started=started, release=release, waited=waited)
    release.set()


@pytest.fixture
def server(caplog):
    """Start an app with `server_config` on a free loopback port in a thread; yields a
    function of the app (and `server_config`'s options) returning (host, port).
    `caplog` holds the records of uvicorn's log, where condnet's own lines go too."""
    running, log = [], logging.getLogger("uvicorn.error")

    def start(app, **options):
        config = server_config(app, port=0, log_level="warning", **options)
        log.addHandler(caplog.handler)  # after the config, which sets the log's handlers
        server, thread = serve_in_thread(config)
        running.append((server, thread))
        return server.servers[0].sockets[0].getsockname()[:2]

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)
    log.removeHandler(caplog.handler)


def _expected_rows(model, named_images):
    """The rows `condnet predict --json` gives for [(name, bytes)], in one offline predict."""
    pixels = np.stack([decode_image_bytes(data, SIZE) for _, data in named_images])
    outputs = model.predict(pixels.astype("float32"), verbose=0)
    return [prediction_row(model.hierarchy, n, outputs, i) for i, (n, _) in enumerate(named_images)]


def _assert_rows(response, expected):
    assert response.status_code == 200, response.text
    rows = response.json()
    assert [row["path"] for row in rows] == [row["path"] for row in expected]
    for got, want in zip(rows, expected):
        _assert_same(got, want)


def test_health_and_small_requests_answer_while_a_large_upload_decodes(model, held):
    app = create_app(model, SIZE)
    large = [(f"{'held' if i == 0 else 'large'}-{i}.png", _big_png(80 + i)) for i in range(3)]

    async def go():
        async with _client(app) as client:
            files = [("images", (name, data, "image/png")) for name, data in large]
            big = asyncio.create_task(client.post("/predict", files=files))
            assert await asyncio.to_thread(held.started.wait, 10)
            health = await client.get("/health")
            small = await client.post("/predict", content=_png(5), headers=PNG)
            still_decoding = not big.done()
            held.release.set()
            return health, small, still_decoding, await big

    health, small, still_decoding, big = _run(go())
    assert health.json() == {"status": "ok"}
    _assert_rows(small, [_expected(model, _png(5))])
    assert still_decoding and held.waited == [True]  # answered while the decode was held
    _assert_rows(big, _expected_rows(model, large))


def _until_closed(address, *messages):
    """Send each message on one connection, then read until the server closes it (a
    server that never does fails the test when the socket's 10 s safety net runs out)."""
    with socket.create_connection(address, timeout=10) as connection:
        received = []
        for message in messages:
            connection.sendall(message)
            if message.endswith(b"\r\n\r\n"):  # a whole request: read its answer first
                received.append(connection.recv(65536))
        while chunk := connection.recv(65536):
            received.append(chunk)
    return b"".join(received)


def test_slow_headers_and_slow_bodies_are_cut_off(model, server, caplog):
    address = server(create_app(model, SIZE, body_timeout=0.5), header_timeout=0.5)
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
    silent = _until_closed(address, b"")
    slow_head = _until_closed(address, head)
    slow_body = _until_closed(address, head + b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    slow_second_head = _until_closed(address, health, b"GET /model HTTP/1.1\r\n")
    assert silent == b""  # a connection that never sends a byte is closed
    assert slow_head.startswith(b"HTTP/1.1 408") and b"headers did not arrive" in slow_head
    assert slow_body.startswith(b"HTTP/1.1 408") and b"body did not arrive" in slow_body
    assert slow_second_head.count(b"HTTP/1.1 200") == 1 and b"HTTP/1.1 408" in slow_second_head
    lines = [r.getMessage() for r in caplog.records if "header timeout" in r.getMessage()]
    assert len(lines) == 2 and not any(r.exc_info for r in caplog.records)


def test_a_client_that_hangs_up_mid_body_is_logged_in_one_line(model, server, caplog):
    address = server(create_app(model, SIZE))
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
    with _logged("disconnected") as disconnected:
        with socket.create_connection(address, timeout=10) as connection:
            connection.sendall(head + b"Content-Length: 100000\r\n\r\n" + b"x" * 100)
        assert disconnected.wait(timeout=30)  # a safety net: the line comes at once
    (line,) = _lines(caplog, "disconnected")
    assert "during the body of POST /predict (100 of 100000 bytes received)" in line
    assert "\n" not in line and not any(r.exc_info for r in caplog.records)
    health = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert _until_closed(address, health).endswith(b'{"status":"ok"}')  # still serving


def _lines(log, word):
    return [r.getMessage() for r in log.records if word in r.getMessage()]


@contextlib.contextmanager
def _logged(word):
    """An event set when uvicorn's log (written in the server's thread) gets a line
    holding `word`."""
    event, log = threading.Event(), logging.getLogger("uvicorn.error")

    class Handler(logging.Handler):
        def emit(self, record):
            if word in record.getMessage():
                event.set()

    handler = Handler()
    log.addHandler(handler)
    try:
        yield event
    finally:
        log.removeHandler(handler)


def test_tokens_compare_as_utf8_bytes_and_undecodable_headers_get_a_401(model):
    app = create_app(model, SIZE, token="pässwort")
    given = {
        "utf-8": "Bearer pässwort".encode(),
        "latin-1": "Bearer pässwort".encode("latin-1"),
        "not text": b"Bearer \xff\xfe\x80",
        "ascii": b"Bearer passwort",
        "other scheme": "Basic pässwort".encode(),
    }

    async def go():
        async with _client(app) as client:
            statuses = {}
            for name, value in given.items():
                response = await client.get("/model", headers={"Authorization": value})
                statuses[name] = response.status_code
            return statuses

    statuses = _run(go())
    assert statuses == {"utf-8": 200, "latin-1": 401, "not text": 401, "ascii": 401} | {
        "other scheme": 401
    }


START_ERRORS = [
    (["--max-wait-ms", "inf"], "--max-wait-ms must be a finite number from 0 to 10000 "),
    (["--max-wait-ms", "nan"], "milliseconds. Received: --max-wait-ms=nan"),
    (["--max-upload-mb", "inf"], "from 0.001 to 1024 MB. Received: --max-upload-mb=inf"),
    (["--port", "70000"], "--port must be an integer from 0 to 65535 (0: any free port). "),
    (["--max-batch", "0"], "Received: --max-batch=0"),
    (["--max-pixels", "0"], "Received: --max-pixels=0"),
    (["--max-documents", "0"], "from 1 to 100,000 documents. Received: --max-documents=0"),
    (["--header-timeout", "0"], "from 0.01 to 3600 seconds. Received: --header-timeout=0.0"),
    (["--body-timeout=-inf"], "Received: --body-timeout=-inf"),
    (["--token", ""], "--token is empty: the service would run with no authentication"),
    (["--token", " "], "Received: --token=' '"),
]


@pytest.mark.parametrize("argv, message", START_ERRORS, ids=[" ".join(a) for a, _ in START_ERRORS])
def test_serve_refuses_a_bad_option_at_start_in_one_line(argv, message, tmp_path, capsys):
    from condnet.runs.cli import main

    assert main(["serve", str(tmp_path / "no-run"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_serve_refuses_an_empty_token_from_the_environment(tmp_path, capsys, monkeypatch):
    from condnet.runs.cli import main

    monkeypatch.setenv("CONDNET_TOKEN", "")
    assert main(["serve", str(tmp_path / "no-run")]) == 2
    assert "$CONDNET_TOKEN is empty" in capsys.readouterr().err


PYTHON_ERRORS = [
    ({"max_wait_ms": float("inf")}, ValueError, "Received: max_wait_ms=inf"),
    ({"max_wait_ms": float("nan")}, ValueError, "Received: max_wait_ms=nan"),
    ({"max_upload_bytes": 2**40}, ValueError, "max_upload_bytes must be an integer from 1 to "),
    ({"max_batch": 2.5}, TypeError, "max_batch must be an integer. Received: max_batch=2.5"),
    ({"body_timeout": 0}, ValueError, "Received: body_timeout=0"),
    ({"token": ""}, ValueError, "token is empty"),
    ({"token": "s3cret\n"}, ValueError, "spaces at its ends or control characters"),
]


@pytest.mark.parametrize("options, kind, message", PYTHON_ERRORS)
def test_create_app_refuses_a_bad_option(model, options, kind, message):
    with pytest.raises(kind, match=re.escape(message)):
        create_app(model, SIZE, **options)


@pytest.mark.parametrize(
    "options, message",
    [({"port": 70000}, "Received: port=70000"), ({"header_timeout": -1}, "header_timeout=-1")],
)
def test_run_server_refuses_a_bad_option_before_it_binds(model, options, message, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self: pytest.fail("it started"))
    with pytest.raises(ValueError, match=re.escape(message)):
        run_server(create_app(model, SIZE), **options)


@pytest.mark.parametrize(
    "host, token, warns",
    [
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("192.168.1.5", None, True),
        ("example.org", None, True),
        ("0.0.0.0", "s3cret", False),
        ("127.0.0.1", None, False),
        ("::1", None, False),
        ("localhost", None, False),
    ],
)
def test_binding_beyond_loopback_without_a_token_warns_in_one_line(
    model, host, token, warns, monkeypatch, capsys
):
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: started.append(self.config.host))
    # uvicorn's logging config would bind its handlers to this test's captured stderr,
    # which is closed after it: later tests that log would fail on a closed file.
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)
    run_server(create_app(model, SIZE, token=token), host=host, port=0)
    err = capsys.readouterr().err
    assert started == [host]
    assert err.count("\n") == warns and (f"warning: serving on {host} " in err) == warns
    assert ("with no token" in err) == warns


# === A burst ===


def _burst(model):
    """(good, bad, slow) requests of a burst: good ones with the rows they must get."""
    singles = [(f"single-{i}", _png(200 + i)) for i in range(40)]
    forms = [[(f"form-{i}-{j}.png", _png(300 + 3 * i + j)) for j in range(3)] for i in range(8)]
    expected = iter(_expected_rows(model, [("upload", d) for _, d in singles] + sum(forms, [])))
    good = [("raw", [data], [next(expected)]) for _, data in singles]
    good += [("form", form, [next(expected) for _ in form]) for form in forms]
    bad = [(kwargs, status) for _, kwargs, status in BAD_REQUESTS if status != 413] * 2
    bad += [
        ({"content": _bomb(), "headers": PNG}, 413),
        ({"content": b"x" * 2**21, "headers": PNG}, 413),
    ]
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
    body = head + b"Content-Length: 5000\r\n\r\n" + _png(9)[:100]
    slow = [(head, b"HTTP/1.1 408"), (body, b"HTTP/1.1 408"), (body, None)] * 2
    return good, bad, slow


async def _send(client, kind, payload):
    if kind == "raw":
        return await client.post("/predict", content=payload[0], headers=PNG)
    files = [("images", (name, data, "image/png")) for name, data in payload]
    return await client.post("/predict", files=files)


async def _raw(address, message, hang_up):
    """Send a message that never completes; None when `hang_up`, else what comes back."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(message)
    await writer.drain()
    try:
        return None if hang_up else await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


def test_a_burst_of_good_bad_slow_and_large_requests_loses_and_swaps_nothing(
    model, server, held, caplog
):
    limits = {"max_upload_bytes": 2**20, "max_pixels": 4 * 10**6, "body_timeout": 2.0}
    address = server(create_app(model, SIZE, max_wait_ms=20, **limits), header_timeout=2.0)
    good, bad, slow = _burst(model)
    large = [(f"{'held' if i == 0 else 'large'}-{i}.png", _big_png(90 + i)) for i in range(4)]
    url = "http://{}:{}".format(*address)

    async def go():
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            gate = asyncio.Semaphore(32)

            async def bounded(coroutine):
                async with gate:
                    return await coroutine

            big = asyncio.create_task(_send(client, "form", large))
            assert await asyncio.to_thread(held.started.wait, 10)
            burst = [bounded(_send(client, kind, payload)) for kind, payload, _ in good]
            burst += [bounded(client.post("/predict", **kwargs)) for kwargs, _ in bad]
            burst += [bounded(_raw(address, m, hang_up=want is None)) for m, want in slow]
            burst += [bounded(client.get("/health")) for _ in range(16)]
            order = list(range(len(burst)))
            random.Random(0).shuffle(order)
            answers = await asyncio.gather(*[burst[i] for i in order])
            still_decoding = not big.done()
            held.release.set()
            return [answers[order.index(i)] for i in range(len(burst))], still_decoding, await big

    answers, still_decoding, big = _run(go())
    for (_, _, rows), response in zip(good, answers):
        _assert_rows(response, rows)
    answers = answers[len(good) :]
    assert [r.status_code for r in answers[: len(bad)]] == [status for _, status in bad]
    answers = answers[len(bad) :]
    for (_, want), answer in zip(slow, answers):
        assert answer is None if want is None else answer.startswith(want)
    assert [r.json() for r in answers[len(slow) :]] == [{"status": "ok"}] * 16
    assert still_decoding and held.waited == [True]  # all of it while the large one decoded
    _assert_rows(big, _expected_rows(model, large))
    assert not any(r.exc_info for r in caplog.records)  # no traceback in the log


# === Documents ===

DOCUMENTS = ["purr whisker kitten", "bark leash puppy fetch", "ticket bus stop", "engine car wheel"]
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def text_model():
    """An untrained text model (a bag of words over 8 token ids) with its vectorizer."""
    from condnet.data.text import make_vectorizer
    from condnet.text.text_model import build_text_model

    hierarchy = Hierarchy({"animals": ["cat", "dog"], "vehicles": ["bus", "car"]})
    vectorizer = make_vectorizer(DOCUMENTS, sequence_length=8)
    model = build_text_model(
        hierarchy, vectorizer.vocabulary_size(), 8, "bag", routing="hard", preprocessor=vectorizer
    )
    model(np.zeros((1, 8), "int32"))
    return model


def _expected_documents(model, texts):
    outputs = model.predict(texts, verbose=0)
    return [prediction_row(model.hierarchy, f"text:{i + 1}", outputs, i) for i in range(len(texts))]


def test_a_text_model_answers_json_documents_as_predict_does(text_model):
    app = create_app(text_model, max_wait_ms=200)

    async def go():
        async with _client(app) as client:
            one = client.post("/predict", json={"text": DOCUMENTS[1]})
            several = client.post("/predict", json={"text": DOCUMENTS})
            return await asyncio.gather(one, several)

    one, several = _run(go())
    assert one.status_code == several.status_code == 200
    (row,) = one.json()
    _assert_same(row, _expected_documents(text_model, DOCUMENTS[1:2])[0])
    assert row["path"] == "text:1"
    rows = several.json()
    assert [row["path"] for row in rows] == ["text:1", "text:2", "text:3", "text:4"]
    for got, expected in zip(rows, _expected_documents(text_model, DOCUMENTS)):
        _assert_same(got, expected)
    assert sum(n * count for n, count in app.state.batcher.batch_sizes.items()) == 5


def test_a_text_model_says_it_reads_text_and_how_many_documents(text_model):
    app = create_app(text_model, max_documents=50)

    async def go():
        async with _client(app) as client:
            return (await client.get("/model")).json()

    info = _run(go())
    assert info["modality"] == "text" and info["input"] == {"sequence_length": 8}
    assert info["limits"]["max_documents"] == 50 and "max_pixels" not in info["limits"]


def test_a_hub_text_model_answers_documents_through_its_presets_tokenizer(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    from condnet.testing import tiny_bert_preset
    from condnet.text.hub_text_model import build_hub_text_model

    words = {word for document in DOCUMENTS for word in document.lower().split()}
    preset = tiny_bert_preset(keras_hub, tmp_path / "preset", words)
    hierarchy = Hierarchy({"animals": ["cat", "dog"], "vehicles": ["bus", "car"]})
    model = build_hub_text_model(hierarchy, preset, 12, routing="hard")
    app = create_app(model, max_wait_ms=200)

    async def go():
        async with _client(app) as client:
            answers = await client.post("/predict", json={"text": DOCUMENTS})
            return answers, (await client.get("/model")).json()

    answers, info = _run(go())
    assert answers.status_code == 200 and info["input"] == {"sequence_length": 12}
    for got, expected in zip(answers.json(), _expected_documents(model, DOCUMENTS)):
        _assert_same(got, expected)


BAD_DOCUMENTS = [
    ("no text", {"json": {"body": "hi"}}, 400, "an object without \"text\" .keys: .'body'."),
    ("a number", {"json": {"text": 7}}, 400, 'Received: "text" is a number'),
    ("not strings", {"json": {"text": ["a", 1, None]}}, 400, "array holding null and number"),
    ("a list", {"json": ["a post"]}, 400, "a JSON array, not an object"),
    ("empty list", {"json": {"text": []}}, 400, '"text" is an empty list'),
    ("blank", {"json": {"text": ["a post", "  \n"]}}, 400, "document text:2 is blank"),
    ("surrogate", {"content": b'{"text": "a \\ud800"}', "headers": JSON}, 400, "not valid Unic"),
    ("not JSON", {"content": b"{text: 1", "headers": JSON}, 400, "the body is not JSON"),
    ("deep", {"content": b"[" * 3000, "headers": JSON}, 400, "the body is not JSON"),
    ("empty body", {"content": b"", "headers": JSON}, 400, 'no body: send JSON {"text"'),
    ("an image", {"content": _png(1), "headers": PNG}, 415, "this service reads documents"),
    ("too many", {"json": {"text": ["a"] * 4}}, 413, "holds 4 documents; at most 3"),
    ("too big", {"json": {"text": "a " * 3000}}, 413, "the upload is"),
]


@pytest.mark.parametrize(
    "name, request_kwargs, status, message", BAD_DOCUMENTS, ids=[b[0] for b in BAD_DOCUMENTS]
)
def test_bad_document_requests_get_a_4xx_that_says_why(
    text_model, name, request_kwargs, status, message
):
    app = create_app(text_model, max_upload_bytes=4000, max_documents=3)

    async def go():
        async with _client(app) as client:
            bad = await client.post("/predict", **request_kwargs)
            good = await client.post("/predict", json={"text": DOCUMENTS[:3]})
            return bad, good

    bad, good = _run(go())
    assert bad.status_code == status
    assert re.search(message, bad.json()["error"])
    assert good.status_code == 200 and len(good.json()) == 3


def test_create_app_refuses_an_image_size_that_does_not_fit_the_model(model, text_model):
    with pytest.raises(ValueError, match="reads documents through its preprocessor"):
        create_app(text_model, SIZE)
    with pytest.raises(ValueError, match="This model reads images: pass the image_size"):
        create_app(model)

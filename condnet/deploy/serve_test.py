import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from condnet import Hierarchy
from condnet.data.folders import decode_image_bytes
from condnet.deploy.batching import MicroBatcher
from condnet.deploy.serve import create_app
from condnet.evaluation.evaluate import prediction_row
from condnet.vision.image_model import build_image_model

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

SIZE = (16, 16)


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
    app = create_app(model, SIZE, max_batch=16, max_wait_ms=200)
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
    sizes = app.state.batcher.batch_sizes
    assert sum(n * count for n, count in sizes.items()) == 12
    assert max(sizes) > 1  # several requests shared one model call


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


def test_the_batcher_keeps_request_order_and_survives_a_failing_model():
    calls = []

    def predict(x):
        calls.append(len(x))
        if (x < 0).any():
            raise RuntimeError("model failed")
        return {"double": x * 2}

    batcher = MicroBatcher(predict, max_batch=4, max_wait_ms=100)

    async def go():
        ok = [batcher.submit(np.full((n, 1), float(i))) for i, n in enumerate([1, 2, 3, 1])]
        results = await asyncio.gather(*ok)
        failed = await asyncio.gather(batcher.submit(-np.ones((1, 1))), return_exceptions=True)
        after = await batcher.submit(np.ones((2, 1)))
        await batcher.close()
        return results, failed, after

    results, failed, after = _run(go())
    for i, (n, result) in enumerate(zip([1, 2, 3, 1], results)):
        np.testing.assert_array_equal(result["double"], np.full((n, 1), 2.0 * i))
    assert isinstance(failed[0], RuntimeError)
    np.testing.assert_array_equal(after["double"], np.full((2, 1), 2.0))
    assert all(n <= 4 for n in calls) and calls[:2] == [3, 4]  # 1+2, then 3+1


def test_a_missing_web_framework_names_the_extra_that_installs_it(model, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"needs uvicorn: pip install 'condnet\[serve\]'"):
        create_app(model, SIZE)

import io
import json
import os
import subprocess
import sys
import time
import urllib.request

import keras
import numpy as np
import pytest
from PIL import Image

from condnet.evaluation.evaluate_test import colour_model
from condnet.runs.cli import main
from condnet.runs.run_dir import predict_paths
from condnet.testing import free_port

OPTIONS = {"image_size": 8, "color_mode": "rgb"}
TENSORFLOW = keras.backend.backend() == "tensorflow"


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    colour_model().save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"options": OPTIONS}))
    return run


def _image(tmp_path, colour=(200, 30, 30), name="red.png"):
    path = tmp_path / name
    Image.new("RGB", (12, 10), colour).save(path)
    return path


def test_export_writes_an_onnx_file_that_predicts_like_the_run(run, tmp_path, capfd):
    # On jax and torch the command runs itself again under TensorFlow.
    onnxruntime = pytest.importorskip("onnxruntime")
    assert main(["export", str(run)]) == 0
    out = run / "export" / "model.onnx"
    assert f"to {out}" in capfd.readouterr().out
    image = _image(tmp_path)
    expected = predict_paths(run, [str(image)])[0]
    pixels = np.asarray(Image.open(image).convert("RGB").resize((8, 8), Image.BILINEAR))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    classes, groups, route = session.run(None, {"images": pixels[None].astype("float32")})
    assert float(classes.max()) == pytest.approx(expected["confidence"], abs=1e-5)
    assert groups.shape == (1, 2) and route.dtype == np.int32


@pytest.mark.skipif(not TENSORFLOW, reason="tracing runs on TensorFlow (the CLI switches to it)")
def test_an_export_replaces_only_an_export_and_only_with_overwrite(run, capsys):
    out = run / "export" / "saved"
    export = ["export", str(run), "--format", "tf_saved_model", "--out", str(out)]
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("keep me")
    assert main([*export, "--overwrite"]) == 2  # a folder condnet did not write
    assert "condnet did not write" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me"
    (out / "mine.txt").unlink()
    assert main(export) == 0  # an empty folder is free
    first = (out / "saved_model.pb").stat().st_mtime_ns
    assert main(export) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*export, "--overwrite"]) == 0
    assert (out / "saved_model.pb").stat().st_mtime_ns != first
    assert sorted(p.name for p in out.parent.iterdir()) == ["saved"]  # no partial or old copy


def test_export_refuses_to_write_among_the_run_files(run, capsys):
    before = (run / "model.keras").read_bytes()
    args = ["export", str(run), "--format", "keras", "--out", str(run / "model.keras")]
    assert main([*args, "--overwrite"]) == 2
    assert "lies inside the run" in capsys.readouterr().err
    assert (run / "model.keras").read_bytes() == before


def test_keras_export_is_a_model_file_with_the_routing_asked_for(run):
    assert main(["export", str(run), "--format", "keras", "--routing", "soft"]) == 0
    import condnet  # noqa: F401  (registers ConditionalModel for loading)

    exported = keras.models.load_model(run / "export" / "model.keras")
    assert exported.routing == "soft"


def _wait_for(url, process, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"no answer from {url}")


def test_the_served_model_names_its_run_by_folder_name_only(run, tmp_path, monkeypatch):
    import asyncio

    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from condnet.runs.deploy import serve_app

    monkeypatch.chdir(run)
    app = serve_app(".")  # even a relative path is named by its folder

    async def ask():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/model")

    answer = asyncio.run(ask())
    assert answer.status_code == 200 and answer.json()["run"] == "run"
    assert str(tmp_path) not in answer.text and "run_dir" not in answer.json()


@pytest.fixture
def server(run):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "condnet",
            "serve",
            str(run),
            "--port",
            str(port),
            "--token",
            "t0ken",
            "--max-wait-ms",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        assert _wait_for(f"http://127.0.0.1:{port}/health", process) == {"status": "ok"}
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        process.wait(timeout=30)


def _post(url, data, token="t0ken", kind="image/png"):
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", kind)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_condnet_serve_answers_like_predict_and_refuses_bad_requests(server, run, tmp_path):
    url, process = server
    image = _image(tmp_path)
    status, body = _post(f"{url}/predict", image.read_bytes())
    assert status == 200
    expected = predict_paths(run, [str(image)])[0]
    assert {k: body[0][k] for k in ("group", "class", "expert")} == {
        k: expected[k] for k in ("group", "class", "expert")
    }
    assert _post(f"{url}/predict", image.read_bytes(), token=None)[0] == 401
    assert _post(f"{url}/predict", b"garbage")[0] == 400
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="GIF")
    assert _post(f"{url}/predict", buffer.getvalue(), kind="text/plain")[0] == 415
    assert _wait_for(f"{url}/health", process) == {"status": "ok"}
    assert process.poll() is None

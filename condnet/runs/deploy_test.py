import io
import json
import os
import subprocess
import sys
import threading
import urllib.request

import keras
import numpy as np
import pytest
from PIL import Image

from condnet.evaluation.evaluate_test import colour_model
from condnet.runs.cli import main
from condnet.runs.documents_test import WORDS
from condnet.runs.documents_test import text_run as text_run  # noqa: F401  (the fixture)
from condnet.runs.run_dir import load_run, predict_paths
from condnet.testing import free_port

OPTIONS = {"image_size": 8, "color_mode": "rgb"}
NEW_DOCUMENTS = [" ".join(words.split() * 2) for words in WORDS.values()]  # cat, dog, bus, car
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


def _wait_until_serving(process, seconds=120):
    """Read the server's output until uvicorn says it listens. A thread reads (and goes on
    reading, so the pipe never fills); `seconds` is only a safety net for a server that
    hangs before it says anything."""
    lines, serving = [], threading.Event()

    def read():
        for line in process.stdout:
            lines.append(line)
            if "Uvicorn running on" in line:
                serving.set()
        serving.set()  # the server exited

    threading.Thread(target=read, daemon=True).start()
    serving.wait(seconds)
    assert any("Uvicorn running on" in line for line in lines), f"it did not start: {lines}"


def _get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


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
        _wait_until_serving(process)
        assert _get(f"http://127.0.0.1:{port}/health") == {"status": "ok"}
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
    assert _get(f"{url}/health") == {"status": "ok"}
    assert process.poll() is None


# === Text runs ===


def _rows_alike(got, expected):
    """The same rows but for `path`, numbers within 1e-5."""
    assert len(got) == len(expected)
    for row, want in zip(got, expected):
        assert set(row) == set(want)
        for key in set(want) - {"path"}:
            if isinstance(want[key], float | dict):
                assert row[key] == pytest.approx(want[key], abs=1e-5), key
            else:
                assert row[key] == want[key], key


@pytest.mark.slow
def test_serve_answers_a_text_run_as_predict_does_with_back_off_and_unknown(text_run, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from condnet.runs.deploy import serve_app
    from condnet.testing import ask_text_app

    run = text_run[0] / "run"
    lines = tmp_path / "new.txt"
    lines.write_text("\n".join(NEW_DOCUMENTS) + "\n")
    flags = {"back_off": True, "unknown": True}  # with the thresholds `condnet train` chose
    expected = predict_paths(run, [], lines=str(lines), **flags)
    app = serve_app(run, **flags)
    rows, info = ask_text_app(app, NEW_DOCUMENTS)
    assert [row["path"] for row in rows] == ["text:1", "text:2", "text:3", "text:4"]
    assert {"answer", "answer_level", "unknown", "unknown_score"} <= set(rows[0])
    _rows_alike(rows, expected)
    assert [row["class"] for row in rows] == ["cat", "dog", "bus", "car"]
    assert info["modality"] == "text" and info["input"] == {"sequence_length": 32}
    assert set(info["macs_per_route"]) == {"animals", "vehicles"}


@pytest.mark.slow
def test_a_text_run_exports_a_saved_model_that_reads_strings_as_predict_does(text_run, tmp_path):
    # On jax and torch the command runs itself again under TensorFlow.
    import tensorflow as tf

    run, out = text_run[0] / "run", tmp_path / "saved"
    assert main(["export", str(run), "--format", "tf_saved_model", "--out", str(out)]) == 0
    loaded = tf.saved_model.load(str(out))  # keep it: its variables die with it
    outputs = {k: v.numpy() for k, v in loaded.serve(tf.constant(NEW_DOCUMENTS)).items()}
    model, _ = load_run(run)
    expected = model.predict(NEW_DOCUMENTS, verbose=0)
    np.testing.assert_allclose(outputs["classes"], expected["classes"], atol=1e-5)
    np.testing.assert_allclose(outputs["groups"], expected["groups"], atol=1e-5)
    np.testing.assert_array_equal(outputs["route"], expected["route"])
    assert outputs["route"].tolist() == [0, 0, 1, 1]  # hard-routed: animals, then vehicles


@pytest.mark.slow
def test_a_text_run_is_not_exported_to_onnx_and_nothing_is_written(text_run, capfd):
    run = text_run[0] / "run"
    assert main(["export", str(run)]) == 2
    error = capfd.readouterr().err
    assert "condnet export: error: A model that reads documents cannot be exported to ONNX" in (
        error
    )
    assert "Export it with --format tf_saved_model" in error
    assert not (run / "export").exists()


@pytest.mark.slow
def test_a_text_run_exports_a_keras_file_that_predicts_strings(text_run, tmp_path):
    run, out = text_run[0] / "run", tmp_path / "model.keras"
    words = ["export", str(run), "--format", "keras", "--routing", "soft", "--out", str(out)]
    assert main(words) == 0
    exported = keras.models.load_model(out, safe_mode=True)
    assert exported.routing == "soft"
    model, _ = load_run(run, routing="soft")
    np.testing.assert_allclose(
        exported.predict(NEW_DOCUMENTS, verbose=0)["classes"],
        model.predict(NEW_DOCUMENTS, verbose=0)["classes"],
        atol=1e-6,
    )

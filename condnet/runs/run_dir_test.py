import json
import os
import shutil
import threading
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

from condnet.data.scan import scan_directory
from condnet.evaluation.evaluate_test import COLOURS, colour_model, make_colour_folders
from condnet.runs.run_dir import evaluate_run, load_run, predict_paths
from condnet.testing import truncated_jpeg

OPTIONS = {"image_size": 8, "color_mode": "rgb"}


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    colour_model().save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"options": OPTIONS}))
    return run


@pytest.fixture
def run(saved_run, tmp_path):
    return shutil.copytree(saved_run, tmp_path / "run")


# === Predictions and evaluation never borrow a neighbour's image ===


def test_predict_paths_gives_error_rows_for_files_that_cannot_be_decoded(run, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a_red", "c_blue", "e_green"):
        Image.new("RGB", (6, 6), COLOURS[name[2:]]).save(folder / f"{name}.png")
    truncated_jpeg(folder / "b_broken.jpg")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    threading.Thread(target=lambda: open(fifo, "wb").close(), daemon=True).start()
    rows = predict_paths(run, [folder, "/dev/zero", fifo], batch_size=2)
    assert [row["path"] for row in rows] == [
        str(folder / "a_red.png"),
        str(folder / "b_broken.jpg"),
        str(folder / "c_blue.png"),
        str(folder / "e_green.png"),
        "/dev/zero",
        str(fifo),
    ]
    assert [row.get("class") for row in rows] == ["red", None, "blue", "green", None, None]
    assert rows[1] == {"path": rows[1]["path"], "error": rows[1]["error"]}
    assert rows[1]["error"].startswith("cannot decode: unreadable (OSError: image file is trunc")
    assert rows[4]["error"] == "cannot decode: not a regular file (a character device)"
    assert rows[5]["error"] == "cannot decode: not a regular file (a FIFO)"
    assert rows[2]["expert"] == "cool" and rows[0]["group"] == "warm"


def test_evaluate_run_leaves_undecodable_files_out_of_the_metrics(run, tmp_path):
    data = make_colour_folders(tmp_path / "test")
    broken = truncated_jpeg(data / "warm" / "orange" / "5a.jpg")
    assert len(scan_directory(data)[1]) == 25  # it passes the scan
    with pytest.warns(UserWarning, match="Left 1 image"):
        metrics = evaluate_run(run, data, report_dir=tmp_path / "report", batch_size=4)
    assert (metrics["num_samples"], metrics["num_skipped"]) == (24, 1)
    assert metrics["accuracy"] == 1.0
    assert metrics["skipped"][0]["path"] == str(broken)
    written = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert written["num_skipped"] == 1 and written["skipped"] == metrics["skipped"]


# === Loading a run ===


def test_load_run_reads_model_and_config(run):
    model, config = load_run(run)
    assert config == {"options": OPTIONS}
    assert model.hierarchy.groups == ["cool", "warm"]


def _cut_in_half(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _without_config(path):
    (path.parent / "other.txt").write_text("x")
    shutil.make_archive(str(path.parent / "plain"), "zip", path.parent, "other.txt")
    os.replace(path.parent / "plain.zip", path)


def _garbled_config(path):
    with zipfile.ZipFile(path, "a") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": a second, newer config.json
        archive.writestr("config.json", "{not json")


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda path: path.write_bytes(b""), r"it is empty \(0 bytes\)"),
        (
            lambda path: path.write_bytes(os.urandom(256)),
            "it is not a complete .keras .zip. archive",
        ),
        (_cut_in_half, "it is not a complete .keras .zip. archive"),
        (_without_config, "it holds no config.json"),
        (_garbled_config, "Keras cannot load it"),
    ],
)
def test_load_run_error_corrupt_model_file(run, damage, problem):
    damage(run / "model.keras")
    with pytest.raises(
        ValueError, match=rf"model file is corrupt: {problem}.*Re-train.*model.keras"
    ):
        load_run(run)


def test_load_run_error_corrupt_model_suggests_the_last_checkpoint(run):
    (run / "checkpoints").mkdir()
    shutil.copy(run / "model.keras", run / "checkpoints" / "epoch-0003.keras")
    (run / "model.keras").write_bytes(b"")
    with pytest.raises(ValueError, match=r"corrupt.*copy the last epoch's checkpoint .*0003.keras"):
        load_run(run)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b'{"hierarchy": {}}', 'it has no "options" object'),
        (b"[1, 2]", 'it has no "options" object'),
        (b'{"options": {"image_size": 8}}', r"its \"options\" lack \['color_mode'\]"),
        (
            b'{"options": {"image_size": 8, "color_mode": "rgb", "note": "caf\xe9"}}',
            "it is not UTF-8",
        ),
        (b"[" * 100_000, "it nests too deeply"),
        (b'{"options": ', "it is not valid JSON"),
    ],
)
def test_load_run_error_unusable_config(run, content, problem):
    (run / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match=rf"config.json cannot be used: {problem}.*config.json'"):
        load_run(run)


def test_load_run_error_not_a_run(tmp_path):
    with pytest.raises(ValueError, match="not a finished condnet run.*Received: run_dir="):
        load_run(tmp_path)


# === Inference options and the baseline ===


def test_evaluate_run_scores_hard_routing_with_the_mixture_and_baseline_beside(run, tmp_path):
    import keras

    from condnet.evaluation.evaluate_test import TREE

    data = make_colour_folders(tmp_path / "data")
    inputs = keras.Input((8, 8, 3))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    classes = sum(len(names) for names in TREE.values())
    flat = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(mean))
    flat.save(run / "baseline.keras")
    metrics = evaluate_run(run, data)
    assert metrics["inference_routing"] == "hard" and metrics["accuracy"] == 1.0
    assert "accuracy" in metrics["mixture"]
    assert metrics["baseline"]["conditional"]["accuracy"] == 1.0
    assert metrics["baseline"]["flat"]["accuracy"] < 1.0  # an untrained head
    assert "beats the flat baseline" in metrics["baseline"]["verdict"]
    conditional, flat_scores = metrics["baseline"]["conditional"], metrics["baseline"]["flat"]
    # Choosing among the true group's classes can only help: at least the plain accuracy.
    assert conditional["within_group_accuracy"] >= metrics["mixture"]["accuracy"]
    assert flat_scores["within_group_accuracy"] >= flat_scores["accuracy"]
    within = f"right class for {conditional['within_group_accuracy']:.4f}"
    assert within in metrics["baseline"]["where"]
    report = (run / "evaluation" / "report.md").read_text()
    assert metrics["baseline"]["where"] in report
    assert "## Examples" in report and "**correct: right class**" in report  # its own gallery
    assert (run / "evaluation" / "examples" / "correct-00.png").is_file()
    soft = evaluate_run(run, data, routing="soft", report_dir=tmp_path / "soft")
    assert soft["inference_routing"] == "soft" and "accuracy" in soft["hard_routed"]


def _torn_model():
    """The colour model with a gate sure at 0.6 only and a cool expert that cannot tell
    blue from green: under the soft mixture the peaked warm expert wins the cool images,
    so the gate's top group is right for all and the final class's for half."""
    import keras

    from condnet import ConditionalModel
    from condnet.evaluation.evaluate_test import TREE, _fixed_softmax

    inputs = keras.Input((8, 8, 3))
    mean = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    gate = _fixed_softmax([[-0.2, 0.2], [0.2, -0.2], [0.2, -0.2]], [0, 0], "gate")
    warm = _fixed_softmax([[0, 0], [20, -20], [0, 0]], [-6, 6], "warm")
    cool = _fixed_softmax([[0, 0], [0, 0], [0, 0]], [0, 0], "cool")
    trunk = keras.Model(inputs, mean, name="trunk")
    experts = {"warm": warm, "cool": cool}
    return ConditionalModel(TREE, gate=gate, experts=experts, trunk=trunk, routing="hard")


def test_evaluate_run_scores_the_final_class_group_and_the_gate_apart(run, tmp_path):
    _torn_model().save(run / "model.keras")
    _flat_baseline(run / "baseline.keras")
    data = make_colour_folders(tmp_path / "data", per_class=2)
    soft = evaluate_run(run, data, routing="soft", report_dir=tmp_path / "soft")
    assert soft["gate_accuracy"] == 1.0 and soft["group_accuracy"] == 0.5
    # The comparison's group accuracy is the final class's, as the flat model's is.
    assert soft["baseline"]["conditional"]["group_accuracy"] == 0.5
    assert "the right group for 0.5000 of the images" in soft["baseline"]["where"]
    assert soft["hard_routed"] == {"accuracy": 0.75, "group_accuracy": 1.0, "gate_accuracy": 1.0}
    hard = evaluate_run(run, data, report_dir=tmp_path / "hard")
    assert hard["group_accuracy"] == hard["gate_accuracy"] == 1.0
    # The mixture beside it has the parts `condnet train` writes for its validation split.
    mixture = hard["mixture"]
    assert (mixture["group_accuracy"], mixture["gate_accuracy"]) == (0.5, 1.0)
    assert (
        mixture["within_group_accuracy"] == hard["baseline"]["conditional"]["within_group_accuracy"]
    )
    assert "every expert runs" in mixture["note"]


def test_evaluate_run_shows_the_costs_training_measured_and_times_its_own_speed(run, tmp_path):
    import keras

    from condnet.evaluation.evaluate_test import TREE

    data = make_colour_folders(tmp_path / "data")
    inputs = keras.Input((8, 8, 3))
    classes = sum(len(names) for names in TREE.values())
    head = keras.layers.Dense(classes, activation="softmax")
    keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(inputs))).save(
        run / "baseline.keras"
    )
    costs = {
        "conditional": {"macs_per_image": 3000, "images_per_second": 900.0, "epochs": 15},
        "flat": {"macs_per_image": 2990, "images_per_second": 540.0, "epochs": 12},
    }
    (run / "metrics.json").write_text(json.dumps({"baseline": costs}))
    hard = evaluate_run(run, data)["baseline"]
    for side in costs:
        kept = {k: v for k, v in costs[side].items() if k != "images_per_second"}
        assert {k: hard[side][k] for k in kept} == kept
        # The speed is timed on these images, not copied from the validation report.
        assert hard[side]["images_per_second"] not in (900.0, 540.0)
        assert hard[side]["images_per_second"] > 0
    assert "at 1.00x its MACs per image" in hard["verdict"]
    report = (run / "evaluation" / "report.md").read_text()
    assert "| macs_per_image | 3,000 | 2,990 |" in report
    assert "| epochs | 15 | 12 |" in report  # the epochs each model trained, as train recorded
    # Soft routing runs every expert: the routed cost would be wrong there, so none is shown.
    soft = evaluate_run(run, data, routing="soft", report_dir=tmp_path / "soft")["baseline"]
    assert "macs_per_image" not in soft["conditional"]


def test_load_run_takes_another_model_file_and_routing(run):
    shutil.copy(run / "model.keras", run / "model.calibrated.keras")
    model, _ = load_run(run, model_file="model.calibrated.keras", routing="soft")
    assert model.routing == "soft"
    with pytest.raises(ValueError, match="There is no model file .*Received: model='nope.keras'"):
        load_run(run, model_file="nope.keras")
    with pytest.raises(ValueError, match="routing must be one of \\['hard', 'soft'\\]"):
        load_run(run, routing="gumbel")


# === Run files read defensively ===


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"image_size": 100000, "color_mode": "rgb"}, "image_size=100000, where an int or"),
        ({"image_size": 0, "color_mode": "rgb"}, "image_size=0, where"),
        ({"image_size": "auto", "color_mode": "rgb"}, "image_size='auto', where"),
        ({"image_size": [8, 8, 3], "color_mode": "rgb"}, r"image_size=\[8, 8, 3\], where"),
        ({"image_size": True, "color_mode": "rgb"}, "image_size=True, where"),
        ({"image_size": 8, "color_mode": "cmyk"}, r"color_mode='cmyk', where one of \['rgb'"),
    ],
)
def test_load_run_error_absurd_option_values(run, options, problem):
    (run / "config.json").write_text(json.dumps({"options": options}))
    with pytest.raises(
        ValueError, match=rf"config.json cannot be used: its \"options\" hold {problem}"
    ):
        load_run(run)


def test_load_run_error_config_hierarchy_that_is_not_a_tree(run):
    (run / "config.json").write_text(json.dumps({"options": OPTIONS, "hierarchy": {"a": 3}}))
    with pytest.raises(ValueError, match=r"config.json cannot be used: its \"hierarchy\" is not a"):
        load_run(run)


@pytest.mark.parametrize(
    "write, message",
    [
        (
            lambda run: (run / "config.json").write_text(
                json.dumps({"options": OPTIONS, "hierarchy": {"a": ["x"], "b": ["y"]}})
            ),
            r"disagree on its hierarchy: model.keras names .* but config.json names \{'a'",
        ),
        (
            lambda run: (run / "hierarchy.json").write_text(json.dumps({"a": ["x"], "b": ["y"]})),
            r"disagree on its hierarchy: model.keras names .* but hierarchy.json names \{'a'",
        ),
        (
            lambda run: (run / "hierarchy.json").write_text("[1]"),
            "The run's hierarchy.json cannot be used: .*restore it from there, or delete it",
        ),
        (
            lambda run: (run / "config.json").write_text(
                json.dumps({"options": {"image_size": 16, "color_mode": "rgb"}})
            ),
            r"names image_size=16 .* but model.keras was built for inputs \(8, 8, 3\)",
        ),
        (
            lambda run: (run / "config.json").write_text(
                json.dumps({"options": {"image_size": 8, "color_mode": "grayscale"}})
            ),
            r"color_mode='grayscale' \(inputs \(8, 8, 1\)\), but model.keras was built for",
        ),
    ],
)
def test_load_run_error_files_of_another_run(run, write, message):
    write(run)
    with pytest.raises(ValueError, match=message):
        load_run(run)


def _flat_baseline(path, classes=4):
    import keras

    inputs = keras.Input((8, 8, 3))
    mean = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    flat = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax", name="head")(mean))
    head = flat.get_layer("head")
    # columns blue, green, orange, red; rows the mean red, green, blue: blue reads as green
    kernel = np.array([[0, 0, 12, 20], [0, 20, 15, 0], [0, 5, 0, 0]], "float32")[:, :classes]
    head.set_weights([kernel * 3, np.zeros(classes, "float32")])
    flat.save(path)
    return flat


def test_load_run_refuses_a_plain_keras_model_that_is_not_the_baseline(run):
    _flat_baseline(run / "baseline.keras", classes=3)
    with pytest.raises(ValueError, match="baseline.keras is not the run's flat baseline: .* of 4"):
        load_run(run, model_file="baseline.keras")
    _flat_baseline(run / "model.keras")
    with pytest.raises(ValueError, match="model.keras holds a Functional model, not a condnet"):
        load_run(run)
    with pytest.raises(ValueError, match="does not say which classes its flat baseline predicts"):
        load_run(run, model_file="baseline.keras")


def test_the_flat_baseline_predicts_evaluates_and_describes_itself(run, tmp_path):
    from condnet.runs.run_dir import run_info

    _flat_baseline(run / "baseline.keras")
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("red", "orange", "green"):
        Image.new("RGB", (6, 6), COLOURS[name]).save(folder / f"{name}.png")
    flat = predict_paths(run, [folder], model_file="baseline.keras")
    routed = predict_paths(run, [folder])
    assert [set(row) for row in flat] == [set(row) | {"model"} for row in routed]
    assert all(row["model"] == "baseline" and row["expert"] == row["group"] for row in flat)
    assert [row["class"] for row in flat] == ["green", "orange", "red"]
    sums = [sum(row["group_probabilities"].values()) for row in flat]
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    data = make_colour_folders(tmp_path / "data")
    metrics = evaluate_run(run, data, model_file="baseline.keras", report_dir=tmp_path / "flat")
    beside = evaluate_run(run, data, report_dir=tmp_path / "both")["baseline"]["flat"]
    assert metrics["model"] == "baseline" and metrics["inference_routing"] == "flat"
    assert metrics["accuracy"] == beside["accuracy"] == 0.75  # blue reads as green
    info = run_info(run, model_file="baseline.keras")
    assert info["model"] == "baseline" and info["parameters"] == {"baseline": 3 * 4 + 4}
    assert set(info["macs_per_route"].values()) == {info["macs_all_experts"]}


def test_info_counts_a_nested_expert_by_its_costliest_route(tmp_path):
    from condnet.evaluation.cost import count_macs
    from condnet.hierarchy import Hierarchy
    from condnet.runs.run_dir import run_info
    from condnet.vision.image_model import build_image_model

    tree = {"animals": {"pets": ["cat", "dog"], "wild": ["wolf", "fox"]}, "cars": ["van", "bus"]}
    model = build_image_model(Hierarchy(tree), image_size=16, filters=(4, 8, 8))
    model.save(tmp_path / "model.keras")
    (tmp_path / "config.json").write_text(json.dumps({"options": {**OPTIONS, "image_size": 16}}))
    info = run_info(tmp_path)
    inner = model.experts["animals"]
    tap = model.tap_shapes((None, 16, 16, 3))[model.expert_taps["animals"]][1:]
    route = count_macs(inner.gate, tap) + max(count_macs(e, tap) for e in inner.expert_models)
    assert info["macs"]["expert animals"] == route  # was 0: one unknown layer to count_macs
    shared = info["macs"]["trunk"] + info["macs"]["gate"]
    assert info["macs_per_route"]["animals"] == shared + route
    every = count_macs(inner.gate, tap) + sum(count_macs(e, tap) for e in inner.expert_models)
    assert info["macs_all_experts"] == shared + every + info["macs"]["expert cars"]


def test_serve_answers_with_the_flat_baseline_as_predict_does(run, tmp_path):
    import asyncio

    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from condnet.runs.deploy import serve_app

    _flat_baseline(run / "baseline.keras")
    image = tmp_path / "red.png"
    Image.new("RGB", (6, 6), COLOURS["red"]).save(image)
    app = serve_app(run, model_file="baseline.keras")

    async def ask():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"Content-Type": "image/png"}
            return await client.post("/predict", content=image.read_bytes(), headers=headers)

    answer = asyncio.run(ask()).json()
    expected = predict_paths(run, [image], model_file="baseline.keras")[0]
    assert answer[0]["class"] == expected["class"] == "red"
    assert answer[0]["expert"] == answer[0]["group"] == "warm"
    np.testing.assert_allclose(answer[0]["confidence"], expected["confidence"], rtol=1e-5)


def test_info_and_calibrate_refuse_an_ensemble_run_in_one_line(run, tmp_path, capsys):
    from condnet.runs.cli import main

    other = shutil.copytree(run, tmp_path / "other")
    data = make_colour_folders(tmp_path / "data", per_class=2)
    out = tmp_path / "ensemble"
    args = ["ensemble", str(run), str(other), "--data", str(data), "--out", str(out), "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    for command in ("info", "calibrate"):
        assert main([command, str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert (
            f"is an ensemble of 2 runs (written by `condnet ensemble`), and `condnet {command}`"
            in err
        )
        assert str(run) in err and str(other) in err  # the members to run it on instead


def test_an_image_size_of_one_side_in_a_list_is_that_square(tmp_path):
    from condnet.runs.run_dir import input_shape_of, read_config

    (tmp_path / "config.json").write_text(
        json.dumps({"options": {"image_size": [8], "color_mode": "rgb"}})
    )
    assert input_shape_of(read_config(tmp_path / "config.json")) == (None, 8, 8, 3)

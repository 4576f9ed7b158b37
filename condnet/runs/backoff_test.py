import asyncio
import json
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

from condnet.evaluation.evaluate_test import COLOURS, colour_model, make_colour_folders
from condnet.runs.backoff import backoff_run
from condnet.runs.cli import main
from condnet.runs.options import parse_thresholds
from condnet.runs.run_dir import evaluate_run, predict_paths, read_backoff

# Columns blue, green, orange, red; rows the mean red, green, blue. Sure of red, green and
# orange (0.62 or more); blue reads as green (0.47), but its group, cool, has 0.65.
FLAT_KERNEL = np.array([[0, 0, 12, 20], [0, 20, 15, 0], [0, 2, 0, 0]], "float32") * 0.5


def _flat_baseline(path):
    inputs = keras.Input((8, 8, 3))
    mean = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    head = keras.layers.Dense(4, activation="softmax", name="head")
    flat = keras.Model(inputs, head(mean))
    head.set_weights([FLAT_KERNEL, np.zeros(4, "float32")])
    flat.save(path)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A finished run of the exact colour model and a flat baseline, with a validation split
    of its data folder named in config.json."""
    root = tmp_path_factory.mktemp("backoff")
    data = make_colour_folders(root / "data", per_class=4)
    run = root / "run"
    run.mkdir()
    colour_model().save(run / "model.keras")
    _flat_baseline(run / "baseline.keras")
    options = {
        "image_size": 8,
        "color_mode": "rgb",
        "data_dir": str(data),
        "validation_split": 0.5,
        "seed": 0,
        "batch_size": 4,
        "cache": "none",
    }
    (run / "config.json").write_text(json.dumps({"options": options}))
    return run


@pytest.fixture
def run(saved_run, tmp_path):
    return shutil.copytree(saved_run, tmp_path / "run")


def _images(folder):
    folder.mkdir()
    for name in ("blue", "green", "orange", "red"):
        Image.new("RGB", (6, 6), COLOURS[name]).save(folder / f"{name}.png")
    return folder


# === Chosen on the validation split, used by predict, evaluate and serve ===


def test_backoff_run_chooses_thresholds_that_reach_the_target_on_validation(run):
    record = backoff_run(run, target_accuracy=0.95)
    assert set(record["models"]) == {"model.keras", "baseline.keras"}
    flat = record["models"]["baseline.keras"]
    assert flat["target_accuracy"] == 0.95
    assert flat["chosen_on"] == "validation split (8 images)"
    assert flat["there"]["accuracy"] >= 0.95
    group, fine = flat["there"]["levels"]
    assert fine["coverage"] == 0.75 and group["coverage"] == 0.25  # blue backs off to cool
    assert record["models"]["model.keras"]["there"]["levels"][1]["coverage"] == 1.0
    assert read_backoff(run / "backoff.json") == record


def test_predict_backs_off_to_the_group_with_the_run_s_thresholds(run, tmp_path):
    backoff_run(run, target_accuracy=0.95)
    folder = _images(tmp_path / "images")
    rows = predict_paths(run, [folder], model_file="baseline.keras", back_off=True)
    assert [row["class"] for row in rows] == ["green", "green", "orange", "red"]
    assert [row["answer"] for row in rows] == ["cool", "green", "orange", "red"]
    assert [row["answer_level"] for row in rows] == ["group", "class", "class", "class"]
    assert rows[0]["answer_confidence"] == pytest.approx(0.647, abs=0.01)
    routed = predict_paths(run, [folder], back_off=True)
    assert [row["answer"] for row in routed] == ["blue", "green", "orange", "red"]
    plain = predict_paths(run, [folder])
    assert "answer" not in plain[0]  # back-off is asked for


def test_predict_with_thresholds_given_directly_and_unsure(run, tmp_path):
    folder = _images(tmp_path / "images")
    rows = predict_paths(run, [folder], thresholds={"group": 0.5, "class": None})
    assert [row["answer"] for row in rows] == ["cool", "cool", "warm", "warm"]
    unsure = predict_paths(run, [folder], thresholds={"group": None, "class": None})
    assert {row["answer"] for row in unsure} == {"unsure"}
    assert unsure[0]["answer_confidence"] is None and unsure[0]["answer_level"] == "unsure"


def test_evaluate_shows_coverage_and_accuracy_at_each_depth_for_both_models(run, tmp_path):
    backoff_run(run, target_accuracy=0.95)
    data = make_colour_folders(tmp_path / "test", per_class=3)
    metrics = evaluate_run(run, data, report_dir=tmp_path / "evaluation")
    conditional, flat = metrics["backoff"]["conditional"], metrics["backoff"]["flat"]
    assert conditional["model"] == "model.keras" and flat["model"] == "baseline.keras"
    assert [level["coverage"] for level in flat["levels"]] == [0.25, 0.75]
    assert flat["accuracy"] == 1.0 and flat["unsure"] == 0.0
    assert conditional["levels"][1]["coverage"] == 1.0
    assert flat["risk_coverage"]["class"]["risk"][-1] == 0.25  # blue, a quarter, is wrong
    assert flat["risk_coverage"]["group"]["risk"][-1] == 0.0
    # how far the mistakes miss: blue read as green, its sibling
    assert metrics["baseline"]["flat"]["mistake_distance"] == 1.0
    assert metrics["baseline"]["conditional"]["mistake_distance"] is None
    report = (tmp_path / "evaluation" / "report.md").read_text()
    assert "## Back-off" in report and "| answered at group |" in report
    assert "| mistake_distance | - | 1.0000 |" in report
    assert (tmp_path / "evaluation" / "risk_coverage.png").is_file()


def test_evaluate_without_thresholds_shows_the_curves_and_says_how_to_choose(run, tmp_path):
    data = make_colour_folders(tmp_path / "test", per_class=1)
    metrics = evaluate_run(run, data, report_dir=tmp_path / "evaluation")
    assert "levels" not in metrics["backoff"]["conditional"]
    assert set(metrics["backoff"]["flat"]["risk_coverage"]) == {"group", "class"}
    assert (
        "`condnet backoff RUN_DIR` chooses them"
        in (tmp_path / "evaluation" / "report.md").read_text()
    )


def test_serve_answers_with_the_back_off_as_predict_does(run, tmp_path):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from condnet.runs.deploy import serve_app

    backoff_run(run, target_accuracy=0.95)
    image = _images(tmp_path / "images") / "blue.png"
    app = serve_app(run, model_file="baseline.keras", back_off=True)

    async def ask():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"Content-Type": "image/png"}
            answer = await client.post("/predict", content=image.read_bytes(), headers=headers)
            return answer.json(), (await client.get("/model")).json()

    (answer,), described = asyncio.run(ask())
    expected = predict_paths(run, [image], model_file="baseline.keras", back_off=True)[0]
    assert answer["answer"] == expected["answer"] == "cool"
    assert answer["answer_level"] == "group"
    assert (
        described["backoff_thresholds"]
        == read_backoff(run / "backoff.json")["models"]["baseline.keras"]["thresholds"]
    )


# === The command line ===


def test_cli_backoff_stores_given_thresholds_that_predict_uses(run, tmp_path, capsys):
    argv = ["backoff", str(run), "--thresholds", "group=0.5", "class=never"]
    assert main(argv) == 0
    assert "model.keras: thresholds group 0.5000, class never (given)" in capsys.readouterr().out
    folder = _images(tmp_path / "images")
    assert main(["predict", str(run), str(folder), "--back-off", "--json", "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["answer"] for row in rows] == ["cool", "cool", "warm", "warm"]
    output = tmp_path / "rows.csv"
    assert main(["predict", str(run), str(folder), "--back-off", "--output", str(output)]) == 0
    assert output.read_text().splitlines()[0].endswith("answer,answer_level,answer_confidence")


def test_cli_backoff_chooses_and_evaluate_prints_a_line_per_model(run, tmp_path, capsys):
    assert main(["backoff", str(run), "--target-accuracy", "0.95", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "baseline.keras: thresholds group" in out and "validation split (8 images)" in out
    data = make_colour_folders(tmp_path / "test", per_class=1)
    assert main(["evaluate", str(run), str(data), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "baseline.keras: back-off answers class 75.0% (1.0000 right), group 25.0%" in out
    assert "model.keras: back-off answers class 100.0%" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "{run}", "{image}", "--back-off"], "holds no back-off thresholds for model"),
        (
            ["predict", "{run}", "{image}", "--thresholds", "class=0.9"],
            r"must name each level of the hierarchy once: ['group', 'class']",
        ),
        (["predict", "{run}", "{image}", "--thresholds", "group=high", "class=1"], "LEVEL=P"),
        (["backoff", "{run}", "--target-accuracy", "1.5"], "Received: target_accuracy=1.5"),
        (["backoff", "{run}", "--thresholds", "group=2", "class=0.5"], "thresholds['group']=2"),
        (["backoff", "{run}", "--model", "../x.keras"], "There is no model file"),
        (["serve", "{run}", "--back-off"], "holds no back-off thresholds for model.keras"),
    ],
)
def test_cli_backoff_errors_say_what_was_received(run, tmp_path, capsys, argv, message):
    image = _images(tmp_path / "images") / "red.png"
    argv = [arg.format(run=run, image=image) for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_parse_thresholds_reads_level_pairs():
    assert parse_thresholds(["group=0.8", "class=never"]) == {"group": 0.8, "class": None}
    assert parse_thresholds(None) is None
    with pytest.raises(ValueError, match="Received: --thresholds group=0.8 group=0.9"):
        parse_thresholds(["group=0.8", "group=0.9"])


# === backoff.json read defensively ===


@pytest.mark.parametrize(
    "content, problem",
    [
        ("", r"it is empty \(0 bytes\)"),
        ("[1]", 'it has no "models" object'),
        (
            '{"models": {"model.keras": {"thresholds": {"group": 2}}}}',
            r"its \[\"models\"\]\['model.keras'\]\[\"thresholds\"\] is \{'group': 2\}",
        ),
        ('{"models": {"model.keras": 3}}', r"its .*\[\"thresholds\"\] is None, where an object"),
    ],
)
def test_a_damaged_backoff_file_is_named_with_the_fix(run, tmp_path, content, problem):
    (run / "backoff.json").write_text(content)
    with pytest.raises(ValueError, match=rf"The run's backoff.json cannot be used: {problem}"):
        predict_paths(run, [_images(tmp_path / "images")], back_off=True)
    with pytest.raises(ValueError, match="run `condnet backoff RUN_DIR` to choose the thresholds"):
        read_backoff(run / "backoff.json")


def test_thresholds_for_other_levels_are_refused_with_the_levels_expected(run, tmp_path):
    (run / "backoff.json").write_text(
        json.dumps({"models": {"model.keras": {"thresholds": {"class": 0.5}}}})
    )
    with pytest.raises(ValueError, match=r"a threshold per level \['group', 'class'\]"):
        predict_paths(run, [_images(tmp_path / "images")], back_off=True)


# === At the end of training ===


@pytest.mark.one_backend(
    reason=(
        "thresholds and coverage are numpy on predictions (tested on every backend above); "
        "this adds the training run that writes backoff.json and the report, at the cost of a"
        " whole run per backend"
    )
)
@pytest.mark.slow
def test_train_chooses_thresholds_and_reports_back_off_and_mistakes(tmp_path, capsys):
    from condnet.data.demo_data import make_shapes_dataset
    from condnet.runs.compare import compare_runs
    from condnet.runs.recipe import train

    make_shapes_dataset(tmp_path / "data", samples_per_class=10, image_size=32)
    run = tmp_path / "run"
    tiny = dict(image_size=32, filters=(8, 8, 8, 8), batch_size=16, augment=False)
    train(tmp_path / "data", run, epochs=1, verbose=0, tensorboard=False, **tiny)
    record = read_backoff(run / "backoff.json")
    assert set(record["models"]) == {"model.keras", "baseline.keras"}
    metrics = json.loads((run / "metrics.json").read_text())
    for side in ("conditional", "flat"):
        scores = metrics["backoff"][side]
        assert scores["thresholds_from"] == "chosen here (backoff.json)"
        given = [level for level in scores["levels"] if level["coverage"] > 0]
        assert all(level["accuracy"] >= 0.95 for level in given)  # where they were chosen
        assert "top_k_distance" in metrics["baseline"][side]
    assert metrics["mistake_distance"] is None or 1 <= metrics["mistake_distance"] <= 2
    report = (run / "report.md").read_text()
    assert "## Back-off" in report and (run / "risk_coverage.png").is_file()
    if metrics["baseline"]["milder_mistakes"]:
        assert metrics["baseline"]["milder_mistakes"] in report
    (row,) = compare_runs([run])
    assert row["mistake_distance"] == metrics["mistake_distance"]
    assert row["baseline_mistake_distance"] == metrics["baseline"]["flat"]["mistake_distance"]


def test_fuzz_backoff_file_is_read_or_refused_naming_it(tmp_path_factory):
    from hypothesis import given
    from hypothesis import strategies as st

    from condnet.evaluation.backoff import back_off
    from condnet.hierarchy import Hierarchy
    from condnet.runs.run_dir import run_thresholds
    from condnet.runs.run_files_fuzz_test import VALUES
    from condnet.testing import fuzz_settings

    run = tmp_path_factory.mktemp("backoff_fuzz")
    hierarchy = Hierarchy({"a": ["x", "y"], "b": ["z"]})
    near = st.dictionaries(
        st.sampled_from(["group", "class", "subgroup"]),
        st.none() | st.floats() | st.integers(-1, 2) | VALUES,
        max_size=3,
    )
    entries = st.dictionaries(
        st.sampled_from(["model.keras", "x"]), st.fixed_dictionaries({"thresholds": near}) | VALUES
    )
    files = VALUES | st.fixed_dictionaries({"models": entries}) | st.binary(max_size=64)

    @fuzz_settings()
    @given(content=files)
    def check(content):
        data = content if isinstance(content, bytes) else json.dumps(content).encode()
        (run / "backoff.json").write_bytes(data)
        try:
            thresholds = run_thresholds(run, hierarchy)
        except ValueError as error:
            assert type(error) is ValueError and str(run / "backoff.json") in str(error)
            assert "The run's backoff.json cannot be used: " in str(error)
            return
        if thresholds is not None:  # usable as back_off uses it
            back_off(hierarchy, np.full((1, 3), 1 / 3), thresholds)

    check()

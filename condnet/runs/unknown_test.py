import asyncio
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from condnet.evaluation.evaluate_test import TREE
from condnet.hierarchy import Hierarchy
from condnet.runs import backoff_test
from condnet.runs.backoff_test import _images
from condnet.runs.cli import main
from condnet.runs.run_dir import evaluate_run, predict_paths, read_unknown
from condnet.runs.unknown import unknown_run

# Colours of no class the colour model knows: the gate sends dark orange to warm and cyan
# to cool, and there each expert splits it evenly between its two classes (score 0.5).
STRANGERS = {"cyan": (0, 250, 250), "dark_orange": (250, 76, 0)}
saved_run = backoff_test.saved_run  # the colour model and a flat baseline, with a split


@pytest.fixture
def run(saved_run, tmp_path):
    return shutil.copytree(saved_run, tmp_path / "run")


def _with_strangers(folder):
    _images(folder)
    for name, colour in STRANGERS.items():
        Image.new("RGB", (6, 6), colour).save(folder / f"{name}.png")
    return folder


def _names(rows):
    return [row["path"].rsplit("/", 1)[-1].removesuffix(".png") for row in rows]


# === Chosen on the validation split, used by predict and serve ===


def test_unknown_run_chooses_a_threshold_per_expert_on_validation(run):
    record = unknown_run(run, false_alarm_rate=0.05, score="softmax")
    assert record["groups"] == ["cool", "warm"]
    assert set(record["models"]) == {"model.keras", "baseline.keras"}
    routed = record["models"]["model.keras"]
    assert routed["chosen_on"] == "validation split (8 images)"
    assert routed["false_alarm_rate"] == 0.05
    assert routed["there"]["flagged"] <= 0.05  # the known images flagged where chosen
    assert all(0.99 < t <= 1 for t in routed["thresholds"].values())  # it is sure of them
    flat = record["models"]["baseline.keras"]["thresholds"]
    assert flat["cool"] < 0.5  # the flat model reads blue as green at 0.47
    assert read_unknown(run / "unknown.json") == record


def test_predict_flags_colours_of_no_known_class_inside_their_group(run, tmp_path):
    record = unknown_run(run, score="softmax")
    thresholds = record["models"]["model.keras"]["thresholds"]
    folder = _with_strangers(tmp_path / "images")
    predicted = predict_paths(run, [folder], unknown=True)
    rows = dict(zip(_names(predicted), predicted))
    assert rows["cyan"]["unknown"] and rows["cyan"]["expert"] == "cool"
    assert rows["dark_orange"]["unknown"] and rows["dark_orange"]["expert"] == "warm"
    assert rows["cyan"]["unknown_score"] == pytest.approx(0.5, abs=0.01)
    assert not any(rows[name]["unknown"] for name in ("blue", "green", "red"))
    for row in rows.values():  # the chosen expert's score against its own threshold
        assert row["unknown"] == (row["unknown_score"] < thresholds[row["expert"]])
    assert "unknown" not in predict_paths(run, [folder])[0]  # only when asked for


def test_the_mahalanobis_score_is_each_expert_s_feature_distance_stored_beside_the_thresholds(
    run, tmp_path
):
    from condnet.runs.run_dir import read_unknown_statistics

    record = unknown_run(run, score="mahalanobis")
    entry = record["models"]["model.keras"]
    assert entry["score"] == "mahalanobis" and entry["there"]["flagged"] <= 0.05
    statistics = read_unknown_statistics(run / "unknown.npz")
    means = statistics["model.keras/warm/means"]
    assert means.shape[0] == 2  # one mean per class of the warm expert
    assert statistics["model.keras/warm/precision"].shape == (means.shape[1],) * 2
    assert "baseline.keras/flat/means" in statistics  # the flat model: one over every class
    folder = _with_strangers(tmp_path / "images")
    rows = dict(zip(_names(rows := predict_paths(run, [folder], unknown=True)), rows))
    for row in rows.values():  # a distance, not a probability, against its expert's threshold
        assert row["unknown"] == (row["unknown_score"] < entry["thresholds"][row["expert"]])
    assert rows["cyan"]["unknown_score"] < min(rows[n]["unknown_score"] for n in ("blue", "green"))
    (run / "unknown.npz").unlink()
    with pytest.raises(ValueError, match="unknown.npz cannot be used: it is missing"):
        predict_paths(run, [folder], unknown=True)


def test_gated_energy_is_the_routed_expert_s_energy_plus_the_log_of_the_gate_s_probability(
    run, tmp_path
):
    folder = _with_strangers(tmp_path / "images")
    rows = {}
    for score in ("energy", "gated_energy"):
        unknown_run(run, score=score)
        for model in ("model.keras", "baseline.keras"):
            rows[score, model] = predict_paths(run, [folder], unknown=True, model_file=model)
    for energy, gated in zip(rows["energy", "model.keras"], rows["gated_energy", "model.keras"]):
        gate = energy["group_probabilities"][energy["expert"]]
        assert gated["unknown_score"] == pytest.approx(energy["unknown_score"] + np.log(gate))
    flat = zip(rows["energy", "baseline.keras"], rows["gated_energy", "baseline.keras"])
    assert all(e["unknown_score"] == pytest.approx(g["unknown_score"]) for e, g in flat)


def test_the_default_score_is_chosen_for_a_calibrated_model_too(run):
    from condnet.runs.run_dir import calibrate_run

    calibrate_run(run)
    record = unknown_run(run)  # gated_energy, which reads the calibrated experts' Dense
    assert set(record["models"]) == {"model.keras", "model.calibrated.keras", "baseline.keras"}
    calibrated = record["models"]["model.calibrated.keras"]
    assert calibrated["score"] == "gated_energy"
    assert all(t is None or np.isfinite(t) for t in calibrated["thresholds"].values())


def test_predict_with_thresholds_given_and_the_flat_baseline_s_maximum_softmax(run, tmp_path):
    folder = _with_strangers(tmp_path / "images")
    never = predict_paths(run, [folder], unknown_thresholds={"cool": None, "warm": None})
    assert not any(row["unknown"] for row in never)
    rows = predict_paths(
        run, [folder], model_file="baseline.keras", unknown_thresholds={"cool": 0.5, "warm": 0}
    )
    flagged = {name for name, row in zip(_names(rows), rows) if row["unknown"]}
    assert "blue" in flagged  # read as green at 0.47: the flat model's maximum softmax
    assert not flagged & {"green", "orange", "red", "dark_orange"}  # warm never flags


def test_serve_flags_unknown_classes_as_predict_does(run, tmp_path):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from condnet.runs.deploy import serve_app

    unknown_run(run)
    image = _with_strangers(tmp_path / "images") / "cyan.png"
    app = serve_app(run, unknown=True)

    async def ask():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"Content-Type": "image/png"}
            answer = await client.post("/predict", content=image.read_bytes(), headers=headers)
            return answer.json(), (await client.get("/model")).json()

    (answer,), described = asyncio.run(ask())
    expected = predict_paths(run, [image], unknown=True)[0]
    assert answer["unknown"] is expected["unknown"] is True
    assert answer["unknown_score"] == pytest.approx(expected["unknown_score"])
    stored = read_unknown(run / "unknown.json")["models"]["model.keras"]["thresholds"]
    assert described["unknown_thresholds"] == stored
    assert described["unknown_score"] == "gated_energy"  # the default of `condnet unknown`
    assert not (run / "unknown.npz").exists()  # it reads the model's own weights only


def test_evaluate_and_its_report_show_the_share_each_model_flags(run, tmp_path, capsys):
    from condnet.runs.backoff_test import make_colour_folders

    data = make_colour_folders(tmp_path / "test", per_class=3)
    unknown_run(run, score="energy")  # both models
    unknown_run(run, thresholds={"cool": 0.9, "warm": None})  # model.keras only
    metrics = evaluate_run(run, data, report_dir=tmp_path / "evaluation")
    section = metrics["unknown"]
    assert section["flat"]["score"] == "energy" and section["flat"]["model"] == "baseline.keras"
    assert section["flat"]["flagged"] <= 0.25  # chosen for 5% on the same colours
    conditional = section["conditional"]
    assert conditional["score"] == "softmax" and conditional["flagged_per_expert"]["warm"] == 0
    rows = predict_paths(run, [data], unknown=True)
    assert conditional["flagged"] == pytest.approx(np.mean([row["unknown"] for row in rows]))
    report = (tmp_path / "evaluation" / "report.md").read_text()
    assert "## Unknown classes" in report and "| conditional (routed) | softmax |" in report
    assert main(["evaluate", str(run), str(data), "--report-dir", str(tmp_path / "e2")]) == 0
    assert "model.keras: flags " in capsys.readouterr().out
    (run / "unknown.json").unlink()
    assert evaluate_run(run, data, report_dir=tmp_path / "e3")["unknown"] is None


# === The command line ===


def test_cli_unknown_stores_given_thresholds_that_predict_uses(run, tmp_path, capsys):
    assert main(["unknown", str(run), "--thresholds", "cool=0.9", "warm=never"]) == 0
    out = capsys.readouterr().out
    assert (
        "model.keras: unknown-class thresholds (softmax score) cool 0.9000, warm never (given)"
        in out
    )
    folder = _with_strangers(tmp_path / "images")
    assert main(["predict", str(run), str(folder), "--unknown", "--json", "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    flagged = {name for name, row in zip(_names(rows), rows) if row["unknown"]}
    assert flagged == {"cyan"}  # dark orange goes to warm, which never flags
    output = tmp_path / "rows.csv"
    assert main(["predict", str(run), str(folder), "--unknown", "--output", str(output)]) == 0
    assert output.read_text().splitlines()[0].endswith("confidence,error,unknown,unknown_score")


def test_cli_unknown_chooses_for_a_false_alarm_rate(run, capsys):
    assert main(["unknown", str(run), "--false-alarm-rate", "0.05", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "baseline.keras: unknown-class thresholds (gated_energy score) cool" in out
    assert "chosen on the validation split (8 images); 0.0% of those images flagged" in out
    assert main(["unknown", str(run), "--score", "softmax", "--quiet"]) == 0
    assert "model.keras: unknown-class thresholds (softmax score) cool" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "{run}", "{image}", "--unknown"], "holds no unknown-class thresholds for"),
        (["serve", "{run}", "--unknown"], "holds no unknown-class thresholds for model.keras"),
        (["unknown", "{run}", "--false-alarm-rate", "1"], "Received: false_alarm_rate=1.0"),
        (["unknown", "{run}", "--thresholds", "cool=0.5"], r"each group of the hierarchy once"),
        (["unknown", "{run}", "--thresholds", "cool=x", "warm=1"], "one GROUP=P per group"),
        (["unknown", "{run}", "--model", "../x.keras"], "There is no model file"),
        (
            ["unknown", "{run}", "--thresholds", "cool=1", "warm=1", "--score", "energy"],
            "Received: score='energy'",
        ),
    ],
)
def test_cli_unknown_errors_say_what_was_received(run, tmp_path, capsys, argv, message):
    image = _images(tmp_path / "images") / "red.png"
    argv = [arg.format(run=run, image=image) for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# === unknown.json read defensively ===


@pytest.mark.parametrize(
    "content, problem",
    [
        ("", r"it is empty \(0 bytes\)"),
        ("[1]", 'it has no "models" object'),
        (
            '{"models": {"model.keras": {"thresholds": {"cool": 2, "warm": 0.5}}}}',
            r"its \[\"models\"\]\['model.keras'\]\[\"thresholds\"\] is \{'cool': 2",
        ),
        (
            '{"models": {"model.keras": {"thresholds": {"warm": 0.5}}}}',
            r"its .* is \{'warm': 0.5\} \('softmax' score\), where an object with a threshold "
            r"per group \['cool', ",
        ),
    ],
)
def test_a_damaged_unknown_file_is_named_with_the_fix(run, tmp_path, content, problem):
    (run / "unknown.json").write_text(content)
    with pytest.raises(ValueError, match=rf"The run's unknown.json cannot be used: {problem}"):
        predict_paths(run, [_images(tmp_path / "images")], unknown=True)
    with pytest.raises(ValueError, match="run `condnet unknown RUN_DIR` to choose the thresholds"):
        read_unknown(run / "unknown.json", Hierarchy(TREE))


# === At the end of training ===


@pytest.mark.one_backend(
    reason=(
        "thresholds are chosen in numpy from the predictions (tested on every backend above);"
        " this adds the training run that writes unknown.json, at the cost of a whole run per"
        " backend"
    )
)
@pytest.mark.slow
def test_train_chooses_unknown_thresholds_for_both_models(tmp_path):
    from condnet.data.demo_data import make_shapes_dataset
    from condnet.runs.files import RUN_FILES
    from condnet.runs.recipe import train

    make_shapes_dataset(tmp_path / "data", samples_per_class=10, image_size=32)
    trained = tmp_path / "run"
    tiny = dict(image_size=32, filters=(8, 8, 8, 8), batch_size=16, augment=False)
    train(tmp_path / "data", trained, epochs=1, verbose=0, tensorboard=False, **tiny)
    record = read_unknown(trained / "unknown.json")
    assert set(record["models"]) == {"model.keras", "baseline.keras"}
    for entry in record["models"].values():
        assert entry["false_alarm_rate"] == 0.05 and entry["there"]["flagged"] <= 0.05
    assert "unknown.json" in RUN_FILES  # an overwrite moves it with the run
    rows = predict_paths(trained, [tmp_path / "data"], unknown=True)
    assert all(isinstance(row["unknown"], bool) for row in rows)


def test_fuzz_unknown_file_is_read_or_refused_naming_it(tmp_path_factory):
    from hypothesis import given
    from hypothesis import strategies as st

    from condnet.evaluation.unknown import flag_unknown, unknown_scores
    from condnet.runs.run_dir import run_unknown_thresholds
    from condnet.runs.run_files_fuzz_test import VALUES
    from condnet.testing import fuzz_settings

    run = tmp_path_factory.mktemp("unknown_fuzz")
    hierarchy = Hierarchy({"a": ["x", "y"], "b": ["z"]})
    near = st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
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
        (run / "unknown.json").write_bytes(data)
        try:
            thresholds = run_unknown_thresholds(run, hierarchy)
        except ValueError as error:
            assert type(error) is ValueError and str(run / "unknown.json") in str(error)
            assert "The run's unknown.json cannot be used: " in str(error)
            return
        if thresholds is not None:  # usable as predict uses it
            scored = unknown_scores(hierarchy, [[0.5, 0.5, 0.0]], route=np.array([0]))
            flag_unknown(hierarchy, scored, thresholds)

    check()

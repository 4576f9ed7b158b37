import json

import keras
import numpy as np
import pytest
from keras import layers

from condnet.data.image_folder import ImageFolder
from condnet.data.scan import scan_directory
from condnet.evaluation.evaluate import evaluate_model
from condnet.evaluation.evaluate_test import colour_model, make_colour_folders
from condnet.runs import finish
from condnet.runs.finish import _best_epoch, finish_run, score_run
from condnet.runs.options import TrainingOptions

HISTORY = [
    {"epoch": 1, "val_accuracy": 0.91},
    {"epoch": 2, "val_accuracy": 0.9722},
    {"epoch": 3, "val_accuracy": 0.95},
]


@pytest.mark.parametrize(
    "routing, words",
    [
        ("soft", "(soft: every expert, mixed by the gate)"),
        ("hard", "(hard)"),
        ("gumbel", "(gumbel, hard-routed outside training)"),
    ],
)
def test_best_epoch_says_its_score_is_not_the_summary_s(routing, words):
    line = _best_epoch({"history": HISTORY}, routing)
    assert line.startswith("2 of 3 (highest val_accuracy, 0.9722: the epoch model.keras keeps). ")
    assert (
        "That val_accuracy was measured by fit during training, on the validation images with "
        f"the training routing {words}; the summary scores the shipped model.keras afterwards, "
        "hard-routed, so the two can differ"
    ) in line


def test_best_epoch_without_validation_names_the_training_images():
    history = [{"epoch": 1, "accuracy": 0.5}]
    line = _best_epoch({"history": history}, "soft")
    assert "on the training images (averaged over the epoch) with" in line
    assert _best_epoch(None, "soft") == "unknown"


def test_the_flat_baselines_epochs_are_logged_for_its_curves_across_stages():
    from condnet.runs.finish import _logging_epochs

    history = {}
    stopping = _logging_epochs(lambda validation, epochs, rate: ["stop"], history)
    for stage in range(2):  # fit_flat asks for the callbacks once per stage
        callbacks = stopping(None, 1, 0.001)
        assert callbacks[0] == "stop"
        callbacks[-1].on_epoch_end(0, {"accuracy": 0.5 + stage / 10, "val_accuracy": 0.4})
    assert history == {"accuracy": [0.5, 0.6], "val_accuracy": [0.4, 0.4]}


def test_a_reloaded_baseline_keeps_the_curves_its_run_recorded(tmp_path):
    from condnet.runs.finish import _recorded_baseline

    curves = {"accuracy": [0.5, 0.6], "val_accuracy": [0.4, 0.45]}
    flat = {"epochs": 2, "epochs_planned": 2, "history": {**curves, "bad": "text"}}
    (tmp_path / "metrics.json").write_text(json.dumps({"baseline": {"flat": flat}}))
    assert _recorded_baseline(tmp_path) == {"epochs": 2, "epochs_planned": 2, "history": curves}


# === score_run and finish_run ===

COSTS = {"conditional": {"macs_per_image": 10, "epochs": 3}, "flat": {"macs_per_image": 40}}


@pytest.fixture
def colours(tmp_path):
    """Eight plain images, two of each colour, in batches of three."""
    hierarchy, paths, labels = scan_directory(make_colour_folders(tmp_path / "data", 2))
    return ImageFolder(paths, labels, hierarchy, image_size=8, batch_size=3)


def _flat(num_classes=4, seed=0):
    """A flat Keras classifier over the colours' classes (random weights)."""
    inputs = keras.Input((8, 8, 3))
    mean = layers.GlobalAveragePooling2D()(layers.Rescaling(1 / 255)(inputs))
    dense = layers.Dense(num_classes, activation="softmax", name="classes")
    outputs = dense(mean)
    kernel = np.random.default_rng(seed).normal(0, 5, (3, num_classes)).astype("float32")
    dense.set_weights([kernel, np.zeros(num_classes, "float32")])
    return keras.Model(inputs, outputs, name="flat")


def _routings_seen(monkeypatch):
    """The routing of the model at each of score_run's passes over the data."""
    seen, evaluate = [], finish.evaluate_model

    def spy(model, *args, **kwargs):
        seen.append(getattr(model, "routing", "flat"))
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(finish, "evaluate_model", spy)
    return seen


@pytest.mark.parametrize("routing, other", [("hard", "mixture"), ("soft", "hard_routed")])
def test_score_run_scores_the_other_routing_beside_and_gives_the_model_its_own_back(
    colours, monkeypatch, routing, other
):
    seen = _routings_seen(monkeypatch)
    model = colour_model(routing=routing)
    metrics, predictions, flat_predictions = score_run(model, colours)
    assert seen == [routing, "soft" if routing == "hard" else "hard"]
    assert model.routing == routing and metrics["inference_routing"] == routing
    assert metrics["accuracy"] == metrics[other]["accuracy"] == 1.0  # the colours are exact
    assert ("note" in metrics[other]) == (other == "mixture")  # the soft mixture says so
    assert ("within_group_accuracy" in metrics[other]) == (other == "mixture")
    assert len(predictions["labels"]) == metrics["num_samples"] == 8
    assert flat_predictions is None and "baseline" not in metrics


def test_score_run_gives_the_model_its_routing_back_when_the_other_pass_fails(colours, monkeypatch):
    evaluate = finish.evaluate_model

    def second_pass_fails(model, *args, **kwargs):
        if model.routing == "soft":
            raise RuntimeError("the soft pass failed")
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(finish, "evaluate_model", second_pass_fails)
    model = colour_model(routing="hard")
    with pytest.raises(RuntimeError, match="the soft pass failed"):
        score_run(model, colours)
    assert model.routing == "hard"


def test_score_run_compares_the_flat_baseline_on_the_same_images(colours):
    flat = _flat()
    metrics, _, flat_predictions = score_run(colour_model(), colours, flat, COSTS)
    baseline = metrics["baseline"]
    assert baseline["model"] == "baseline.keras"
    assert {"verdict", "where", "milder_mistakes"} <= set(baseline)
    compared = set(finish._COMPARED)
    assert compared <= set(baseline["conditional"]) and compared <= set(baseline["flat"])
    alone = evaluate_model(flat, colours, hierarchy=colours.hierarchy)
    assert baseline["flat"]["accuracy"] == alone["accuracy"]
    assert baseline["conditional"]["accuracy"] == metrics["accuracy"] == 1.0
    assert baseline["conditional"]["within_group_accuracy"] == 1.0
    assert len(flat_predictions["labels"]) == 8


def test_score_run_reports_costs_and_speeds_only_under_hard_routing(colours):
    hard, _, _ = score_run(colour_model(routing="hard"), colours, _flat(), COSTS)
    soft, _, _ = score_run(colour_model(routing="soft"), colours, _flat(), COSTS)
    assert hard["baseline"]["conditional"]["macs_per_image"] == 10
    assert hard["baseline"]["conditional"]["epochs"] == 3
    assert hard["baseline"]["flat"]["macs_per_image"] == 40
    for side in ("conditional", "flat"):
        assert hard["baseline"][side]["images_per_second"] > 0
        assert not {"macs_per_image", "epochs", "images_per_second"} & set(soft["baseline"][side])


def test_finish_run_ships_a_hard_routed_model_and_writes_its_metrics(tmp_path, colours):
    run = tmp_path / "run"
    run.mkdir()
    trained = colour_model(routing="soft")
    trained.compile(optimizer="adam")
    trained.save(run / "model.keras")  # as training saves it: with its optimizer
    assert keras.models.load_model(run / "model.keras").optimizer is not None
    options = TrainingOptions(image_size=8, baseline=False, report=False)
    state = {"history": [{"loss": 1.0}, {"loss": 0.5}]}
    result = finish_run(run, options, (colours, None), state, None, None, {"verbose": 0})
    written = json.loads((run / "model.keras").with_name("metrics.json").read_text())
    assert written == json.loads(json.dumps(result["metrics"]))
    assert written["training_routing"] == "soft" and written["inference_routing"] == "hard"
    assert written["scored_on"] == "training images, no validation split"
    assert written["accuracy"] == 1.0 and "mixture" in written and "baseline" not in written
    assert written["macs_per_image"]["routed"] < written["macs_per_image"]["all_experts"]
    shipped = keras.models.load_model(run / "model.keras")
    assert shipped.routing == "hard" and getattr(shipped, "optimizer", None) is None

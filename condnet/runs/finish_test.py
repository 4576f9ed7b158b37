import pytest

from condnet.runs.finish import _best_epoch

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
    import json

    from condnet.runs.finish import _recorded_baseline

    curves = {"accuracy": [0.5, 0.6], "val_accuracy": [0.4, 0.45]}
    flat = {"epochs": 2, "epochs_planned": 2, "history": {**curves, "bad": "text"}}
    (tmp_path / "metrics.json").write_text(json.dumps({"baseline": {"flat": flat}}))
    assert _recorded_baseline(tmp_path) == {"epochs": 2, "epochs_planned": 2, "history": curves}

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

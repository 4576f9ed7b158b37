import numpy as np
import pytest

from condnet.staged import fit_staged
from condnet.testing import cats_and_dogs_model, random_data


def _weights(model):
    return {
        "gate": [w.copy() for w in model.gate.get_weights()],
        **{g: [w.copy() for w in e.get_weights()] for g, e in model.experts.items()},
    }


def _changed(before, after):
    return {k: max(np.abs(a - b).max() for a, b in zip(after[k], before[k])) for k in before}


def test_staged_training_trains_the_gate_then_each_expert_on_its_group():
    model = cats_and_dogs_model()
    x, _ = random_data(64)
    cats_only = np.random.default_rng(1).integers(0, 2, 64)
    before = _weights(model)
    with pytest.warns(UserWarning, match="Group 'dog' has no training rows"):
        histories = fit_staged(model, x, cats_only, gate_epochs=1, expert_epochs=2, verbose=0)
    changed = _changed(before, _weights(model))
    assert changed["gate"] > 0 and changed["cat"] > 0
    assert changed["dog"] == 0.0  # no dog rows, so the dog expert never trained
    assert set(histories) == {"gate", "experts"}
    assert len(histories["experts"]["cat"].history["loss"]) == 2


def test_staged_training_ends_with_optional_joint_fine_tuning():
    model = cats_and_dogs_model()
    x, y = random_data(64)
    histories = fit_staged(
        model,
        x,
        y,
        gate_epochs=1,
        expert_epochs=1,
        joint_epochs=1,
        validation_data=(x, y),
        verbose=0,
    )
    assert "val_group_accuracy" in histories["joint"].history
    assert "val_accuracy" in histories["gate"].history


def test_staged_training_needs_labels_it_can_split():
    with pytest.raises(TypeError, match="needs arrays"):
        fit_staged(cats_and_dogs_model(), [[0.0] * 8], None)

import keras
import numpy as np
import pytest

from condnet.testing import cats_and_dogs_model, random_data
from condnet.training.callbacks import LossWeightSchedule
from condnet.training.staged import fit_staged, plan_phases, set_phase_trainable


def _weights(model):
    return {
        "gate": [w.copy() for w in model.gate.get_weights()],
        **{g: [w.copy() for w in e.get_weights()] for g, e in model.experts.items()},
    }


def _changed(before, after):
    return {k: max(np.abs(a - b).max() for a, b in zip(after[k], before[k])) for k in before}


def test_plan_phases_splits_staged_training():
    phases = plan_phases("staged", 7, fine_tune_epochs=2)
    assert [(p.name, p.epochs) for p in phases] == [
        ("gate", 2),
        ("experts", 2),
        ("joint", 3),
        ("fine_tune", 2),
    ]
    assert phases[1].loss_weights == (0.0, 0.0, 1.0)
    assert phases[-1].learning_rate == 1e-5


@pytest.mark.parametrize("epochs", [2, 3, 4, 5, 6, 10])
def test_staged_phases_train_exactly_the_epochs_asked(epochs):
    phases = plan_phases("staged", epochs)
    assert sum(p.epochs for p in phases) == epochs
    assert [p.name for p in phases][:2] == ["gate", "experts"]


def test_staged_phases_refuse_fewer_epochs_than_the_gate_and_expert_phases():
    message = r"needs epochs >= 2.*Received: strategy='staged', epochs=1"
    with pytest.raises(ValueError, match=message):
        plan_phases("staged", 1)
    assert [(p.name, p.epochs) for p in plan_phases("joint", 1)] == [("joint", 1)]


def test_plan_phases_rejects_an_unknown_strategy():
    with pytest.raises(ValueError, match="strategy must be one of"):
        plan_phases("greedy", 3)


def test_expert_phase_freezes_trunk_and_gate():
    model = cats_and_dogs_model()
    set_phase_trainable(model, "experts")
    assert not model.gate.trainable and all(e.trainable for e in model.expert_models)
    set_phase_trainable(model, "gate")
    assert model.gate.trainable and not any(e.trainable for e in model.expert_models)


def test_gate_phase_trains_only_the_gate():
    model = cats_and_dogs_model()
    x, y = random_data(64)
    before = _weights(model)
    fit_staged(model, x, y, gate_epochs=1, expert_epochs=0, verbose=0)
    changed = _changed(before, _weights(model))
    assert changed["gate"] > 0
    assert changed["cat"] == 0.0 and changed["dog"] == 0.0


def test_expert_phase_trains_each_expert_only_on_its_group():
    model = cats_and_dogs_model()
    model.outlier_loss_weight = 0.0  # no outlier exposure: only the masked expert loss
    x, _ = random_data(64)
    cats_only = np.random.default_rng(1).integers(0, 2, 64)
    before = _weights(model)
    with pytest.warns(UserWarning, match="Group 'dog' has no training rows"):
        histories = fit_staged(model, x, cats_only, gate_epochs=0, expert_epochs=2, verbose=0)
    changed = _changed(before, _weights(model))
    assert changed["gate"] == 0.0  # frozen in the expert phase
    assert changed["cat"] > 0
    assert changed["dog"] == 0.0  # no dog rows: the masked expert loss never reached it
    assert len(histories["experts"].history["loss"]) == 2
    assert all(layer.trainable for layer in (model.gate, *model.expert_models))


def test_phases_count_epochs_on_and_end_with_joint_training():
    model = cats_and_dogs_model()
    x, y = random_data(64)
    seen = []
    schedule = LossWeightSchedule({0: {"class": 0.25}}, start_epoch=2)

    class Epochs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((epoch, self.model.loss_weights_dict["class"]))

    histories = fit_staged(
        model,
        x,
        y,
        gate_epochs=1,
        expert_epochs=1,
        joint_epochs=1,
        validation_data=(x, y),
        callbacks=[schedule, Epochs()],
        verbose=0,
    )
    assert [epoch for epoch, _ in seen] == [0, 1, 2]
    assert seen[-1][1] == 0.25  # the schedule's epoch 0 is the joint phase's first epoch
    assert set(histories) == {"gate", "experts", "joint"}
    assert "val_group_accuracy" in histories["joint"].history


def test_expert_phase_exposes_each_expert_to_the_other_groups_rows():
    model = cats_and_dogs_model()  # outlier exposure on, by default
    x, _ = random_data(64)
    cats_only = np.random.default_rng(1).integers(0, 2, 64)
    before = _weights(model)
    with pytest.warns(UserWarning, match="will not learn its classes"):
        fit_staged(model, x, cats_only, gate_epochs=0, expert_epochs=2, verbose=0)
    changed = _changed(before, _weights(model))
    assert changed["gate"] == 0.0
    assert changed["dog"] > 0  # cat rows teach the dog expert to answer evenly on them

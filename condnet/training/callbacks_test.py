import keras
import numpy as np
import pytest

from condnet.testing import cats_and_dogs_model, random_data
from condnet.training.callbacks import (
    EarlyStop,
    LossWeightSchedule,
    StopOnNaN,
    cosine_learning_rate,
)


def test_schedule_must_be_a_dict_or_a_callable():
    with pytest.raises(TypeError, match="schedule must be a dict.*Received: list"):
        LossWeightSchedule([1.0, 0.5])


@pytest.mark.parametrize("epoch", [-1, 1.5, "2"])
def test_schedule_keys_must_be_starting_epochs(epoch):
    with pytest.raises(ValueError, match="Schedule keys are starting epochs"):
        LossWeightSchedule({epoch: {"gate": 1.0}})


def test_schedule_weight_names_must_be_loss_parts():
    with pytest.raises(ValueError, match=r"must be among \['gate', 'class', 'expert'\]"):
        LossWeightSchedule({0: {"classes": 1.0}})


def test_a_callable_schedule_naming_an_unknown_part_fails_at_its_epoch():
    model = cats_and_dogs_model()
    model.compile()
    x, y = random_data(16)
    schedule = LossWeightSchedule(lambda epoch: {"gate": 1.0} if epoch == 0 else {"route": 1.0})
    with pytest.raises(ValueError, match=r"Received: \['route'\]"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[schedule])


def test_start_epoch_offsets_the_schedule():
    schedule = LossWeightSchedule({0: {"class": 0.1}, 2: {"class": 1.0}}, start_epoch=4)
    model = cats_and_dogs_model()
    model.compile()
    schedule.set_model(model)
    seen = []
    for epoch in range(4, 8):
        schedule.on_epoch_begin(epoch)
        seen.append(model.loss_weights_dict["class"])
    np.testing.assert_allclose(seen, [0.1, 0.1, 1.0, 1.0])
    with pytest.raises(ValueError, match="start_epoch must be an int >= 0"):
        LossWeightSchedule({0: {}}, start_epoch=-1)


def test_a_verbose_schedule_says_each_change_on_standard_error(capsys):
    schedule = LossWeightSchedule({0: {"class": 0.5}}, verbose=1)
    model = cats_and_dogs_model()
    model.compile()
    schedule.set_model(model)
    schedule.on_epoch_begin(0)
    captured = capsys.readouterr()
    assert captured.err.startswith("Epoch 1: loss weights {'gate': 1.0, 'class': 0.5,")
    assert captured.out == ""


def test_stop_on_nan_records_where_it_stopped():
    guard = StopOnNaN()
    assert isinstance(guard, keras.callbacks.TerminateOnNaN)  # Keras decides when to stop
    guard.set_model(keras.Sequential([keras.layers.Dense(1)]))
    guard.on_epoch_begin(3)
    guard.on_train_batch_end(0, {"loss": 0.5})
    assert guard.stopped_at is None and not getattr(guard.model, "stop_training", False)
    with pytest.warns(RuntimeWarning, match="epoch 4, batch 8: the loss became inf") as caught:
        guard.on_train_batch_end(7, {"loss": float("inf")})
    assert guard.stopped_at == (3, 7) and guard.model.stop_training
    message = str(caught[0].message)
    assert message.endswith("Received: loss=inf") and "{" not in message


def test_cosine_rate_starts_at_the_base_and_ends_near_the_floor_of_its_stage():
    rate = cosine_learning_rate(1e-3, epochs=4, start_epoch=10, floor=0.01)
    rates = [rate(epoch) for epoch in range(10, 15)]
    assert rates[0] == pytest.approx(1e-3) and rates[4] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[2] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))  # halfway: the mean
    assert rate(3) == pytest.approx(1e-3)  # before its stage: the base rate
    with pytest.raises(ValueError, match="epochs must be an int >= 1. Received: epochs=0"):
        cosine_learning_rate(1e-3, epochs=0)


def test_cosine_rate_drives_keras_learning_rate_scheduler():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    history = model.fit(
        x,
        y,
        epochs=3,
        verbose=0,
        callbacks=[keras.callbacks.LearningRateScheduler(cosine_learning_rate(1e-2, 3))],
    )
    expected = [cosine_learning_rate(1e-2, 3)(epoch) for epoch in range(3)]
    np.testing.assert_allclose(history.history["learning_rate"], expected, rtol=1e-5)


def test_early_stop_says_when_it_stopped_and_which_epoch_it_kept(capsys):
    # A learning rate of 0 never improves the accuracy: patience 2 stops after epoch 3.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    x, y = np.random.default_rng(0).normal(size=(16, 3)), np.arange(16) % 2
    stop = EarlyStop(name="Phase 'joint': ", monitor="accuracy", mode="max", patience=2)
    history = model.fit(x, y, epochs=10, callbacks=[stop], verbose=0)
    assert len(history.history["loss"]) == 3
    captured = capsys.readouterr()
    line = captured.err.strip()  # a progress line: standard output holds results only
    assert line == stop.message and captured.out == ""
    assert line.startswith("Phase 'joint': stopped early at epoch 3: accuracy did not improve")
    assert "keeping epoch 1" in line and "--patience" in line

    quiet = EarlyStop(announce=False, monitor="accuracy", mode="max", patience=1)
    model.fit(x, y, epochs=10, callbacks=[quiet], verbose=0)
    assert quiet.message.startswith("Stopped early at epoch 2") and capsys.readouterr().err == ""

    # Patience running out on the last epoch is not an early stop: every epoch trained.
    last = EarlyStop(monitor="accuracy", mode="max", patience=2)
    history = model.fit(x, y, epochs=3, callbacks=[last], verbose=0)
    assert len(history.history["loss"]) == 3 and last.stopped_epoch == 2
    assert last.message is None and capsys.readouterr().err == ""


def test_smoothed_metric_logs_the_mean_of_the_last_epochs():
    from condnet.training.callbacks import SmoothedMetric

    smoothed, seen = SmoothedMetric("val_accuracy", window=3), []
    for epoch, value in enumerate([0.5, 0.8, 0.2, 0.5]):
        logs = {"val_accuracy": value}
        smoothed.on_epoch_end(epoch, logs)
        seen.append(logs["val_accuracy_smoothed"])
    np.testing.assert_allclose(seen, [0.5, 0.65, 0.5, 0.5])


class _Split:
    def __init__(self, num_samples):
        self.num_samples = num_samples


@pytest.mark.parametrize(
    ("validation", "monitor"),
    [(_Split(199), "val_accuracy_smoothed"), (_Split(200), "val_accuracy"), (None, "accuracy")],
)
def test_a_small_validation_split_picks_the_best_epoch_on_the_smoothed_metric(validation, monitor):
    from condnet.training.callbacks import checkpoint_monitor

    assert checkpoint_monitor(validation) == monitor

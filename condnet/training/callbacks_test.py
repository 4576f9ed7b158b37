import keras
import numpy as np
import pytest

from condnet.testing import cats_and_dogs_model, random_data
from condnet.training.callbacks import LossWeightSchedule, StopOnNaN


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


def test_stop_on_nan_records_where_it_stopped():
    guard = StopOnNaN()
    guard.set_model(keras.Sequential([keras.layers.Dense(1)]))
    guard.on_epoch_begin(3)
    guard.on_train_batch_end(0, {"loss": 0.5})
    assert guard.stopped_at is None and not getattr(guard.model, "stop_training", False)
    with pytest.warns(RuntimeWarning, match="epoch 4, batch 8: the loss became inf"):
        guard.on_train_batch_end(7, {"loss": float("inf")})
    assert guard.stopped_at == (3, 7) and guard.model.stop_training

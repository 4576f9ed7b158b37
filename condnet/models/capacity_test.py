import keras
import numpy as np
import pytest
from keras import ops

from condnet import ConditionalModel
from condnet.models import capacity
from condnet.testing import CATS_AND_DOGS, counted_mlp, mlp, numpy_outputs, random_data


def _numpy(*tensors):
    return [ops.convert_to_numpy(t) for t in tensors]


def test_rows_beyond_capacity_fall_back_to_their_next_best_expert():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.2, 0.8]], "float32")
    expert, slot, kept = _numpy(*capacity.assign_slots(np.array([0, 0, 0, 1]), probabilities, 2))
    assert expert.tolist() == [0, 0, 1, 1]
    assert slot.tolist() == [0, 1, 3, 2]  # row 2 overflows expert 0, takes expert 1's slot 1
    assert kept.tolist() == [True] * 4


def test_rows_that_fit_nowhere_are_dropped_not_misrouted():
    probabilities = np.array([[0.9, 0.1]] * 3, "float32")
    expert, slot, kept = _numpy(*capacity.assign_slots(np.array([0, 0, 0]), probabilities, 1))
    assert kept.tolist() == [True, True, False]
    assert slot.tolist() == [0, 1, 2]  # slot 2 = experts * capacity: the dropped slot
    rows = ops.convert_to_numpy(capacity.gather_rows(slot, 2, 3))
    assert rows.tolist() == [0, 1]


def test_empty_buffer_slots_read_a_zero_row():
    slot = np.array([0, 3], "int32")
    rows = ops.convert_to_numpy(capacity.gather_rows(slot, 4, 2))
    assert rows.tolist() == [0, 2, 2, 1]  # 2 = the appended zero row
    buffers = ops.convert_to_numpy(capacity.to_buffers(np.array([[1.0], [2.0]]), rows))
    assert buffers.ravel().tolist() == [1.0, 0.0, 0.0, 2.0]


def _twin_models(factor=1.25, **kwargs):
    gate, cat, dog = mlp(2, name="gate"), mlp(2, name="cat", seed=2), mlp(3, name="dog", seed=4)
    experts = {"cat": cat, "dog": dog}
    dense = ConditionalModel(CATS_AND_DOGS, gate=gate, experts=experts, routing="hard")
    routed = ConditionalModel(
        CATS_AND_DOGS,
        gate=gate,
        experts=experts,
        routing="hard",
        dispatch="capacity",
        capacity_factor=factor,
        **kwargs,
    )
    return dense, routed


def test_capacity_dense_and_routed_execution_agree():
    dense, routed = _twin_models()
    x, _ = random_data(64, seed=5)
    expected = numpy_outputs(dense, x)
    outputs = numpy_outputs(routed, x)  # inference: capacity 2x the balanced share
    assert outputs["dropped"].sum() == 0
    for key in ("classes", "groups", "route"):
        np.testing.assert_allclose(outputs[key], expected[key], atol=1e-6)
    predicted = dense.predict(x, verbose=0)  # eager grouping by route
    np.testing.assert_allclose(predicted["classes"], outputs["classes"], atol=1e-6)


def test_each_expert_runs_on_its_capacity_buffer_not_the_batch():
    cat, cat_rows = counted_mlp(2, name="cat")
    dog, dog_rows = counted_mlp(3, name="dog", seed=3)
    model = ConditionalModel(
        CATS_AND_DOGS,
        gate=mlp(2, name="gate"),
        experts={"cat": cat, "dog": dog},
        routing="hard",
        dispatch="capacity",
        capacity_factor=1.0,
    )
    x, _ = random_data(40)
    for counter in (cat_rows, dog_rows):
        counter.rows.assign(0.0)
    model(x, training=True)
    rows = [int(ops.convert_to_numpy(c.rows)) for c in (cat_rows, dog_rows)]
    assert rows == [20, 20]  # capacity = 1.0 * 40 / 2 each, not 40 each


def test_capacity_training_reaches_gate_and_experts_and_reports_drops():
    model = _twin_models(factor=0.6)[1]
    model.compile()
    x, y = random_data(128)
    before = [w.copy() for w in model.gate.get_weights() + model.experts["dog"].get_weights()]
    history = model.fit(x, y, epochs=2, batch_size=64, verbose=0).history
    after = model.gate.get_weights() + model.experts["dog"].get_weights()
    assert all(np.abs(a - b).max() > 0 for a, b in zip(after, before))
    assert np.all(np.isfinite(history["loss"]))
    assert 0.0 < history["dropped_rate"][0] < 1.0  # 0.6 x 64 / 2 rows per expert < 64


def test_capacity_model_saves_and_loads(tmp_path):
    model = _twin_models()[1]
    x, _ = random_data(16)
    path = tmp_path / "capacity.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.dispatch == "capacity" and loaded.capacity_factor == 1.25
    np.testing.assert_allclose(
        numpy_outputs(loaded, x)["classes"], numpy_outputs(model, x)["classes"], atol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dispatch": "sparse"}, "dispatch must be 'dense'"),
        (
            {"dispatch": "capacity", "capacity_factor": 0},
            "capacity_factor must be a finite number > 0",
        ),
        ({"dispatch": "capacity", "routing": "teacher"}, "Teacher forcing needs the true group"),
        ({"dispatch": "capacity", "confidence_threshold": 0.5}, "Hedging"),
    ],
)
def test_bad_dispatch_options_are_rejected(kwargs, message):
    kwargs.setdefault("routing", "hard")
    with pytest.raises(ValueError, match=message):
        ConditionalModel(
            CATS_AND_DOGS, gate=mlp(2), experts={"cat": mlp(2), "dog": mlp(3)}, **kwargs
        )


THREE_GROUPS = {"cat": ["persian", "siamese"], "dog": ["beagle", "pug", "boxer"], "fish": ["tench"]}


def _gate_to(group_index, num_groups=3, input_dim=8):
    """A fixed gate that sends every row to one group (probability ~0.9)."""
    inputs = keras.Input((input_dim,))
    dense = keras.layers.Dense(num_groups, activation="softmax")
    outputs = dense(inputs)
    bias = np.zeros(num_groups, "float32")
    bias[group_index] = 3.0
    dense.set_weights([np.zeros((input_dim, num_groups), "float32"), bias])
    return keras.Model(inputs, outputs, name="gate")


def _three_group_model(gate, **kwargs):
    return ConditionalModel(
        THREE_GROUPS,
        gate=gate,
        experts={
            "cat": mlp(2, name="cat", seed=2),
            "dog": mlp(3, name="dog", seed=4),
            "fish": None,
        },
        routing="hard",
        **kwargs,
    )


def test_capacity_with_three_groups_and_a_none_expert_agrees_with_dense_at_inference():
    x, _ = random_data(30, seed=2)
    gate = mlp(3, name="gate", seed=9)
    dense = _three_group_model(gate)
    routed = _three_group_model(gate, dispatch="capacity", capacity_factor=3.0)
    expected, outputs = numpy_outputs(dense, x), numpy_outputs(routed, x)
    assert outputs["dropped"].sum() == 0
    for key in ("classes", "route"):
        np.testing.assert_allclose(outputs[key], expected[key], atol=1e-6)
    fish = outputs["route"] == 2
    np.testing.assert_allclose(outputs["classes"][fish, 5], 1.0)  # the single class, no expert


def test_imbalanced_groups_overflow_to_the_next_expert_then_drop():
    model = _three_group_model(_gate_to(0), dispatch="capacity", capacity_factor=1.0)
    x, _ = random_data(30)
    outputs = numpy_outputs(model, x)  # inference capacity: 2.0 x 30 / 3 = 20 rows per expert
    assert (outputs["route"] == 0).sum() == 20  # the first 20 fit in the chosen expert
    assert outputs["dropped"].sum() == 0  # the other 10 fall back to their second choice
    outputs = numpy_outputs(model, x, training=True)  # training capacity: 1.0 x 30 / 3 = 10
    assert (outputs["route"][outputs["dropped"] == 0] == 0).sum() == 10
    assert outputs["dropped"].sum() == 10  # 10 in expert 0, 10 in the fallback, 10 nowhere


def test_dropped_rows_count_as_wrong_not_as_class_zero():
    model = _three_group_model(_gate_to(0), dispatch="capacity", capacity_factor=0.3)
    model.compile()
    x, _ = random_data(30)
    labels = np.zeros(30, "int32")  # every row is class 0, the class an empty row argmaxes to
    outputs = numpy_outputs(model, x, training=True)
    served = outputs["dropped"] == 0
    assert not served.all()
    model.trainable = False  # measure only
    logs = model.evaluate(x, labels, batch_size=30, verbose=0, return_dict=True)
    outputs = numpy_outputs(model, x)
    served = outputs["dropped"] == 0
    expected = np.mean((outputs["classes"].argmax(1) == 0) & served)
    np.testing.assert_allclose(logs["accuracy"], expected, atol=1e-6)
    assert logs["accuracy"] <= served.mean()


def test_capacity_experts_read_their_own_taps():
    inputs = keras.Input((8,))
    low = keras.layers.Dense(6, name="low")(inputs)
    high = keras.layers.Dense(4, name="high")(low)
    trunk = keras.Model(inputs, high, name="trunk")
    parts = dict(
        trunk=trunk,
        gate=mlp(2, input_dim=4, name="gate"),
        experts={"cat": mlp(2, input_dim=6, name="cat"), "dog": mlp(3, input_dim=4, name="dog")},
        gate_tap="high",
        expert_taps={"cat": "low", "dog": "high"},
        routing="hard",
    )
    dense = ConditionalModel(CATS_AND_DOGS, **parts)
    routed = ConditionalModel(CATS_AND_DOGS, dispatch="capacity", capacity_factor=2.0, **parts)
    x, _ = random_data(24, seed=3)
    np.testing.assert_allclose(
        numpy_outputs(routed, x)["classes"], numpy_outputs(dense, x)["classes"], atol=1e-6
    )

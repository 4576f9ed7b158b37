import keras
import numpy as np
import pytest

from condnet import ConditionalModel
from condnet.models.dispatch import (
    bucket_size,
    compiled_call,
    inference_weights,
    plan_routes,
    routed_predict,
)
from condnet.models.routing import route_weights
from condnet.testing import CATS_AND_DOGS, counted_mlp, random_data, sign_gate


def _counted_model(**kwargs):
    cat, cat_rows = counted_mlp(2, name="cat")
    dog, dog_rows = counted_mlp(3, name="dog", seed=3)
    model = ConditionalModel(
        CATS_AND_DOGS, gate=sign_gate(), experts={"cat": cat, "dog": dog}, routing="hard", **kwargs
    )
    return model, {"cat": cat_rows, "dog": dog_rows}


def _rows_seen(counters):
    return {g: int(keras.ops.convert_to_numpy(c.rows)) for g, c in counters.items()}


def _reset(counters):
    for counter in counters.values():
        counter.rows.assign(0.0)


def _padded(rows):
    return bucket_size(rows) if keras.backend.backend() == "jax" else rows


def test_hard_routing_skips_other_experts():
    model, counters = _counted_model()
    x, _ = random_data(40)
    x[:, 0] = np.where(np.arange(40) < 13, 1.0, -1.0)  # 13 cats, 27 dogs
    _reset(counters)
    model.predict(x, batch_size=40, verbose=0)
    assert _rows_seen(counters) == {"cat": _padded(13), "dog": _padded(27)}

    x[:, 0] = 1.0  # every row is a cat: the dog expert must not run at all
    _reset(counters)
    outputs = model.predict(x, batch_size=40, verbose=0)
    assert _rows_seen(counters) == {"cat": _padded(40), "dog": 0}
    np.testing.assert_array_equal(outputs["experts"][:, 2:], 0.0)


def test_soft_routing_runs_every_expert_on_every_row():
    model, counters = _counted_model()
    model.routing = "soft"
    x, _ = random_data(40)
    x[:, 0] = 1.0
    _reset(counters)
    model.predict(x, batch_size=40, verbose=0)
    assert _rows_seen(counters) == {"cat": 40, "dog": 40}


@pytest.mark.parametrize("threshold", [None, 0.9])
def test_routed_predict_equals_running_every_expert(threshold):
    model, _ = _counted_model(confidence_threshold=threshold)
    x, _ = random_data(100, seed=3)
    x[:, 0] *= 0.1  # some rows are unsure, so they hedge when threshold is set
    routed = model.predict(x, batch_size=32, verbose=0)
    dense = model.predict(x, batch_size=32, verbose=0, routed=False)
    for key in ("classes", "groups", "route"):
        np.testing.assert_allclose(routed[key], dense[key], atol=1e-5)
    if threshold is not None:
        hedged = routed["groups"].max(1) < threshold
        assert hedged.any()
        np.testing.assert_array_less(0, routed["classes"][hedged, :2].sum(1))
        np.testing.assert_array_less(0, routed["classes"][hedged, 2:].sum(1))


def test_hedged_rows_also_run_their_second_expert():
    model, counters = _counted_model(confidence_threshold=0.99)
    x, _ = random_data(10)
    x[:, 0] = np.where(np.arange(10) < 4, 0.01, 1.0)  # 4 unsure cats, 6 sure cats
    _reset(counters)
    model.predict(x, batch_size=10, verbose=0)
    assert _rows_seen(counters) == {"cat": _padded(10), "dog": _padded(4)}


def test_plan_routes_lists_rows_per_expert():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45]], "float32")
    weights = keras.ops.convert_to_numpy(
        route_weights(probabilities, "hard", confidence_threshold=0.6)
    )
    rows = plan_routes(weights)
    assert rows[0].tolist() == [0, 2] and rows[1].tolist() == [1, 2]


@pytest.mark.parametrize("routing", ["hard", "gumbel", "teacher"])
def test_inference_weights_match_route_weights_on_ties(routing):
    model, _ = _counted_model()
    model.routing = routing
    probabilities = np.array([[0.5, 0.5], [0.2, 0.8], [0.8, 0.2], [0.0, 0.0]], "float32")
    expected = keras.ops.convert_to_numpy(route_weights(probabilities, routing))
    np.testing.assert_array_equal(inference_weights(model, probabilities), expected)
    np.testing.assert_array_equal(expected[:, 0], [1, 0, 1, 1])  # ties go to the first group


def test_compiled_call_refuses_an_unbuilt_model():
    unbuilt = keras.Sequential([keras.layers.Dense(2)], name="unbuilt_head")
    with pytest.raises(ValueError, match="needs a built model.*'unbuilt_head'"):
        compiled_call(unbuilt, (8,))


def test_bucket_sizes_cover_every_batch_with_little_padding():
    for rows in range(1, 600):
        assert rows <= bucket_size(rows) <= max(2, int(rows * 1.5) + 1)


def test_routed_predict_reads_py_datasets():
    model, _ = _counted_model()
    x, y = random_data(20)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return x[i * 8 : (i + 1) * 8], y[i * 8 : (i + 1) * 8]

    outputs = routed_predict(model, Batches(), verbose=0)
    np.testing.assert_allclose(
        outputs["classes"], model.predict(x, verbose=0)["classes"], atol=1e-6
    )


def test_pipelined_and_sequential_routed_predict_agree():
    model, _ = _counted_model(confidence_threshold=0.9)
    x, _ = random_data(100, seed=7)
    x[:, 0] *= 0.1
    pipelined = routed_predict(model, x, batch_size=16, verbose=0, pipeline=True)
    sequential = routed_predict(model, x, batch_size=16, verbose=0, pipeline=False)
    for key in pipelined:
        np.testing.assert_array_equal(pipelined[key], sequential[key])
    assert len(pipelined["classes"]) == 100


def test_routed_predict_streams_batches_in_order():
    model, _ = _counted_model()
    x, _ = random_data(50)
    read = []

    def batches():
        for start in range(0, 50, 10):
            read.append(start)
            yield x[start : start + 10]

    outputs = routed_predict(model, batches(), verbose=0)
    np.testing.assert_allclose(
        outputs["classes"], model.predict(x, verbose=0)["classes"], atol=1e-6
    )
    assert read == [0, 10, 20, 30, 40]
    with pytest.raises(ValueError, match="Nothing to predict"):
        routed_predict(model, iter([]), verbose=0)


def test_experts_collect_rows_across_batches_and_run_on_full_queues():
    model, _ = _counted_model()
    x, _ = random_data(40, seed=4)
    sizes = []
    runner = model.routed_runner
    real = runner._expert
    runner._expert = lambda group, features: (
        sizes.append((group, len(features))) or real(group, features)
    )
    queued = model.predict(x, batch_size=4, verbose=0)  # 10 input batches of 4 rows
    runner._expert = real
    dense = model.predict(x, routed=False, verbose=0)
    np.testing.assert_allclose(queued["classes"], dense["classes"], atol=1e-6)
    assert sorted(group for group, _ in sizes) == ["cat", "dog"]  # one run each, not 10
    assert sum(size for _, size in sizes) == 40


def test_a_small_expert_batch_runs_experts_as_their_queues_fill():
    model, _ = _counted_model()
    x, _ = random_data(40, seed=4)
    sizes = []
    runner = model.routed_runner
    real = runner._expert
    runner._expert = lambda group, features: sizes.append(len(features)) or real(group, features)
    from condnet.models.dispatch import routed_predict

    outputs = routed_predict(model, x, batch_size=4, verbose=0, expert_batch_size=8)
    runner._expert = real
    assert all(size == 8 for size in sizes[:-2])  # every run but the final flushes is full
    np.testing.assert_allclose(
        outputs["classes"], model.predict(x, routed=False, verbose=0)["classes"], atol=1e-6
    )
    with pytest.raises(ValueError, match="expert_batch_size must be an int >= 1"):
        routed_predict(model, x, expert_batch_size=0)


def test_a_batch_split_between_two_expert_runs_ends_when_both_have_run():
    model, _ = _counted_model()
    x, _ = random_data(16, seed=6)
    x[:, 0] = 1.0  # every row goes to the cat expert: batches of 4 fill runs of 6
    runner = model.routed_runner
    real, sizes, ends = runner._expert, [], []
    runner._expert = lambda group, features: sizes.append(len(features)) or real(group, features)

    class Ends(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch, logs=None):
            ends.append((batch, np.array(logs["classes"])))

    try:
        outputs = routed_predict(
            model, x, batch_size=4, verbose=0, expert_batch_size=6, callbacks=[Ends()]
        )
    finally:
        runner._expert = real
    assert sizes == [6, 6, 4]  # exactly the expert batch, then what is left
    dense = model.predict(x, routed=False, verbose=0)["classes"]
    np.testing.assert_allclose(outputs["classes"], dense, atol=1e-6)
    assert [batch for batch, _ in ends] == [0, 1, 2, 3]
    for batch, classes in ends:  # batches 1 and 2 span two runs: complete when they end
        np.testing.assert_allclose(classes, dense[4 * batch : 4 * batch + 4], atol=1e-6)


def test_auto_expert_batch_is_set_per_backend_and_the_front_keeps_to_256_rows():
    model, _ = _counted_model()
    x, _ = random_data(600, seed=7)
    x[:, 0] = 1.0  # every row goes to the cat expert
    runner = model.routed_runner
    real_front, real_expert = runner.front_of, runner._expert
    fronts, experts = [], []
    runner.front_of = lambda batch: fronts.append(len(batch)) or real_front(batch)
    runner._expert = lambda g, features: experts.append(len(features)) or real_expert(g, features)
    try:
        outputs = routed_predict(model, x, batch_size=8, verbose=0)
    finally:
        runner.front_of, runner._expert = real_front, real_expert
    assert fronts == [256, 256, 88]  # the trunk's activations: 256 rows at a time
    rows = 512 if keras.backend.backend() == "tensorflow" else 256
    assert experts == [rows] * (600 // rows) + [600 % rows]
    dense = model.predict(x, routed=False, verbose=0)["classes"]
    np.testing.assert_allclose(outputs["classes"], dense, atol=1e-6)


def test_the_front_runs_on_batches_joined_up_to_the_expert_batch():
    model, _ = _counted_model()
    x, _ = random_data(42, seed=5)
    runner = model.routed_runner
    real, sizes, ends = runner.front_of, [], []
    runner.front_of = lambda batch: sizes.append(len(batch)) or real(batch)

    class Ends(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch, logs=None):
            ends.append((batch, np.array(logs["classes"])))  # Keras flattens "outputs"

    try:
        for pipeline in (False, True):
            sizes.clear(), ends.clear()
            outputs = routed_predict(
                model,
                x,
                batch_size=4,
                verbose=0,
                expert_batch_size=12,
                callbacks=[Ends()],
                pipeline=pipeline,
            )
            assert sizes == [12, 12, 12, 6]  # 11 input batches of 4 (the last of 2) in 4 calls
            dense = model.predict(x, routed=False, verbose=0)["classes"]
            np.testing.assert_allclose(outputs["classes"], dense, atol=1e-6)
            assert [batch for batch, _ in ends] == list(range(11))  # one callback per batch
            for batch, classes in ends:
                np.testing.assert_allclose(classes, dense[4 * batch : 4 * batch + 4], atol=1e-6)
    finally:
        runner.front_of = real

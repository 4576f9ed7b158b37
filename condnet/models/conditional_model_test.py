import keras
import numpy as np
import pytest
from keras import layers

from condnet import ConditionalModel, Hierarchy, LossWeightSchedule, StopOnNaN
from condnet.models.conditional_model import OUTLIER_LOSS_WEIGHT
from condnet.testing import (
    CATS_AND_DOGS,
    assert_reload_equal,
    cats_and_dogs_model,
    loss_and_gradient_norm,
    mlp,
    numpy_outputs,
    random_data,
    sign_gate,
)


def _parts(model, x):
    gate = keras.ops.convert_to_numpy(model.gate(x))
    cat = keras.ops.convert_to_numpy(model.experts["cat"](x))
    dog = keras.ops.convert_to_numpy(model.experts["dog"](x))
    return gate, cat, dog


def test_soft_routing_outputs_gate_times_expert_probabilities():
    model = cats_and_dogs_model("soft")
    x, _ = random_data(16)
    outputs = numpy_outputs(model, x)
    gate, cat, dog = _parts(model, x)
    expected = np.concatenate([gate[:, :1] * cat, gate[:, 1:] * dog], axis=1)
    np.testing.assert_allclose(outputs["classes"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["classes"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(outputs["groups"], gate, atol=1e-6)
    np.testing.assert_array_equal(outputs["route"], gate.argmax(1))


def test_hard_routing_outputs_the_chosen_expert_and_zeros_elsewhere():
    model = cats_and_dogs_model("hard")
    x, _ = random_data(32)
    outputs = numpy_outputs(model, x)
    gate, cat, dog = _parts(model, x)
    chosen_cat = gate.argmax(1) == 0
    np.testing.assert_allclose(outputs["classes"][chosen_cat, :2], cat[chosen_cat], atol=1e-6)
    np.testing.assert_array_equal(outputs["classes"][chosen_cat, 2:], 0.0)
    np.testing.assert_allclose(outputs["classes"][~chosen_cat, 2:], dog[~chosen_cat], atol=1e-6)
    np.testing.assert_array_equal(outputs["classes"][~chosen_cat, :2], 0.0)
    assert 0 < chosen_cat.sum() < len(x)  # both experts were chosen somewhere


def test_experts_given_as_a_list_are_matched_by_name_not_position():
    cat, dog = mlp(2, name="cat"), mlp(3, name="dog")
    model = ConditionalModel(CATS_AND_DOGS, gate=mlp(2, name="gate"), experts=[dog, cat])
    assert model.experts == {"cat": cat, "dog": dog}


def _trunk():
    inputs = keras.Input((12, 12, 3))
    x = inputs
    for i in range(1, 5):
        x = layers.Conv2D(4, 3, activation="relu", name=f"conv_0{i}")(x)
    return keras.Model(inputs, layers.Dense(7, name="old_head")(x))


def _head(shape, units, name):
    inputs = keras.Input(shape)
    pooled = layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, layers.Dense(units, activation="softmax")(pooled), name=name)


def _tapped_model(routing="soft"):
    trunk = _trunk()
    return ConditionalModel(
        CATS_AND_DOGS,
        trunk=trunk,
        gate=_head((4, 4, 4), 2, "gate"),
        experts={"cat": _head((6, 6, 4), 2, "cat"), "dog": _head((8, 8, 4), 3, "dog")},
        gate_tap="conv_04",
        expert_taps={"cat": "conv_03", "dog": "conv_02"},
        routing=routing,
    ), trunk


def test_experts_read_their_taps_of_a_shared_trunk():
    model, trunk = _tapped_model()
    x = np.random.default_rng(0).normal(size=(6, 12, 12, 3)).astype("float32")
    taps = {
        n: keras.Model(trunk.input, trunk.get_layer(n).output)(x)
        for n in ("conv_02", "conv_03", "conv_04")
    }
    gate = keras.ops.convert_to_numpy(model.gate(taps["conv_04"]))
    cat = keras.ops.convert_to_numpy(model.experts["cat"](taps["conv_03"]))
    dog = keras.ops.convert_to_numpy(model.experts["dog"](taps["conv_02"]))
    expected = np.concatenate([gate[:, :1] * cat, gate[:, 1:] * dog], axis=1)
    np.testing.assert_allclose(numpy_outputs(model, x)["classes"], expected, rtol=1e-5, atol=1e-6)
    assert set(model.trunk.output) == {"conv_02", "conv_03", "conv_04"}  # old head dropped


@pytest.mark.parametrize("routing", ["soft", "hard"])
def test_save_and_load_with_safe_mode_keeps_predictions_and_settings(tmp_path, routing):
    model = cats_and_dogs_model(routing, confidence_threshold=0.6)
    x, y = random_data(48)
    model.compile(gate_loss_weight=0.5)
    model.fit(x, y, epochs=1, verbose=0)
    loaded = assert_reload_equal(model, x, tmp_path)
    assert loaded.routing == routing and loaded.confidence_threshold == 0.6
    assert loaded.hierarchy == Hierarchy(CATS_AND_DOGS)
    assert loaded.loss_weights_dict["gate"] == 0.5
    loaded.fit(x, y, epochs=1, verbose=0)  # compiled on load, ready to go on training


def test_save_and_load_of_a_tapped_trunk_model(tmp_path):
    model, _ = _tapped_model("hard")
    x = np.random.default_rng(1).normal(size=(10, 12, 12, 3)).astype("float32")
    loaded = assert_reload_equal(model, x, tmp_path)
    assert loaded.expert_taps == {"cat": "conv_03", "dog": "conv_02"}


@keras.saving.register_keras_serializable(package="condnet_test")
class _BuildsItsDense(layers.Layer):
    """A layer that makes its sublayer in build(), as a keras-hub Transformer block does."""

    def build(self, input_shape):
        self.dense = layers.Dense(8)
        self.dense.build(input_shape)

    def call(self, x):
        return self.dense(x)


def test_a_trunk_saved_frozen_loads_frozen_all_the_way_down(tmp_path):
    inputs = keras.Input((8,))
    trunk = keras.Model(inputs, _BuildsItsDense(name="block")(inputs), name="trunk")
    trunk.trainable = False
    model = cats_and_dogs_model(trunk=trunk)
    model.compile()
    x, y = random_data(16)
    loaded = assert_reload_equal(model, x, tmp_path)
    assert len(loaded.trainable_variables) == len(model.trainable_variables)
    assert not loaded.trunk.get_layer("block").dense.trainable_weights
    start = loaded.trunk.get_weights()
    loaded.fit(x, y, epochs=1, verbose=0)  # compiled on load; the trunk stays as it was
    assert all(np.array_equal(a, b) for a, b in zip(loaded.trunk.get_weights(), start))


def _train_only_on(model, x, y, epochs=2):
    before = {g: [w.copy() for w in e.get_weights()] for g, e in model.experts.items()}
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    after = {g: e.get_weights() for g, e in model.experts.items()}
    changed = {g: max(np.abs(a - b).max() for a, b in zip(after[g], before[g])) for g in before}
    return changed


def test_expert_loss_trains_only_the_expert_of_the_true_group():
    model = cats_and_dogs_model("soft")
    model.compile(
        gate_loss_weight=0.0, class_loss_weight=0.0, expert_loss_weight=1.0, outlier_loss_weight=0
    )
    x, _ = random_data(64)
    cats_only = np.random.default_rng(0).integers(0, 2, 64)  # persian / siamese
    changed = _train_only_on(model, x, cats_only)
    assert changed["cat"] > 1e-4
    assert changed["dog"] == 0.0


def _dog_expert_on(model, x):
    return numpy_outputs(model, x)["experts"][:, 2:]  # beagle, pug, boxer given "dog"


def test_outlier_exposure_pulls_the_other_experts_towards_a_uniform_answer():
    model = cats_and_dogs_model("soft")
    model.compile(gate_loss_weight=0.0, class_loss_weight=0.0, outlier_loss_weight=1.0)
    x, _ = random_data(64)
    cats_only = np.random.default_rng(0).integers(0, 2, 64)
    before = _dog_expert_on(model, x)
    changed = _train_only_on(model, x, cats_only, epochs=10)
    after = _dog_expert_on(model, x)
    assert changed["dog"] > 1e-4  # a cat image reaches the dog expert: "none of mine"
    assert after.max(-1).mean() < before.max(-1).mean() - 0.02
    assert np.abs(after - 1 / 3).mean() < np.abs(before - 1 / 3).mean()


def test_outlier_exposure_follows_the_expert_weight():
    """A phase that trains only the gate (expert weight 0) trains no expert."""
    model = cats_and_dogs_model("soft")
    model.compile(class_loss_weight=0.0, expert_loss_weight=0.0, outlier_loss_weight=1.0)
    x, y = random_data(64)
    changed = _train_only_on(model, x, y)
    assert changed == {"cat": 0.0, "dog": 0.0}


def test_loss_parts_match_their_definitions():
    model = cats_and_dogs_model("soft")
    model.compile()
    x, y = random_data(32)
    outputs = numpy_outputs(model, x)
    groups = Hierarchy(CATS_AND_DOGS).group_labels(y)
    rows = np.arange(len(y))
    expected = {
        "gate_loss": -np.log(outputs["groups"][rows, groups]).mean(),
        "class_loss": -np.log(outputs["classes"][rows, y]).mean(),
        "expert_loss": -np.log(outputs["experts"][rows, y]).mean(),
        # Each row's other expert (cats: columns 0-1, dogs: 2-4), against a uniform answer.
        "outlier_loss": np.where(
            groups == 0,
            -np.log(outputs["experts"][:, 2:]).mean(-1),
            -np.log(outputs["experts"][:, :2]).mean(-1),
        ).mean(),
    }
    results = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    for name, value in expected.items():
        np.testing.assert_allclose(results[name], value, rtol=1e-4)
    parts = [expected[f"{p}_loss"] for p in ("gate", "class", "expert")]
    total = sum(parts) + OUTLIER_LOSS_WEIGHT * expected["outlier_loss"]
    np.testing.assert_allclose(results["loss"], total, rtol=1e-4)
    np.testing.assert_allclose(results["accuracy"], (outputs["classes"].argmax(1) == y).mean())
    np.testing.assert_allclose(
        results["gate_accuracy"], (outputs["groups"].argmax(1) == groups).mean()
    )
    predicted_groups = Hierarchy(CATS_AND_DOGS).group_labels(outputs["classes"].argmax(1))
    np.testing.assert_allclose(results["group_accuracy"], (predicted_groups == groups).mean())


def test_teacher_forcing_trains_the_class_output_through_the_true_expert():
    model = cats_and_dogs_model("teacher")
    model.compile()
    x, y = random_data(64)
    logs = model.fit(x, y, epochs=1, batch_size=64, verbose=0).history
    # Routed by the true group, P(class) is exactly the true expert's P(class | group).
    np.testing.assert_allclose(logs["class_loss"], logs["expert_loss"], rtol=1e-5)


def test_gumbel_routing_trains_with_one_hot_mixtures():
    model = cats_and_dogs_model("gumbel", temperature=0.5, seed=1)
    x, y = random_data(32)
    outputs = numpy_outputs(model, x, training=True)
    per_group = np.stack([outputs["classes"][:, :2].sum(1), outputs["classes"][:, 2:].sum(1)], 1)
    assert np.all((per_group < 1e-5) | (per_group > 1 - 1e-5))
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    history = model.fit(x, y, epochs=15, batch_size=32, verbose=0).history
    assert history["gate_loss"][-1] < history["gate_loss"][0]  # the gate learns through it


def test_loss_weight_schedule_sets_weights_per_epoch():
    model = cats_and_dogs_model()
    model.compile()
    x, y = random_data(32)
    schedule = LossWeightSchedule({0: {"gate": 1.0, "class": 0.0}, 2: {"class": 1.0, "gate": 0.2}})
    logs = model.fit(x, y, epochs=3, verbose=0, callbacks=[schedule]).history
    assert logs["class_loss_weight"] == [0.0, 0.0, 1.0]
    np.testing.assert_allclose(logs["gate_loss_weight"], [1.0, 1.0, 0.2])


def test_nan_loss_stops_training_with_a_clear_message():
    model = cats_and_dogs_model()
    model.compile()
    x, y = random_data(32)
    kernel, bias = model.gate.layers[-1].get_weights()
    model.gate.layers[-1].set_weights([kernel, np.full_like(bias, np.nan)])
    with pytest.warns(RuntimeWarning, match="Training stopped at epoch 1.*became nan"):
        history = model.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[StopOnNaN()])
    assert len(history.history["loss"]) == 1


def test_nested_conditional_expert_gives_a_three_level_model(tmp_path):
    deep = {
        "pets": {"cats": ["persian", "siamese"], "dogs": ["pug", "boxer"]},
        "wild": ["fox", "wolf"],
    }
    inner = ConditionalModel(
        deep["pets"],
        gate=mlp(2, name="pets_gate"),
        experts={"cats": mlp(2, name="cats"), "dogs": mlp(2, name="dogs")},
        routing="hard",
    )
    model = ConditionalModel(
        deep,
        gate=mlp(2, name="gate"),
        experts={"pets": inner, "wild": mlp(2, name="wild")},
        routing="hard",
    )
    x, _ = random_data(40, num_classes=6)
    y = np.random.default_rng(0).integers(0, 6, 40)
    model.compile()
    model.fit(x, y, epochs=1, verbose=0)
    outputs = model.predict(x, verbose=0)
    np.testing.assert_allclose(outputs["classes"].sum(1), 1.0, atol=1e-5)
    dense = model.predict(x, verbose=0, routed=False)
    np.testing.assert_allclose(outputs["classes"], dense["classes"], atol=1e-5)
    assert_reload_equal(model, x, tmp_path)


# === Bad input ===


def test_gate_with_the_wrong_number_of_outputs_is_rejected_by_name():
    with pytest.raises(
        ValueError,
        match=r"2 groups \(\['cat', 'dog'\]\) but the gate outputs 3. Received: gate=main",
    ):
        ConditionalModel(
            CATS_AND_DOGS, gate=mlp(3, name="main"), experts={"cat": mlp(2), "dog": mlp(3)}
        )


def test_expert_with_the_wrong_number_of_outputs_is_rejected_by_name():
    with pytest.raises(
        ValueError, match=r"group 'dog'.*3 \(\['beagle', 'pug', 'boxer'\]\), but it outputs 2"
    ):
        ConditionalModel(
            CATS_AND_DOGS, gate=mlp(2), experts={"cat": mlp(2), "dog": mlp(2, name="d")}
        )


@pytest.mark.parametrize(
    "experts, error, message",
    [
        ({"cat": "model", "dog": None}, TypeError, "expert of group 'cat' must be a Keras"),
        ({"cat": None, "dog": None}, ValueError, "Only a group with a single class"),
        ({"cat": None}, ValueError, r"Missing: \['dog'\]"),
        ([None, None], TypeError, "matched to groups by name"),
    ],
)
def test_bad_experts_are_rejected(experts, error, message):
    with pytest.raises(error, match=message):
        ConditionalModel(CATS_AND_DOGS, gate=mlp(2), experts=experts)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"routing": "top1"}, "Received: routing='top1'"),
        ({"temperature": 0}, "temperature must be a finite number > 0"),
        ({"confidence_threshold": 1.5}, "confidence_threshold must be in"),
        ({"gate_tap": "conv_01"}, "no trunk was given"),
    ],
)
def test_bad_options_are_rejected_before_any_weights(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cats_and_dogs_model(**kwargs)


def test_unknown_tap_lists_the_trunk_layers():
    with pytest.raises(ValueError, match="no layer named 'conv_09'.*conv_01"):
        ConditionalModel(
            CATS_AND_DOGS,
            trunk=_trunk(),
            gate=_head((4, 4, 4), 2, "g"),
            experts={"cat": _head((4, 4, 4), 2, "c"), "dog": _head((4, 4, 4), 3, "d")},
            gate_tap="conv_09",
        )


def test_out_of_range_labels_are_rejected_before_training():
    model = cats_and_dogs_model()
    model.compile()
    x, _ = random_data(8)
    with pytest.raises(ValueError, match=r"in \[0, 5\).*containing \[9\]"):
        model.fit(x, np.array([0, 1, 2, 3, 4, 9, 0, 1]), verbose=0)


def test_compile_takes_keras_arguments_in_keras_order():
    model = cats_and_dogs_model()
    top_two = keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top_two")
    model.compile("sgd", "auto", None, [top_two])  # optimizer, loss, loss_weights, metrics
    x, y = random_data(32)
    results = model.evaluate(x, y, verbose=0, return_dict=True)
    classes = numpy_outputs(model, x)["classes"]
    in_top_two = (np.argsort(-classes, axis=1)[:, :2] == y[:, None]).any(axis=1)
    np.testing.assert_allclose(results["top_two"], in_top_two.mean(), rtol=1e-6)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    with pytest.raises(TypeError):  # condnet's own arguments are keyword-only
        model.compile("sgd", "auto", None, None, 0.5)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ("adam", "sparse_categorical_crossentropy"),
            "`loss` must be 'auto'.*Received: loss='sparse_categorical_crossentropy'",
        ),
        (("adam", keras.losses.MeanSquaredError()), "must be 'auto'.*Received: loss=<"),
        (
            ("adam", "auto", {"gate": 2.0}),
            r"gate_loss_weight=.*must be None. Received: loss_weights=\{'gate': 2.0\}",
        ),
    ],
)
def test_compile_refuses_a_loss_other_than_its_own(arguments, message):
    with pytest.raises(ValueError, match=message):
        cats_and_dogs_model().compile(*arguments)


@pytest.mark.parametrize("weight", [-0.5, float("nan"), "high", True])
def test_a_bad_outlier_loss_weight_is_refused_with_what_was_received(weight):
    with pytest.raises(ValueError, match="outlier_loss_weight must be a finite number >= 0"):
        cats_and_dogs_model().compile(outlier_loss_weight=weight)
    with pytest.raises(ValueError, match=f"Received: outlier_loss_weight={weight!r}"):
        cats_and_dogs_model(outlier_loss_weight=weight)


def test_outlier_exposure_is_left_out_where_the_experts_do_not_see_every_row():
    """Under capacity dispatch only the routed expert runs on a row: nothing to expose."""
    x, y = random_data(32)
    logged = {}
    for dispatch in ("dense", "capacity"):
        model = cats_and_dogs_model("hard", dispatch=dispatch)
        model.compile()
        logged[dispatch] = model.evaluate(x, y, verbose=0, return_dict=True)["outlier_loss"]
    assert logged["dense"] > 0 and logged["capacity"] == 0.0


def test_compile_metrics_auto_and_none_add_nothing_to_the_built_in_metrics():
    x, y = random_data(16)
    names = []
    for metrics in ("auto", None):
        model = cats_and_dogs_model()
        model.compile(metrics=metrics)
        names.append(sorted(model.evaluate(x, y, verbose=0, return_dict=True)))
    built_in = ["loss", "accuracy", "group_accuracy", "gate_accuracy"]
    built_in += ["gate_loss", "class_loss", "expert_loss", "outlier_loss"]
    assert names[0] == names[1] == sorted(built_in)


def test_changing_the_routing_after_use_takes_effect():
    model = cats_and_dogs_model("soft")
    model.compile()
    x, y = random_data(32)
    soft = model.evaluate(x, y, verbose=0, return_dict=True)
    model.routing = "hard"
    hard = model.evaluate(x, y, verbose=0, return_dict=True)
    fresh = cats_and_dogs_model("hard")
    fresh.set_weights(model.get_weights())
    fresh.compile()
    expected = fresh.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(hard["class_loss"], expected["class_loss"], rtol=1e-5)
    assert hard["class_loss"] != pytest.approx(soft["class_loss"])
    with pytest.raises(ValueError, match="routing='top1'"):
        model.routing = "top1"
    with pytest.raises(AttributeError):
        model.dispatch = "capacity"


def test_setting_the_same_routing_keeps_the_compiled_step():
    model = cats_and_dogs_model("soft")
    x, _ = random_data(8)
    model.predict(x, verbose=0)
    compiled = model.predict_function
    assert compiled is not None
    model.routing = "soft"  # unchanged: no retrace, no recompile
    assert model.predict_function is compiled
    model.routing = "hard"
    assert model.predict_function is None  # changed: the next call compiles the new routing


def test_import_condnet_is_enough_to_load_a_saved_model(tmp_path):
    import subprocess
    import sys

    model = cats_and_dogs_model("hard")
    x, _ = random_data(4)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)
    expected = model.predict(x, verbose=0)["classes"]
    script = (
        "import sys, numpy as np, keras, condnet\n"
        "model = keras.models.load_model(sys.argv[1])\n"
        "np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0)['classes'])\n"
    )
    paths = [str(tmp_path / name) for name in ("m.keras", "x.npy", "y.npy")]
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-6)


def _misrouted_batch():
    """16 rows the gate sends to 'cat' (P = 0.88), 12 of them dogs."""
    x, _ = random_data(16)
    x[:, 0] = 1.0
    y = np.array([0, 1, 0, 1] + [2, 3, 4] * 4, "int32")
    return x, y


@pytest.mark.parametrize("routing", ["hard", "gumbel"])
def test_hard_training_loss_and_gradient_stay_bounded_on_misrouted_rows(routing):
    x, y = _misrouted_batch()
    soft = cats_and_dogs_model("soft", gate=sign_gate(sharpness=1.0), seed=0)
    hard = cats_and_dogs_model(routing, gate=sign_gate(sharpness=1.0), seed=0)
    for model in (soft, hard):
        model.compile()
    soft_loss, soft_norm = loss_and_gradient_norm(soft, x, y)
    hard_loss, hard_norm = loss_and_gradient_norm(hard, x, y)
    # Unmasked, each misrouted row would add -log(1e-7) = 16.1 to the class loss
    # and a gradient of ~1e7 through the straight-through weight.
    assert hard_loss < soft_loss + 1.0
    assert hard_norm < 10 * soft_norm + 1.0


def test_hard_training_class_loss_counts_only_rows_routed_to_their_group():
    x, y = _misrouted_batch()
    model = cats_and_dogs_model("hard", gate=sign_gate(sharpness=1.0))
    model.compile(gate_loss_weight=0.0, expert_loss_weight=0.0)
    outputs = numpy_outputs(model, x)
    cats = y < 2
    expected = -np.log(outputs["classes"][cats, y[cats]] + 1e-7).mean()
    loss, _ = loss_and_gradient_norm(model, x, y)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_predict_rejects_unknown_arguments():
    model = cats_and_dogs_model("hard")
    x, _ = random_data(8)
    with pytest.raises(TypeError, match=r"unknown arguments: \['foo'\]"):
        model.predict(x, foo=1)


class _BatchCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events = []

    def on_predict_begin(self, logs=None):
        self.events.append("begin")

    def on_predict_batch_end(self, batch, logs=None):
        self.events.append(len(logs["classes"]))  # Keras flattens {"outputs": ...}

    def on_predict_end(self, logs=None):
        self.events.append("end")


def test_routed_predict_honours_callbacks_and_steps():
    model = cats_and_dogs_model("hard")
    x, _ = random_data(40)
    counter = _BatchCounter()
    outputs = model.predict(x, batch_size=16, steps=2, callbacks=[counter], verbose=0)
    assert counter.events == ["begin", 16, 16, "end"]
    assert len(outputs["classes"]) == 32
    dense = _BatchCounter()
    model.predict(x, batch_size=16, steps=2, callbacks=[dense], verbose=0, routed=False)
    assert dense.events == counter.events  # the same events as keras.Model.predict


def test_routed_predict_reads_a_tf_data_dataset():
    tf = pytest.importorskip("tensorflow")
    model = cats_and_dogs_model("hard")
    x, y = random_data(20)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    routed = model.predict(dataset, verbose=0)
    dense = model.predict(x, routed=False, verbose=0)
    np.testing.assert_allclose(routed["classes"], dense["classes"], atol=1e-5)


def test_routed_predict_of_dict_inputs_is_refused_by_name():
    model = cats_and_dogs_model("hard")
    x, _ = random_data(8)
    with pytest.raises(TypeError, match=r"dict input with keys \['image'\]"):
        model.predict([({"image": x},)], verbose=0)


def test_nested_soft_expert_mixes_inside_routed_predict():
    deep = {"pets": {"cats": ["persian", "siamese"], "dogs": ["pug", "boxer"]}, "wild": ["deer"]}
    hierarchy = Hierarchy(deep)
    pets = ConditionalModel(
        hierarchy.subhierarchy("pets"),
        gate=mlp(2, name="pets_gate", seed=5),
        experts={"cats": mlp(2, name="cats", seed=6), "dogs": mlp(2, name="dogs", seed=7)},
        routing="soft",
    )
    model = ConditionalModel(
        hierarchy,
        gate=mlp(2, name="top_gate"),
        experts={"pets": pets, "wild": None},
        routing="hard",
    )
    x, _ = random_data(32)
    routed = model.predict(x, verbose=0)
    dense = model.predict(x, routed=False, verbose=0)
    np.testing.assert_allclose(routed["classes"], dense["classes"], atol=1e-5)


def test_fit_refuses_an_image_folder_of_another_hierarchy(tmp_path):
    from condnet.data.demo_data import make_shapes_dataset
    from condnet.data.splits import load_folders

    make_shapes_dataset(tmp_path / "shapes", samples_per_class=2, image_size=16)
    data = load_folders(tmp_path / "shapes", image_size=16, validation_split=0)[0]
    model = cats_and_dogs_model()
    model.compile()
    with pytest.raises(ValueError, match="The data's hierarchy differs from the model's"):
        model.fit(data, epochs=1, verbose=0)


def test_the_compile_config_keeps_the_loss_weights_through_a_reload(tmp_path):
    model = cats_and_dogs_model("soft")
    model.compile(gate_loss_weight=0.5, expert_loss_weight=2.0)
    config = model.get_compile_config()
    assert (config["gate_loss_weight"], config["class_loss_weight"]) == (0.5, 1.0)
    assert config["expert_loss_weight"] == 2.0
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.get_compile_config()["expert_loss_weight"] == 2.0
    assert cats_and_dogs_model("soft").get_compile_config() == {}  # not compiled


def test_compiled_metrics_score_the_classes_output():
    model = cats_and_dogs_model("soft")
    model.compile(metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")])
    x, y = random_data(32)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    classes = numpy_outputs(model, x)["classes"]
    top2 = np.argsort(classes, axis=1)[:, -2:]
    expected = np.mean([label in row for label, row in zip(y, top2)])
    np.testing.assert_allclose(logs["top2"], expected, atol=1e-6)
    assert {"accuracy", "group_accuracy", "gate_accuracy"} <= set(logs)

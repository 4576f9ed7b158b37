import keras
import numpy as np
import pytest
from keras import layers, ops

from condnet.hierarchy import Hierarchy
from condnet.models import precision as precision_lib
from condnet.models.conditional_model import ConditionalModel
from condnet.models.precision import (
    loss_scaled,
    precision_of,
    precision_scope,
    resolve_precision,
    with_precision,
)
from condnet.testing import CATS_AND_DOGS, assert_reload_equal, mlp
from condnet.vision.image_model import build_image_model

HIERARCHY = Hierarchy({"dark": ["dark_red", "dark_green"], "bright": ["red", "green", "blue"]})
SIZE = 16
# bfloat16 keeps 8 significant bits: about 0.4% per rounding, a few per cent after
# the convolutions of a trunk. The heads' softmax is float32 in both models.
PROBABILITY_TOLERANCE = 0.05


def _images(count, seed):
    """Dark images for the first group, bright ones for the second; the class in a
    colour channel: a gate can learn to be confident on them in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, HIERARCHY.num_classes, count)
    group = np.asarray(HIERARCHY.class_to_group)[labels]
    x = (
        rng.normal(0, 20, (count, SIZE, SIZE, 3))
        + np.where(group == 0, 60, 190)[:, None, None, None]
    )
    x[np.arange(count), :, :, labels % 3] += 50
    return np.clip(x, 0, 255).astype("float32"), labels.astype("int32")


def _model(precision, **kwargs):
    return build_image_model(
        HIERARCHY, image_size=SIZE, filters=(8, 16), precision=precision, seed=0, **kwargs
    )


def _numpy(outputs):
    return {key: ops.convert_to_numpy(value) for key, value in outputs.items()}


@pytest.fixture(scope="module")
def trained():
    """A mixed_bfloat16 model trained until its gate is confident, and the same weights in
    float32."""
    keras.utils.set_random_seed(0)
    mixed = _model("mixed_bfloat16")
    mixed.compile(optimizer=keras.optimizers.Adam(1e-2), gate_loss_weight=2.0)
    x, y = _images(256, seed=0)
    history = mixed.fit(x, y, epochs=10, batch_size=32, verbose=0)
    assert history.history["accuracy"][-1] > 0.9
    exact = _model("float32")
    exact.set_weights(mixed.get_weights())
    return mixed, exact


# === Choosing the policy ===


@pytest.mark.parametrize(
    "accelerator, expected",
    [
        (("gpu", (9, 0)), "mixed_bfloat16"),
        (("gpu", (8, 0)), "mixed_bfloat16"),
        (("gpu", (7, 5)), "mixed_float16"),
        (("gpu", (0, 0)), "mixed_float16"),  # capability unknown: float16 runs everywhere
        (("tpu", (0, 0)), "mixed_bfloat16"),
        (("cpu", (0, 0)), "float32"),
    ],
)
def test_auto_precision_picks_what_the_device_computes_fast(monkeypatch, accelerator, expected):
    monkeypatch.setattr(precision_lib, "_accelerator", lambda: accelerator)
    assert resolve_precision("auto") == expected
    assert resolve_precision("float32") == "float32"  # a policy named is kept


def test_auto_precision_is_float32_on_a_cpu():
    if precision_lib._accelerator()[0] != "cpu":
        pytest.skip("this machine has an accelerator")
    assert resolve_precision() == "float32"


def test_unknown_precision_is_refused_before_any_layer_is_made():
    with pytest.raises(ValueError, match=r"precision must be one of .*Received: precision='bf16'"):
        resolve_precision("bf16")
    with pytest.raises(ValueError, match="Received: precision='float64'"):
        _model("float64")
    assert keras.config.dtype_policy().name == "float32"


def test_precision_scope_restores_the_global_policy():
    with precision_scope("mixed_float16") as policy:
        assert policy == keras.config.dtype_policy().name == "mixed_float16"
        assert layers.Dense(2).compute_dtype == "float16"
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(RuntimeError), precision_scope("mixed_bfloat16"):
        raise RuntimeError("building failed")
    assert keras.config.dtype_policy().name == "float32"
    with precision_scope(None) as policy:  # None: the policy in force
        assert policy is None and keras.config.dtype_policy().name == "float32"


# === The model under a mixed policy ===


def test_image_model_computes_in_bfloat16_with_float32_heads():
    model = _model("mixed_bfloat16", routing="hard")
    assert keras.config.dtype_policy().name == "float32"  # restored after building
    assert model.dtype_policy.name == precision_of(model) == "mixed_bfloat16"
    convolutions = [layer for layer in model._flatten_layers() if isinstance(layer, layers.Conv2D)]
    assert convolutions and all(layer.compute_dtype == "bfloat16" for layer in convolutions)
    assert all(v.dtype == "float32" for v in model.weights)  # weights stay float32
    for head in [model.gate, *model.expert_models]:
        assert head.layers[-1].compute_dtype == "float32"  # the softmax Dense
    assert precision_of(_model("float32")) == "float32"


def test_mixed_bfloat16_outputs_are_close_to_float32_and_route_the_same(trained):
    mixed, exact = trained
    x, _ = _images(64, seed=1)
    expected, received = _numpy(exact(x)), _numpy(mixed(x))
    confident = expected["groups"].max(axis=1) >= 0.9
    assert confident.sum() >= len(x) // 4 and len(set(expected["route"][confident])) == 2
    np.testing.assert_array_equal(received["route"][confident], expected["route"][confident])
    for key in ("groups", "classes", "experts"):
        np.testing.assert_allclose(received[key], expected[key], atol=PROBABILITY_TOLERANCE)
    mixed.routing = exact.routing = "hard"  # routed predict: only the chosen expert runs
    try:
        expected, received = exact.predict(x, verbose=0), mixed.predict(x, verbose=0)
    finally:
        mixed.routing = exact.routing = "soft"
    np.testing.assert_array_equal(received["route"][confident], expected["route"][confident])
    np.testing.assert_allclose(received["classes"], expected["classes"], atol=PROBABILITY_TOLERANCE)
    assert received["classes"].dtype == np.float32


@pytest.mark.parametrize(
    "routing, dispatch", [("soft", "dense"), ("gumbel", "dense"), ("hard", "capacity")]
)
def test_mixed_gate_routing_weights_and_losses_are_float32(trained, routing, dispatch):
    mixed = _model("mixed_bfloat16", routing=routing, dispatch=dispatch)
    mixed.set_weights(trained[0].get_weights())
    mixed.compile()
    x, y = _images(32, seed=2)
    for training in (False, True):
        outputs = mixed(x, training=training)
        for key in ("groups", "classes", "experts"):
            assert ops.convert_to_numpy(outputs[key]).dtype == np.float32, key
        assert ops.convert_to_numpy(outputs["route"]).dtype == np.int32
        weights = mixed._weights(outputs["groups"], training)
        assert ops.convert_to_numpy(weights).dtype == np.float32
    loss = ops.convert_to_numpy(mixed.compute_loss(x, y, outputs, training=True))
    assert loss.dtype == np.float32 and np.isfinite(loss)
    logs = mixed.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and np.isfinite(logs["gate_loss"])


def test_mixed_model_saves_to_one_file_and_loads_the_same(trained, tmp_path):
    mixed = _model("mixed_bfloat16", routing="hard")
    mixed.set_weights(trained[0].get_weights())
    x, _ = _images(48, seed=3)
    loaded = assert_reload_equal(mixed, x, tmp_path)  # safe_mode=True, routed predict
    assert loaded.dtype_policy.name == precision_of(loaded) == "mixed_bfloat16"
    assert loaded.gate.layers[-1].compute_dtype == "float32"
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0)["route"], mixed.predict(x, verbose=0, routed=False)["route"]
    )


# === Loss scaling (float16) ===


def test_mixed_float16_compile_scales_the_loss(tmp_path):
    model = _model("mixed_float16")
    model.compile()
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = _images(32, seed=4)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    assert isinstance(loaded.optimizer, keras.optimizers.LossScaleOptimizer)
    assert not isinstance(_compiled(_model("mixed_bfloat16")), keras.optimizers.LossScaleOptimizer)


def _compiled(model):
    model.compile()
    return model.optimizer


def test_conditional_model_takes_the_mixed_policy_of_its_parts():
    with precision_scope("mixed_float16"):  # the parts only: the model is made outside
        gate = mlp(2, name="gate")
        experts = {"cat": mlp(2, name="cat", seed=2), "dog": mlp(3, name="dog", seed=4)}
    model = ConditionalModel(CATS_AND_DOGS, gate=gate, experts=experts)
    assert model.dtype_policy.name == "mixed_float16"
    assert isinstance(_compiled(model), keras.optimizers.LossScaleOptimizer)
    chosen = ConditionalModel(CATS_AND_DOGS, gate=gate, experts=experts, dtype="float32")
    assert chosen.dtype_policy.name == "float32"  # a dtype passed wins
    plain = ConditionalModel(CATS_AND_DOGS, gate=mlp(2, name="gate"), experts=_plain_experts())
    assert plain.dtype_policy.name == "float32"


def _plain_experts():
    return {"cat": mlp(2, name="cat", seed=2), "dog": mlp(3, name="dog", seed=4)}


def test_loss_scaled_wraps_only_a_model_computing_in_float16():
    with precision_scope("mixed_float16"):
        dense = layers.Dense(3, name="half")
    inputs = keras.Input((4,))
    flat = keras.Model(inputs, dense(inputs))  # its own policy is float32
    assert flat.dtype_policy.name == "float32"
    scaled = loss_scaled(keras.optimizers.Adam(), flat)
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    assert loss_scaled(scaled, flat) is scaled  # not wrapped twice
    adam = keras.optimizers.Adam()
    assert loss_scaled(adam, mlp(2)) is adam


def test_with_precision_copies_a_mixed_model_into_float32(trained):
    mixed, exact = trained
    copy = with_precision(mixed, "float32")
    assert precision_of(copy) == copy.dtype_policy.name == "float32"
    assert copy.gate.layers[-1].compute_dtype == "float32"
    x, _ = _images(16, seed=5)
    expected, received = _numpy(exact(x)), _numpy(copy(x))
    for key in expected:
        np.testing.assert_allclose(received[key], expected[key], atol=1e-6)
    back = with_precision(copy, "mixed_bfloat16")  # float32 layers are not mixed: kept
    assert precision_of(back) == "float32"
    assert precision_of(with_precision(mixed, "mixed_float16")) == "mixed_float16"

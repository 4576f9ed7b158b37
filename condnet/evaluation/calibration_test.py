import json

import keras
import numpy as np
import pytest
from keras import layers, ops

from condnet.data.demo_data import make_shapes_dataset
from condnet.evaluation.calibration import (
    TemperatureScaling,
    apply_temperatures,
    calibrate,
    fit_temperatures,
)
from condnet.evaluation.metrics import evaluate_predictions
from condnet.models.conditional_model import ConditionalModel
from condnet.runs.cli import main
from condnet.runs.recipe import train
from condnet.testing import (
    CATS_AND_DOGS,
    assert_reload_equal,
    cats_and_dogs_model,
    mlp,
    sign_gate,
)


def _probabilities(rows=16, columns=4, seed=0):
    logits = np.random.default_rng(seed).normal(size=(rows, columns)) * 3
    return ops.convert_to_numpy(ops.softmax(logits.astype("float32")))


def _sharp(kernel, name):
    """A fixed softmax layer on the 8 inputs: sure of itself whatever the truth."""
    inputs = keras.Input((8,))
    dense = layers.Dense(kernel.shape[1], activation="softmax", name=f"{name}_dense")
    outputs = dense(inputs)
    dense.set_weights([kernel.astype("float32"), np.zeros(kernel.shape[1], "float32")])
    return keras.Model(inputs, outputs, name=name)


def _overconfident(routing="soft", num_samples=600, seed=0):
    """A model that is ~100% confident but right about 75% of the time, and its data."""
    cat, dog = np.zeros((8, 2)), np.zeros((8, 3))
    cat[1] = [20.0, -20.0]
    dog[1, 0] = dog[2, 1] = dog[3, 2] = 20.0
    model = ConditionalModel(
        CATS_AND_DOGS,
        gate=sign_gate(sharpness=20.0),
        experts={"cat": _sharp(cat, "cat"), "dog": _sharp(dog, "dog")},
        routing=routing,
    )
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, 8)).astype("float32")
    group = np.where(rng.random(num_samples) < 0.8, x[:, 0] <= 0, x[:, 0] > 0).astype(int)
    local = np.where(group == 0, x[:, 1] <= 0, x[:, 1:4].argmax(1))
    noisy = rng.random(num_samples) < 0.3
    local[noisy] = rng.integers(0, 2 + group[noisy])  # any class of the group
    return model, x, (np.where(group == 0, 0, 2) + local).astype("int32")


def test_temperature_one_is_the_identity():
    probabilities = _probabilities()
    outputs = TemperatureScaling(1.0)(probabilities)
    np.testing.assert_allclose(ops.convert_to_numpy(outputs), probabilities, atol=1e-6)


def test_temperature_above_one_flattens_and_keeps_the_ranking():
    probabilities = _probabilities()
    flat = ops.convert_to_numpy(TemperatureScaling(3.0)(probabilities))
    assert np.all(flat.max(-1) < probabilities.max(-1))
    np.testing.assert_array_equal(flat.argmax(-1), probabilities.argmax(-1))
    np.testing.assert_allclose(flat.sum(-1), 1.0, atol=1e-5)
    two = TemperatureScaling(2.0)(np.array([[0.9, 0.1]], "float32"))
    np.testing.assert_allclose(ops.convert_to_numpy(two), [[0.75, 0.25]], atol=1e-5)


@pytest.mark.parametrize("temperature", [0, -1.0, float("inf"), "2"])
def test_temperature_must_be_a_positive_number(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        TemperatureScaling(temperature)


def test_temperature_scaling_config_round_trips():
    layer = TemperatureScaling(1.7, name="t")
    copy = TemperatureScaling.from_config(layer.get_config())
    assert copy.temperature == 1.7 and copy.name == "t"


@pytest.mark.parametrize("routing", ["soft", "hard"])
def test_calibration_of_an_overconfident_model_softens_it(routing):
    model, x, y = _overconfident(routing)
    calibrated, report = calibrate(model, (x, y))
    assert report["temperatures"]["gate"] > 1 and report["temperatures"]["experts"] > 1
    before, after = report["before"], report["after"]
    for level in ("group", "class"):
        assert (
            after["expected_calibration_error"][level]
            < before["expected_calibration_error"][level] / 2
        )
        assert after["negative_log_likelihood"][level] < before["negative_log_likelihood"][level]
    assert after["gate_accuracy"] == before["gate_accuracy"]  # a temperature keeps the argmax

    outputs = calibrated.predict(x, verbose=0)  # the layers do what the fit measured
    metrics = evaluate_predictions(
        model.hierarchy, y, outputs["classes"], group_probabilities=outputs["groups"]
    )
    for level in ("group", "class"):
        np.testing.assert_allclose(
            metrics["expected_calibration_error"][level],
            after["expected_calibration_error"][level],
            atol=1e-4,
        )


def test_calibration_of_a_capacity_model_sees_every_expert_and_keeps_its_dispatch():
    model, x, y = _overconfident("hard")
    capacity = ConditionalModel(
        model.hierarchy,
        gate=model.gate,
        experts=model.experts,
        routing="hard",
        dispatch="capacity",
        capacity_factor=1.5,
    )
    dense_temperatures = fit_temperatures(model, (x, y))
    calibrated, report = calibrate(capacity, (x, y))
    np.testing.assert_allclose(report["temperatures"]["gate"], dense_temperatures["gate"])
    np.testing.assert_allclose(report["temperatures"]["experts"], dense_temperatures["experts"])
    assert calibrated.dispatch == "capacity" and calibrated.capacity_factor == 1.5


def test_fit_temperatures_reads_batches_like_an_image_folder():
    model, x, y = _overconfident()
    batches = [(x[i : i + 100], y[i : i + 100]) for i in range(0, len(y), 100)]
    from_batches = fit_temperatures(model, batches)
    from_arrays = fit_temperatures(model, (x, y))
    np.testing.assert_allclose(from_batches["gate"], from_arrays["gate"], rtol=1e-6)
    np.testing.assert_allclose(from_batches["experts"], from_arrays["experts"], rtol=1e-6)


@pytest.mark.parametrize("routing", ["soft", "hard"])
def test_calibrated_model_survives_save_and_safe_load(tmp_path, routing):
    model, x, _ = _overconfident(routing, num_samples=64)
    calibrated = apply_temperatures(model, {"gate": 2.0, "experts": 1.5})
    loaded = assert_reload_equal(calibrated, x, tmp_path)
    temperatures = [
        layer.temperature
        for part in (loaded.gate, *loaded.expert_models)
        for layer in part.layers
        if isinstance(layer, TemperatureScaling)
    ]
    assert temperatures == [2.0, 1.5, 1.5]


def test_calibrated_model_shares_no_weights_with_the_original():
    model = cats_and_dogs_model()
    x = np.random.default_rng(0).normal(size=(8, 8)).astype("float32")
    calibrated = apply_temperatures(model, {"gate": 1.0, "experts": 1.0})
    before = calibrated.predict(x, verbose=0)["classes"]
    model.set_weights([w * 0 for w in model.get_weights()])
    np.testing.assert_allclose(calibrated.predict(x, verbose=0)["classes"], before)


def test_calibration_needs_a_conditional_model_with_flat_experts():
    with pytest.raises(TypeError, match="applies to a condnet.ConditionalModel. Received: Dense"):
        fit_temperatures(layers.Dense(2), (np.zeros((1, 8)), np.zeros(1)))
    pets = {"cats": ["persian", "siamese"], "dogs": ["pug", "boxer"]}
    inner = ConditionalModel(
        pets, gate=mlp(2, name="pets_gate"), experts={"cats": mlp(2), "dogs": mlp(2)}
    )
    outer = ConditionalModel(
        {"pets": pets, "wild": ["fox", "wolf"]},
        gate=mlp(2, name="gate"),
        experts={"pets": inner, "wild": mlp(2)},
    )
    with pytest.raises(TypeError, match=r"experts of \['pets'\] are ConditionalModels"):
        calibrate(outer, (np.zeros((2, 8)), np.zeros(2)))


@pytest.mark.one_backend(
    reason=(
        "the temperature fit runs on every backend in the tests above; this adds the CLI "
        "around it (a trained run, the files it writes), the same on every backend, at the "
        "cost of a whole run"
    )
)
@pytest.mark.slow
def test_cli_calibrate_writes_the_calibrated_model_and_report(tmp_path, capsys):
    make_shapes_dataset(tmp_path / "data", samples_per_class=10, image_size=32)
    run = tmp_path / "run"
    train(
        tmp_path / "data",
        run,
        epochs=1,
        image_size=32,
        filters=(8, 8, 8, 8),
        batch_size=16,
        augment=False,
        routing="hard",
        verbose=0,
        baseline=False,
    )
    assert main(["calibrate", str(run)]) == 0
    assert "ECE before" in capsys.readouterr().out
    report = json.loads((run / "calibration.json").read_text())
    assert report["num_samples"] == 6 * 2  # the run's validation split: 20% of 10 per class
    assert all(t > 0 for t in report["temperatures"].values())
    calibrated = keras.models.load_model(run / "model.calibrated.keras", safe_mode=True)
    assert calibrated.routing == "hard"
    assert calibrated.hierarchy == keras.models.load_model(run / "model.keras").hierarchy


def test_cli_calibrate_needs_a_finished_run(tmp_path, capsys):
    assert main(["calibrate", str(tmp_path)]) == 2
    assert "is not a finished condnet run" in capsys.readouterr().err


def test_calibration_leaves_out_images_that_fail_to_decode(tmp_path):
    from condnet.data.image_folder import ImageFolder
    from condnet.hierarchy import Hierarchy

    hierarchy = Hierarchy({"a": ["x", "y"], "b": ["z", "w"]})
    paths = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        from PIL import Image

        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(path)
        paths.append(path)
    paths[3].write_bytes(b"not an image")
    folder = ImageFolder(paths, [0, 1, 2, 3] * 2, hierarchy, image_size=8, batch_size=4)
    from condnet.evaluation.calibration import dense_outputs_of
    from condnet.vision.image_model import build_image_model

    model = build_image_model(hierarchy, image_size=8, filters=(4, 4), expert_placement="top")
    _, _, labels, _ = dense_outputs_of(model, folder)
    assert len(labels) == 7  # the broken file is neither scored nor replaced by a neighbour

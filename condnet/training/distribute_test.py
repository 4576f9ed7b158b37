import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from condnet.training.distribute import resolve

# Runs in a fresh JAX process that sees two (simulated) CPU devices.
TWO_DEVICES = """
import json, sys
import jax, keras, numpy as np
from condnet.data.demo_data import make_shapes_dataset
from condnet.runs.recipe import train

root, out = sys.argv[1], sys.argv[2]
make_shapes_dataset(root, samples_per_class=8, image_size=32, test_samples_per_class=2)
tiny = dict(image_size=32, filters=(8, 8, 8), batch_size=16, augment="none", epochs=2,
            baseline=False, tensorboard=False, verbose=0, routing="hard")
report = {"devices": len(jax.devices())}
for mode in ("none", "data-parallel"):
    result = train(root + "/train", f"{out}/{mode}", distribute=mode, seed=3, **tiny)
    history = [l.split(",") for l in open(f"{out}/{mode}/history.csv").read().splitlines()]
    column = history[0].index("loss")
    report[mode] = {"loss": [float(row[column]) for row in history[1:]],
                    "accuracy": result["metrics"]["accuracy"]}
    if mode == "data-parallel":
        model = result["model"]
        kernel = model.gate.trainable_variables[0].value
        report["kernel_devices"] = len(kernel.sharding.device_set)
        report["kernel_replicated"] = bool(kernel.sharding.is_fully_replicated)
        layout = keras.distribution.DataParallel(devices=jax.devices()).get_data_layout(
            (16, 32, 32, 3))
        report["batch_axes"] = list(layout.axes)
print("REPORT" + json.dumps(report))
"""


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution runs on JAX")
def test_a_data_parallel_run_on_two_devices_follows_the_single_device_run(tmp_path):
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    done = subprocess.run(
        [sys.executable, "-c", TWO_DEVICES, str(tmp_path / "data"), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.split("REPORT")[-1])
    assert report["devices"] == 2
    assert report["kernel_devices"] == 2 and report["kernel_replicated"]
    assert report["batch_axes"][0] == "batch"  # each batch is split over the devices
    # The same global computation, reduced in another order: the losses agree to float
    # rounding, compounded over two epochs of Adam steps.
    single, parallel = report["none"]["loss"], report["data-parallel"]["loss"]
    assert parallel == pytest.approx(single, rel=1e-3)


# Runs in a fresh TensorFlow process whose CPU is split into two logical devices.
TWO_LOGICAL_CPUS = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from condnet.data.demo_data import make_shapes_dataset
from condnet.runs.recipe import resume, train
from condnet.testing import cats_and_dogs_model, random_data
from condnet.training.distribute import scope

report = {}
x, y = random_data(64)
for mode in ("none", "data-parallel"):  # the same seeded MLPs, the same batches, SGD
    with scope(mode, 16):
        keras.utils.set_random_seed(0)
        model = cats_and_dogs_model(routing="soft")
        model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
        history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    report[mode] = {"loss": history.history["loss"],
                    "weights": [w.tolist() for w in model.get_weights()]}
    if mode == "data-parallel":
        report["variable"] = type(model.gate.trainable_variables[0].value).__name__

root, out = sys.argv[1], sys.argv[2]
make_shapes_dataset(root, samples_per_class=8, image_size=32, test_samples_per_class=2)
tiny = dict(image_size=32, filters=(8, 8, 8), batch_size=16, augment="none",
            tensorboard=False, verbose=0, routing="hard", distribute="data-parallel")
train(root + "/train", out, epochs=1, **tiny)
result = resume(out, epochs=2, verbose=0)  # the checkpoint loads into the strategy again
kernel = result["model"].gate.trainable_variables[0].value
history = [l.split(",") for l in open(out + "/history.csv").read().splitlines()]
report["recipe"] = {
    "epochs": [row[0] for row in history[1:]],
    "loss": [float(row[history[0].index("loss")]) for row in history[1:]],
    "replicas": len(kernel.values),
    "baseline": json.load(open(out + "/metrics.json"))["baseline"]["flat"]["accuracy"],
}
print("REPORT" + json.dumps(report))
"""


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="MirroredStrategy runs on TensorFlow"
)
def test_a_mirrored_run_on_two_logical_cpus_takes_the_single_device_steps(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", TWO_LOGICAL_CPUS, str(tmp_path / "data"), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.split("REPORT")[-1])
    assert report["variable"] == "MirroredVariable"  # one copy per device
    # Each replica runs half of every batch and their gradients are summed; the loss is
    # divided by the replicas first, so the steps equal one device's (no normalisation
    # layer here, so only float rounding differs). Undivided, every SGD step would be
    # twice as long and the logged loss twice the single-device one. (Soft routing: the
    # masked class term of hard routing averages over each replica's routed-right rows,
    # which differs from the global average by about 1% here.)
    single, mirrored = report["none"], report["data-parallel"]
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-5)
    for got, want in zip(mirrored["weights"], single["weights"]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # The recipe under the strategy: mirrored variables, a resumed run, its baseline.
    recipe = report["recipe"]
    assert recipe["replicas"] == 2 and recipe["epochs"] == ["1", "2"]
    assert all(np.isfinite(recipe["loss"])) and 0 <= recipe["baseline"] <= 1


def test_data_parallel_is_refused_where_it_cannot_run():
    if keras.backend.backend() == "torch":
        with pytest.raises(ValueError, match="no distribution engine on torch"):
            resolve("data-parallel", 32)
    assert resolve("none", 7) == "none"
    assert resolve("auto", 7) in ("none", "data-parallel")

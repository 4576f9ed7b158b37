import json
import os
import subprocess
import sys

import keras
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


def test_data_parallel_is_refused_where_it_cannot_run():
    if keras.backend.backend() != "jax":
        with pytest.raises(ValueError, match="supports on the JAX backend"):
            resolve("data-parallel", 32)
    assert resolve("none", 7) == "none"
    assert resolve("auto", 7) in ("none", "data-parallel")

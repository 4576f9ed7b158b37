"""Data-parallel training throughput: 1 vs 2 (simulated) devices on this machine.

    python benchmarks/distributed.py [--quick]

Trains `condnet.train` (soft routing, the default trunk at 32 px, batch 64, no
baseline) on CIFAR-10 images in fresh processes: on JAX one started with
`--xla_force_host_platform_device_count=1` and `distribute="none"`, one with 2
devices and `distribute="data-parallel"` (keras.distribution.DataParallel); on
TensorFlow one on the CPU and one on the CPU split into 2 logical devices under
MirroredStrategy. It reports training images/s from the epochs after the first
(compilation). The "devices" share the same two CPU cores, so this measures
the overhead of sharding, not a speedup: on real accelerators each device
brings its own compute. Replaces the "Distributed training" section of
benchmarks/results/distributed.md.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import common
import data_sets

from condnet.runs.files import HIERARCHY

TRAIN = """
import json, sys, time
data, out, mode, epochs, tree, backend, devices = sys.argv[1:]
if backend == "tensorflow" and int(devices) > 1:  # before anything else runs TensorFlow
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * int(devices))
from condnet.runs.files import HISTORY
from condnet.runs.recipe import train
result = train(data, out, hierarchy=tree, distribute=mode, image_size=32, batch_size=64,
               epochs=int(epochs), baseline=False, tensorboard=False, augment="none",
               verbose=0, patience=99)
rows = [l.split(",") for l in open(out + "/" + HISTORY).read().splitlines()]
column = rows[0].index("epoch_seconds")
print("SECONDS" + json.dumps([float(r[column]) for r in rows[1:]]))
"""


CONFIGURATIONS = (  # (backend, devices, distribute)
    ("jax", 1, "none"),
    ("jax", 2, "data-parallel"),
    ("tensorflow", 1, "none"),
    ("tensorflow", 2, "data-parallel"),
)

TWO_GROUPS = {
    "vehicles": ["airplane", "automobile", "ship", "truck"],
    "animals": ["bird", "cat", "deer", "dog", "frog", "horse"],
}


def main(argv=None):
    args = common.parse_args(__doc__, argv)
    per_class = 100 if args.quick else 300
    epochs = 2 if args.quick else 3
    if not args.data.exists():
        print(f"{args.data} is missing: nothing to measure.")
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as runs:
        root = data_sets.extract_first(
            "cifar10", "train", per_class, Path(runs) / "data", args.data
        )
        images = sum(1 for _ in Path(root).rglob("*.jpg"))
        tree = Path(runs) / HIERARCHY
        tree.write_text(json.dumps(TWO_GROUPS))
        for backend, devices, mode in CONFIGURATIONS:
            env = {
                **os.environ,
                "KERAS_BACKEND": backend,
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                "TF_CPP_MIN_LOG_LEVEL": "3",
            }
            out = f"{runs}/{backend}-{mode}"
            command = [sys.executable, "-c", TRAIN, str(root), out, mode, str(epochs), str(tree)]
            command += [backend, str(devices)]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            seconds = json.loads(done.stdout.split("SECONDS")[-1])
            trained = images * 0.8  # the recipe's default validation share is held out
            steady = seconds[1:] or seconds
            results[f"{backend}-{devices}"] = round(trained / (sum(steady) / len(steady)), 1)
            print(
                f"{backend}, {devices} device(s): {results[f'{backend}-{devices}']} images/s "
                f"({seconds})",
                flush=True,
            )
    ratios = {b: results[f"{b}-2"] / results[f"{b}-1"] for b in ("jax", "tensorflow")}
    body = (
        f"`{common.command_line()}`: {images} CIFAR-10 training images (80% trained on), "
        f"{epochs} epochs, batch 64.\n\n"
        + common.markdown_table(
            ["backend", "devices", "distribute", "training images/s (epochs after the first)"],
            [
                ["jax", "1", "none", f"{results['jax-1']}"],
                ["jax", "2 (simulated)", "data-parallel (DataParallel)", f"{results['jax-2']}"],
                ["tensorflow", "1", "none", f"{results['tensorflow-1']}"],
                [
                    "tensorflow",
                    "2 (logical CPUs)",
                    "data-parallel (MirroredStrategy)",
                    f"{results['tensorflow-2']}",
                ],
            ],
        )
        + f"\n\nRatio 2 / 1: {ratios['jax']:.2f} on JAX, {ratios['tensorflow']:.2f} on "
        "TensorFlow. The simulated devices run on the same two CPU cores, so this is no "
        "speedup from more hardware: it shows what sharding and all-reducing cost on one "
        "machine. On N real accelerators the same command splits each batch N ways. On "
        "TensorFlow the 2-device run also compiles without XLA (`jit_compile=False`, which "
        "MirroredStrategy needs), so its ratio includes the cost of losing XLA.\n"
    )
    print(body)
    variant = "quick" if args.quick else "full"
    common.write_results(
        "distributed",
        variant,
        results,
        "Distributed training",
        body,
        args.results,
        "jax-tensorflow",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

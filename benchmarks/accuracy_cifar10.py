"""CIFAR-10 accuracy: is a conditional model more accurate than the flat CNN a user would train?

    python benchmarks/accuracy_cifar10.py [--quick] [--train-per-class N] [--epochs E]

Reads the CIFAR-10 JPEGs of `../shared/data/cifar10-jpeg.tar.gz` (extracted once
into `--cache`; without the archive the script says so and exits 0) through
condnet's own loader: `load_folders(train, hierarchy=FILE, image_size=32,
validation_split=0.1, seed=...)` for training, `scan_directory(test, hierarchy)`
+ `ImageFolder` for the test images. Every model trains for the same epochs with
the same augmentation (`make_augmentation(seed=...)`), optimizer (Adam 1e-3
decayed to 0 by a cosine over the run), batch size, seed and training images
(the same shuffles), on TensorFlow:

1. flat CNN: `small_cnn` + GlobalAveragePooling + Dropout + Dense(10, softmax);
2. the flat CNN widened until its MACs reach those of a routed conditional model
   (trunk + gate + one expert, 2-group hierarchy);
3. a flat CNN with the layers of the routed path (the trunk, then one expert's
   two conv layers, 10 outputs), widened to the same cost: as deep as the
   conditional model, so only the routing differs;
4. the "Stack Overflow soft switch": the same trunk, gate and expert heads as
   `build_image_model` wired by hand into a two-output Keras model (each head's
   probabilities times its gate probability, concatenated by a small layer, no
   Lambda), fixed loss weights on the gate and the final output;
5. condnet joint, soft routing (`build_image_model(..., routing="soft")`, whose
   `expert_placement="auto"` is `"branch"` for `small_cnn`);
6. condnet joint, hard routing (straight-through);
7. condnet staged (`fit_staged`: gate, experts, joint; the same total epochs);
8. condnet soft with the B-CNN-style `LossWeightSchedule.coarse_to_fine`;
9. condnet soft with `expert_placement="taps"` (2 groups only);
10. condnet soft on the 3-level hierarchy 2 -> 7 -> 10 (nested experts);
11. the most accurate of 5-8 (routed, on the validation split) trained with a
   2-group hierarchy discovered from the flat CNN's validation confusions.

Rows 4-8 run with the 2-group and the 7-group hierarchy. Then the best
condnet configuration and the most accurate flat CNN of at least its routed
cost are trained again with `--repeats` more seeds (same data, other
initialisation, dropout and augmentation draws), and target 1 is judged on the
mean. Each conditional
model is scored on the test images twice with the same weights: mixture
(`routing="soft"`, every expert runs) and routed (`routing="hard"`, the chosen
expert only, condnet's routed predict). Prints one line per configuration
and a markdown table, writes every number to `benchmarks/accuracy_cifar10.json`
and the table to the "CIFAR-10 accuracy" section of benchmarks/RESULTS.md.
"""

import argparse
import functools
import json
import os
import re
import shutil
import statistics
import sys
import tarfile
import time
import warnings
from pathlib import Path

import common

# TensorFlow: the backend condnet trains fastest on CPU. Set before Keras loads.
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import models
import numpy as np
from keras import layers, ops

from condnet.data.image_folder import ImageFolder
from condnet.data.scan import scan_directory
from condnet.data.splits import load_folders
from condnet.evaluation.cost import count_macs, routed_macs
from condnet.evaluation.evaluate import evaluate_model
from condnet.evaluation.metrics import confusion_matrix, evaluate_predictions
from condnet.training.callbacks import LossWeightSchedule
from condnet.training.staged import fit_staged
from condnet.vision.augmentation import make_augmentation
from condnet.vision.backbones import small_cnn
from condnet.vision.image_model import branch_convs, build_image_model, classifier_head

IMAGE_SHAPE = (32, 32, 3)
CLASSES_PER_SET = {"train": 5000, "test": 1000}
# Both hierarchies list the classes in the same order, so their class indices,
# and with them load_folders' validation split, are the same.
THREE_LEVELS = {
    "vehicles": {
        "aircraft": ["airplane"],
        "ships": ["ship"],
        "road_vehicles": ["automobile", "truck"],
    },
    "animals": {
        "birds": ["bird"],
        "frogs": ["frog"],
        "cats_and_dogs": ["cat", "dog"],
        "deer_and_horses": ["deer", "horse"],
    },
}
HIERARCHIES = {
    "2 groups": {
        "vehicles": ["airplane", "ship", "automobile", "truck"],
        "animals": ["bird", "frog", "cat", "dog", "deer", "horse"],
    },
    "7 groups": {
        "aircraft": ["airplane"],
        "ships": ["ship"],
        "road_vehicles": ["automobile", "truck"],
        "birds": ["bird"],
        "frogs": ["frog"],
        "cats_and_dogs": ["cat", "dog"],
        "deer_and_horses": ["deer", "horse"],
    },
}
FULL = dict(
    train_per_class=1500,
    test_per_class=1000,
    epochs=10,
    batch_size=64,
    filters=(16, 32, 64, 128),
    repeats=2,
)
QUICK = dict(
    train_per_class=40, test_per_class=30, epochs=3, batch_size=32, filters=(8, 16, 32, 64),
    repeats=1,
)  # fmt: skip
CONFIGS = (
    "flat", "flat_wide", "flat_deep", "switch", "soft", "hard", "staged", "schedule", "taps",
    "three_levels", "discovered",
)  # fmt: skip
CONDNET = ("soft", "hard", "staged", "schedule")
TITLES = {
    "flat": "flat CNN",
    "flat_wide": "flat CNN, widened to the routed cost",
    "flat_deep": "flat CNN with the routed path's layers, widened to the routed cost",
    "switch": "soft switch (Stack Overflow), fixed loss weights",
    "soft": "condnet joint, soft routing",
    "hard": "condnet joint, hard routing (straight-through)",
    "staged": "condnet staged (gate, experts, joint)",
    "schedule": "condnet soft + coarse_to_fine schedule",
    "taps": "condnet joint, soft routing, expert_placement='taps'",
    "three_levels": "condnet joint, soft routing, 3 levels (2 -> 7 -> 10)",
    "discovered": "discovered hierarchy",
}
THREE = "3 levels"
LEARNING_RATE = 1e-3
CROSS_ENTROPY = "sparse_categorical_crossentropy"
DROPOUT = 0.3  # build_image_model's default, used by the flat CNNs too
MIXTURE, ROUTED = "mixture", "routed"


def main(argv=None):
    args = parse_args(argv)
    settings = {key: getattr(args, key) for key in FULL}
    data_dir = prepare_cifar(args.archive, args.cache)
    if data_dir is None:
        return 0
    work = args.cache / "accuracy_cifar10"
    work.mkdir(parents=True, exist_ok=True)
    train_dir = subset_folder(data_dir, "train", settings["train_per_class"], args.cache)
    test_dir = subset_folder(data_dir, "test", settings["test_per_class"], args.cache)
    print(f"data: {train_dir} (train), {test_dir} (test); settings {settings}", flush=True)
    start = time.perf_counter()
    bench = Benchmark(settings, args.seed, train_dir, test_dir, work, args.json)
    bench.run(args.configs)
    bench.facts["wall_seconds"] = time.perf_counter() - start
    body = report(bench, args)
    bench.save()
    print("\n" + body)
    heading = "CIFAR-10 accuracy" + section_suffix(args)
    print(f"\nwrote section '{heading}' of {common.write_section(heading, body, args.results)}")
    print(f"wrote {args.json}")
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a tiny subset, 3 epochs (about 2 min)"
    )
    parser.add_argument("--train-per-class", type=int, help="training images per class")
    parser.add_argument("--test-per-class", type=int, help="test images per class")
    parser.add_argument("--epochs", type=int, help="epochs of every configuration")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--filters", type=_ints, help="small_cnn blocks, e.g. 16,32,64,128")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument(
        "--repeats",
        type=int,
        help="extra seeds for the best condnet row and its flat rival (default 2; quick 1)",
    )
    parser.add_argument(
        "--configs", type=_names, default=CONFIGS, help=f"subset of {','.join(CONFIGS)}"
    )
    parser.add_argument("--archive", type=Path, default=common.CIFAR, help="CIFAR-10 JPEG tarball")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "condnet",
        help="where the archive is extracted once, with subsets and hierarchy files",
    )
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    parser.add_argument(
        "--json",
        type=Path,
        help="defaults to benchmarks/accuracy_cifar10.json (--quick: in the cache folder)",
    )
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.json is None:
        suffix = section_suffix(args)
        folder = common.BENCHMARKS if not args.quick else args.cache / "accuracy_cifar10"
        name = re.sub(r"[^a-z0-9]+", "-", suffix.lower()).strip("-")
        args.json = folder / (f"accuracy_cifar10.{name}.json" if name else "accuracy_cifar10.json")
    if "discovered" in args.configs and "flat" not in args.configs:
        parser.error("--configs: 'discovered' needs 'flat' (its confusions)")
    return args


def section_suffix(args):
    """`""` for the default run, `" (quick)"`, or the settings that differ from the default,
    so that a run with other settings gets its own RESULTS.md section and JSON file."""
    if args.quick:
        return " (quick)"
    changed = [f"{key} {getattr(args, key)}" for key in FULL if getattr(args, key) != FULL[key]]
    if args.configs != CONFIGS:
        changed.append("configs " + ",".join(args.configs))
    return f" ({'; '.join(changed)})" if changed else ""


def _ints(text):
    return tuple(int(part) for part in text.split(","))


def _names(text):
    names = tuple(part.strip() for part in text.split(","))
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose among {','.join(CONFIGS)}")
    return tuple(name for name in CONFIGS if name in names)


# === Data ===


def prepare_cifar(archive, cache):
    """`cache/cifar10` (train/, test/), extracted once from the archive; None if absent."""
    target = cache / "cifar10"
    if (target / ".complete").exists():
        return target
    if not archive.exists():
        print(f"skipped: the CIFAR-10 archive {archive} is absent (see ../shared/data/README.md)")
        return None
    print(f"extracting {archive} into {cache} (once)", flush=True)
    partial = cache / "cifar10.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(partial, filter="data")
    shutil.rmtree(target, ignore_errors=True)
    (partial / "cifar10").rename(target)
    partial.rmdir()
    (target / ".complete").touch()
    return target


def subset_folder(data_dir, split, per_class, cache):
    """A flat `<class>/` folder with the first `per_class` images (by name) of each class.

    The whole split itself when `per_class` covers it; otherwise a folder of
    symbolic links under `cache/cifar10-subsets`, made once.
    """
    if per_class >= CLASSES_PER_SET[split]:
        return data_dir / split
    target = cache / "cifar10-subsets" / f"{split}-{per_class}"
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    for folder in sorted(p for p in (data_dir / split).iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:per_class]:
            (target / folder.name / image.name).symlink_to(image.resolve())
    (target / ".complete").touch()
    return target


class Data:
    """One hierarchy's training, validation and test ImageFolders."""

    def __init__(self, name, hierarchy_file, train_dir, test_dir, settings, seed):
        self.name = name
        self.train, self.validation = load_folders(
            train_dir,
            hierarchy=hierarchy_file,
            image_size=32,
            batch_size=settings["batch_size"],
            validation_split=0.1,
            seed=seed,
        )
        self.hierarchy = self.train.hierarchy
        hierarchy, paths, labels = scan_directory(test_dir, self.hierarchy)
        self.test = ImageFolder(paths, labels, hierarchy, image_size=32, batch_size=256)

    def fresh_train(self):
        """The training set with its shuffles restarted from the seed (cache shared)."""
        return self.train.subset(np.arange(self.train.num_samples))


class WithGroups(keras.utils.PyDataset):
    """An ImageFolder's batches with two targets: `{"gate": group, "classes": class}`."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, index):
        images, labels = self.folder[index][:2]
        groups = self.folder.hierarchy.class_to_group[labels]
        return images, {"gate": groups, "classes": labels}

    def on_epoch_end(self):
        self.folder.on_epoch_end()


# === Models ===


def optimizer(epochs, steps_per_epoch):
    """Adam from `LEARNING_RATE`, decayed to 0 by a cosine over the whole run."""
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, epochs * steps_per_epoch)
    return keras.optimizers.Adam(schedule)


def flat_cnn(filters, seed, head_filters=(), num_classes=10):
    """Augmentation, `small_cnn`, then a `classifier_head` with the `head_filters` convs.

    `head_filters` are `(filters, pool)` pairs, as `classifier_head` takes
    them: row 3 gives the flat CNN an expert's layers.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = make_augmentation(seed=seed)(inputs)
    x = small_cnn(IMAGE_SHAPE, filters=tuple(filters))(x)
    head = classifier_head(tuple(x.shape[1:]), num_classes, "head", DROPOUT, tuple(head_filters))
    return keras.Model(inputs, head(x), name="flat_cnn")


def widened(layout, target_macs):
    """The narrowest uniform widening of `layout` whose flat CNN has >= `target_macs`.

    `layout` is `(filters, head_filters)` as `flat_cnn` takes them.
    """
    filters, head = layout
    for step in range(400):
        scale = 1 + step / 100
        wide = (
            tuple(round(f * scale) for f in filters),
            tuple((round(f * scale), pool) for f, pool in head),
        )
        if count_macs(flat_cnn(*wide[:1], seed=0, head_filters=wide[1])) >= target_macs:
            return wide
    raise ValueError(f"no widening of {layout} up to 5x reaches {target_macs} MACs")


def routed_path_layout(filters):
    """The layers a routed image runs under `expert_placement="branch"`, as a flat CNN:
    `small_cnn` without its last block, then one expert's convs."""
    return tuple(filters[:-1]), branch_convs(filters[-1])["expert"]


def conditional(hierarchy, settings, seed, routing, placement="auto"):
    keras.utils.set_random_seed(seed)
    return build_image_model(
        hierarchy,
        image_size=32,
        filters=settings["filters"],
        augmentation=make_augmentation(seed=seed),
        routing=routing,
        dropout=DROPOUT,
        expert_placement=placement,
    )


def conditional_macs(model):
    """MACs per image: routed (trunk + gate + the costliest route) and mixture (all),
    as `condnet.evaluation.cost.routed_macs` counts them."""
    costs = routed_macs(model, IMAGE_SHAPE)
    return {
        ROUTED: costs["routed"],
        MIXTURE: costs["all_experts"],
        "trunk_and_gate": costs["trunk"] + costs["gate"],
        "experts": [costs["experts"][group] for group in model.hierarchy.groups],
    }


def average_routed_macs(macs, routed_metrics):
    """MACs per image averaged over the routes the test images took."""
    routes = np.asarray(routed_metrics["routing_matrix"]).sum(axis=0)
    return macs["trunk_and_gate"] + float(routes @ macs["experts"]) / routes.sum()


@keras.saving.register_keras_serializable(package="condnet_benchmarks")
class SoftSwitch(layers.Layer):
    """Each branch's class probabilities times its gate probability, concatenated.

    A group of one class has no branch: its class gets the gate probability.

    Args:
        has_branch: list of bools, one per group: whether the group has a branch.

    Call arguments:
        inputs: list `[gate, branch, ...]`: the gate's `(batch, groups)`
            probabilities, then the `(batch, classes of group)` probabilities
            of each group that has a branch, in group order.
    """

    def __init__(self, has_branch, **kwargs):
        super().__init__(**kwargs)
        self.has_branch = [bool(b) for b in has_branch]

    def call(self, inputs):
        gate, *branches = inputs
        branches, scaled = iter(branches), []
        for g, has_branch in enumerate(self.has_branch):
            weight = gate[:, g : g + 1]
            scaled.append(next(branches) * weight if has_branch else weight)
        return ops.concatenate(scaled, axis=-1)

    def compute_output_shape(self, input_shape):
        sizes = iter(shape[-1] for shape in input_shape[1:])
        return (input_shape[0][0], sum(next(sizes) if b else 1 for b in self.has_branch))

    def get_config(self):
        return {**super().get_config(), "has_branch": self.has_branch}


def soft_switch(hierarchy, settings, seed, optimizer):
    """The hand-wired two-output model, from the parts `build_image_model` makes.

    Returns the compiled model and the ConditionalModel whose parts it reuses
    (for counting MACs).
    """
    parts = conditional(hierarchy, settings, seed, "soft")
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    taps = parts.trunk(inputs)
    gate = parts.gate(taps[parts.gate_tap])
    experts = parts.experts
    branches = [
        experts[g](taps[parts.expert_taps[g]]) for g in hierarchy.groups if experts[g] is not None
    ]
    has_branch = [experts[g] is not None for g in hierarchy.groups]
    classes = SoftSwitch(has_branch, name="soft_switch")([gate, *branches])
    model = keras.Model(inputs, {"gate": gate, "classes": classes}, name="soft_switch_model")
    model.compile(
        optimizer=optimizer,
        loss={"gate": CROSS_ENTROPY, "classes": CROSS_ENTROPY},
        loss_weights={"gate": 1.0, "classes": 1.0},
        metrics={"gate": ["accuracy"], "classes": ["accuracy"]},
    )
    return model, parts


# === Training ===


def staged_epochs(epochs):
    """(gate, experts, joint) epochs adding up to `epochs`: about 40/30/30%."""
    joint = max(1, round(0.3 * epochs))
    gate = max(1, round(0.4 * epochs))
    return gate, max(1, epochs - gate - joint), joint


def timed_fit(fit, epochs):
    """Run `fit(callbacks)`; seconds per epoch (total / epochs, tracing included)."""
    timer = models.EpochTimer()
    start = time.perf_counter()
    history = fit([timer])
    seconds = time.perf_counter() - start
    return history, {
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / epochs,
        "median_epoch_seconds": statistics.median(timer.seconds) if timer.seconds else None,
    }


# === Scoring ===

_SUMMARY = ("accuracy", "group_accuracy", "hierarchical_f1")


def score_conditional(model, data):
    """Mixture and routed test (and routed validation) metrics of the same weights."""
    trained_routing = model.routing
    scores = {}
    for mode, routing in ((MIXTURE, "soft"), (ROUTED, "hard")):
        model.routing = routing
        model.make_predict_function(force=True)  # the routing is read when tracing
        scores[mode] = evaluate_model(model, data.test)
    scores["validation_routed_accuracy"] = evaluate_model(model, data.validation)["accuracy"]
    model.routing = trained_routing
    return scores


def score_switch(model, data):
    """The soft switch's mixture, and its prediction when only the top group's branch counts."""
    hierarchy, labels = data.hierarchy, data.test.labels
    outputs = model.predict(data.test, verbose=0)
    classes, gate = outputs["classes"], outputs["gate"]
    top = gate.argmax(1)
    routed = classes * (hierarchy.class_to_group[None, :] == top[:, None])
    validation = model.predict(data.validation, verbose=0)
    chosen = hierarchy.class_to_group[None, :] == validation["gate"].argmax(1)[:, None]
    validation_routed = (validation["classes"] * chosen).argmax(1) == data.validation.labels
    return {
        MIXTURE: evaluate_predictions(hierarchy, labels, classes, group_probabilities=gate),
        ROUTED: evaluate_predictions(
            hierarchy, labels, routed, group_probabilities=gate, route=top
        ),
        "validation_routed_accuracy": float(validation_routed.mean()),
    }


# === The benchmark ===


class Benchmark:
    """Trains the configurations one after the other and keeps every number."""

    def __init__(self, settings, seed, train_dir, test_dir, work, json_path):
        self.settings, self.seed = settings, seed
        self.train_dir, self.test_dir, self.work = train_dir, test_dir, work
        self.json_path = json_path
        self.start = time.perf_counter()
        self.data = {}
        for name, groups in {**HIERARCHIES, THREE: THREE_LEVELS}.items():
            path = work / f"hierarchy-{name.replace(' ', '-')}.json"
            path.write_text(json.dumps(groups, indent=1) + "\n")
            self.data[name] = Data(name, path, train_dir, test_dir, settings, seed)
        orders = {name: data.hierarchy.classes for name, data in self.data.items()}
        if len({tuple(order) for order in orders.values()}) != 1:
            raise ValueError(
                f"The hierarchies must list the classes in one order. Received: {orders}"
            )
        self.rows = []
        self.facts = {
            "settings": dict(settings),
            "seed": seed,
            "hierarchies": {**HIERARCHIES, THREE: THREE_LEVELS},
            "repeats": {},
        }
        first = self.data["2 groups"]
        self.facts["images"] = {
            "train": first.train.num_samples,
            "validation": first.validation.num_samples,
            "test": first.test.num_samples,
        }
        self.flat_model = None

    def run(self, configs):
        two = self.data["2 groups"]
        for config in ("flat", "flat_wide", "flat_deep"):
            if config in configs:
                self.fit_flat(config)
        for name in HIERARCHIES:
            for config in ("switch", *CONDNET):
                if config in configs:
                    self.conditional_row(config, self.data[name])
        if "taps" in configs:
            self.conditional_row("taps", two)
        if "three_levels" in configs:
            self.conditional_row("three_levels", self.data[THREE])
        if "discovered" in configs:
            self.discovered(two)
        self.repeat_target_pair()

    def optimizer(self):
        return optimizer(self.settings["epochs"], len(self.data["2 groups"].train))

    # === Rows ===

    def flat_layout(self, key):
        """`(filters, head_filters)` of a flat row, and the MACs it was widened to."""
        filters = tuple(self.settings["filters"])
        if key == "flat":
            return (filters, ()), None
        target = self.routed_macs
        layout = (filters, ()) if key == "flat_wide" else routed_path_layout(filters)
        return widened(layout, target), target

    @functools.cached_property
    def routed_macs(self):
        """Routed MACs of the 2-group conditional model, the cost the flat rows widen to."""
        two = self.data["2 groups"].hierarchy
        return conditional_macs(conditional(two, self.settings, self.seed, "soft"))[ROUTED]

    def fit_flat(self, key, seed=None):
        data = self.data["2 groups"]
        (filters, head), target = self.flat_layout(key)
        model = flat_cnn(filters, seed or self.seed, head_filters=head)
        model.compile(optimizer=self.optimizer(), loss=CROSS_ENTROPY, metrics=["accuracy"])
        epochs = self.settings["epochs"]
        print(f"\n=== {TITLES[key]}: filters {filters} + {head} ===", flush=True)

        def fit(callbacks):
            return model.fit(
                data.fresh_train(),
                validation_data=data.validation,
                epochs=epochs,
                callbacks=callbacks,
                verbose=2,
            )

        _, timing = timed_fit(fit, epochs)
        probabilities = model.predict(data.test, verbose=0)
        scores = {
            name: evaluate_predictions(d.hierarchy, d.test.labels, probabilities)
            for name, d in self.data.items()
        }
        row = {
            "config": key,
            "title": TITLES[key],
            "hierarchy": None,
            "filters": list(filters),
            "head_filters": [list(pair) for pair in head],
            "target_macs": target,
            "macs": {MIXTURE: count_macs(model)},
            "scores": {name: {MIXTURE: s} for name, s in scores.items()},
            **timing,
        }
        if seed is None:
            self.add(row)
            self.flat_model = model if key == "flat" else self.flat_model
        return row

    def conditional_row(self, config, data, hierarchy_name=None, title=None, seed=None):
        epochs = self.settings["epochs"]
        name = hierarchy_name or data.name
        seed = seed or self.seed
        print(f"\n=== {title or TITLES[config]}: {name}, seed {seed} ===", flush=True)
        if config == "switch":
            model, parts = soft_switch(data.hierarchy, self.settings, seed, self.optimizer())
            macs = conditional_macs(parts)
        else:
            routing = "hard" if config == "hard" else "soft"
            placement = "taps" if config == "taps" else "auto"
            model = conditional(data.hierarchy, self.settings, seed, routing, placement)
            macs = conditional_macs(model)
            if config != "staged":
                model.compile(optimizer=self.optimizer())
        _, timing = timed_fit(lambda callbacks: self.fit(config, model, data, callbacks), epochs)
        scores = (score_switch if config == "switch" else score_conditional)(model, data)
        macs["routed_average_on_test"] = average_routed_macs(macs, scores[ROUTED])
        row = {
            "config": config,
            "title": title or TITLES[config],
            "hierarchy": name,
            "groups": data.hierarchy.to_dict(),
            "macs": macs,
            "scores": {name: {MIXTURE: scores[MIXTURE], ROUTED: scores[ROUTED]}},
            "validation_routed_accuracy": scores["validation_routed_accuracy"],
            **timing,
        }
        if config == "staged":
            row["staged_epochs"] = dict(zip(("gate", "experts", "joint"), staged_epochs(epochs)))
        if seed == self.seed:
            self.add(row)
        return row

    def repeat_target_pair(self):
        """Train the best condnet row and its flat rival again with `repeats` more seeds."""
        best = self.best_condnet("2 groups")
        rival = self.flat_rival(best)
        if best is None or rival is None:
            return
        seeds = [self.seed + i for i in range(1, self.settings["repeats"] + 1)]
        two = self.data["2 groups"]
        for seed in seeds:
            rows = [
                self.conditional_row(best, two, seed=seed),
                self.fit_flat(rival["config"], seed=seed),
            ]
            for row in rows:
                mode = ROUTED if row["hierarchy"] else MIXTURE
                accuracy = row["scores"]["2 groups"][mode]["accuracy"]
                self.facts["repeats"].setdefault(row["config"], {})[str(seed)] = accuracy
                print(f"--> seed {seed}: {row['title']} {mode} accuracy {accuracy:.4f}")
            self.save()

    def flat_rival(self, best):
        """The most accurate flat row that costs at least the best condnet row's route."""
        if best is None:
            return None
        routed = _row(self.rows, best, "2 groups")["macs"][ROUTED]
        rivals = [r for r in self.rows if r["hierarchy"] is None and r["macs"][MIXTURE] >= routed]
        if not rivals:
            return None
        return max(rivals, key=lambda r: r["scores"]["2 groups"][MIXTURE]["accuracy"])

    def fit(self, config, model, data, callbacks):
        epochs = self.settings["epochs"]
        common_kwargs = dict(validation_data=data.validation, callbacks=callbacks, verbose=2)
        if config == "switch":
            return model.fit(
                WithGroups(data.fresh_train()),
                validation_data=WithGroups(data.validation),
                epochs=epochs,
                callbacks=callbacks,
                verbose=2,
            )
        if config == "staged":
            gate, experts, joint = staged_epochs(epochs)
            return fit_staged(
                model,
                data.fresh_train(),
                gate_epochs=gate,
                expert_epochs=experts,
                joint_epochs=joint,
                learning_rate=LEARNING_RATE,
                **common_kwargs,
            )
        if config == "schedule":
            common_kwargs["callbacks"] = [*callbacks, LossWeightSchedule.coarse_to_fine(epochs)]
        return model.fit(data.fresh_train(), epochs=epochs, **common_kwargs)

    def discovered(self, two):
        try:
            from condnet.evaluation.discovery import discover_hierarchy
        except ImportError as error:
            print(f"\nskipped the discovered hierarchy: {error}")
            return
        probabilities = self.flat_model.predict(two.validation, verbose=0)
        confusion = confusion_matrix(two.validation.labels, probabilities.argmax(1), 10)
        hierarchy = discover_hierarchy(confusion, two.hierarchy.classes, 2, seed=self.seed)
        path = self.work / "hierarchy-discovered.json"
        path.write_text(json.dumps(hierarchy.to_dict(), indent=1) + "\n")
        print(f"\ndiscovered from the flat CNN's validation confusions: {hierarchy.to_dict()}")
        best = self.best_condnet("2 groups") or "soft"
        data = Data("discovered", path, self.train_dir, self.test_dir, self.settings, self.seed)
        row = self.conditional_row(
            best, data, "discovered (2 groups)", f"{TITLES[best]}, discovered hierarchy"
        )
        row["discovered_from"] = {
            "confusion": confusion.tolist(),
            "classes": list(two.hierarchy.classes),
        }
        row["same_split_as_hand_made"] = data.hierarchy.classes == two.hierarchy.classes
        self.save()

    # === Bookkeeping ===

    def best_condnet(self, hierarchy_name):
        """The condnet configuration (4-7) with the best routed validation accuracy."""
        rows = [r for r in self.rows if r["config"] in CONDNET and r["hierarchy"] == hierarchy_name]
        if not rows:
            return None
        return max(rows, key=lambda r: r["validation_routed_accuracy"])["config"]

    def add(self, row):
        self.rows.append(row)
        elapsed = (time.perf_counter() - self.start) / 60
        print(f"{one_line(row)} ({elapsed:.1f} min since the start)", flush=True)
        self.save()

    def save(self):
        document = {**self.facts, "machine": common.machine("tensorflow"), "rows": self.rows}
        self.json_path.write_text(json.dumps(document, indent=1) + "\n")


def one_line(row):
    parts = []
    for hierarchy, modes in row["scores"].items():
        for mode, metrics in modes.items():
            parts.append(f"{hierarchy} {mode} acc {metrics['accuracy']:.4f}")
    return (
        f"--> {row['title']} [{row['hierarchy'] or 'flat'}]: "
        + "; ".join(parts)
        + f"; {row['seconds_per_epoch']:.1f} s/epoch"
    )


# === Report ===


def report(bench, args):
    settings, facts = bench.settings, bench.facts
    images = facts["images"]
    lines = [
        *common.machine("tensorflow"),
        f"- data: CIFAR-10 JPEGs (`{args.archive.name}`), the first {settings['train_per_class']} "
        f"training images of each class (of 5,000), 10% of each class held out by "
        f"`load_folders(validation_split=0.1, seed={bench.seed})`: {images['train']:,} training, "
        f"{images['validation']:,} validation images; {images['test']:,} test images "
        f"({settings['test_per_class']} per class)",
        f"- budget: {settings['epochs']} epochs per configuration, batch {settings['batch_size']}, "
        f"`small_cnn` filters {settings['filters']}, Adam {LEARNING_RATE:g} with cosine decay "
        f"to 0, "
        f"`make_augmentation(seed={bench.seed})`, dropout {DROPOUT}, seed {bench.seed}; "
        f"the whole run took {facts['wall_seconds'] / 60:.1f} min",
        *(
            [
                "- quick run: far too few images and epochs for the verdicts below to mean "
                "anything; it checks that the script runs"
            ]
            if args.quick
            else []
        ),
        "",
        *table(bench.rows),
        "",
        *targets(bench),
        "",
        *notes(bench),
    ]
    return "\n".join(lines)


def table(rows):
    headers = [
        "#", "configuration", "hierarchy", "accuracy", "group acc.", "hier. F1",
        "MMACs/image", "routed accuracy", "routed hier. F1", "routed MMACs/image",
        "routed - mixture", "s/epoch",
    ]  # fmt: skip
    numbers = {key: str(i) for i, key in enumerate(CONFIGS, start=1)}
    body = []
    for name in [*HIERARCHIES, THREE, "discovered (2 groups)"]:
        for row in rows:
            flat = row["hierarchy"] is None
            if not flat and row["hierarchy"] != name or flat and name not in row["scores"]:
                continue
            modes = row["scores"][name]
            mixture, routed = modes[MIXTURE], modes.get(ROUTED)
            number = numbers["discovered" if name.startswith("discovered") else row["config"]]
            same = " (same model)" if flat and name != "2 groups" else ""
            cells = [number, row["title"] + same, name]
            cells += [_percent(mixture[k]) for k in _SUMMARY] + [_millions(row["macs"][MIXTURE])]
            if routed is None:
                cells += ["-"] * 4
            else:
                cells += [_percent(routed["accuracy"]), _percent(routed["hierarchical_f1"])]
                cells.append(_millions(row["macs"][ROUTED]))
                cells.append(f"{100 * (routed['accuracy'] - mixture['accuracy']):+.2f}")
            cells.append(f"{row['seconds_per_epoch']:.1f}")
            body.append(cells)
    return [
        common.markdown_table(headers, body),
        "",
        "Accuracy, group accuracy and hierarchical F1 (Kiritchenko et al.) on the test images, "
        "in %. The first block is every part running (the flat CNN; the mixture "
        "P(group) x P(class | group) of a conditional model); the routed block is the same "
        'weights with `model.routing = "hard"` and condnet\'s routed predict (only the '
        "gate's top expert runs). For the soft switch, routed is the argmax within the gate's "
        "top group of the same outputs. Group accuracy is the gate's (the same in both "
        "modes); for the flat rows, one model scored against each hierarchy, it is the group "
        "of the predicted class. MMACs: millions of multiply-accumulates per image by "
        "`condnet.evaluation.cost.count_macs` (trunk + gate + every expert; routed: + the "
        "costliest "
        "expert). s/epoch: training seconds over epochs, validation and first-epoch tracing "
        "included.",
    ]


def _percent(value):
    return f"{100 * value:.2f}"


def _millions(macs):
    return f"{macs / 1e6:.3f}"


# === Targets ===


def targets(bench):
    rows, lines = bench.rows, ["### Targets"]
    best = bench.best_condnet("2 groups")
    flats = [r for r in rows if r["hierarchy"] is None]
    if best is None or not flats:
        return lines + ["", "Not evaluated: this run lacks the flat or the condnet rows."]
    row = _row(rows, best, "2 groups")
    routed = _accuracy(row, ROUTED)
    mixture = _accuracy(row, MIXTURE)
    lines += [
        "",
        f"The best condnet configuration (5-8, 2-group hierarchy), chosen by routed accuracy "
        f"on the validation split: **{TITLES[best]}** (validation "
        f"{100 * row['validation_routed_accuracy']:.2f}%).",
        "",
    ]
    rival = bench.flat_rival(best)
    if rival:
        flat_accuracy = rival["scores"]["2 groups"][MIXTURE]["accuracy"]
        ours, theirs = _seeds(bench, row, routed), _seeds(bench, rival, flat_accuracy)
        gain = 100 * (statistics.mean(ours) - statistics.mean(theirs))
        lines.append(
            f"1. Best condnet config, routed, vs the most accurate flat CNN of equal or "
            f"greater inference cost: >= +1.0 point with the 2-group hierarchy. "
            f"**{_verdict(gain >= 1.0)}** ({gain:+.2f} points, mean of {len(ours)} "
            f"seed{'s' if len(ours) > 1 else ''}): "
            f"{_spread(ours)} ({row['macs'][ROUTED]:,} MACs) vs {rival['title']} "
            f"{_spread(theirs)} ({rival['macs'][MIXTURE]:,} MACs). First seed alone: "
            f"{100 * routed:.2f}% vs {100 * flat_accuracy:.2f}%. (Its mixture, "
            f"{100 * mixture:.2f}% at {row['macs'][MIXTURE]:,} MACs, is "
            f"{100 * (mixture - flat_accuracy):+.2f} points from that flat CNN, which costs "
            f"less than the mixture.)" + _versus_others(flats, rival, routed)
        )
    else:
        lines.append("1. Not evaluated: no flat CNN costs as much as the routed model.")
    difference = 100 * (routed - mixture)
    lines.append(
        f"2. Hard-routed within 0.5 points of soft (same weights, best config; routed at most "
        f"0.5 points below the mixture): "
        f"**{_verdict(difference >= -0.5)}**: routed {100 * routed:.2f}% vs mixture "
        f"{100 * mixture:.2f}% ({difference:+.2f} points). Every conditional row: "
        + ", ".join(f"{r['config']} {r['hierarchy']} {_signed(r)}" for r in rows if r["hierarchy"])
        + "."
    )
    lines.append(_discovery_target(rows, best))
    return lines


def _seeds(bench, row, first):
    """Test accuracy of `row`'s configuration for the benchmark seed and each repeat."""
    repeats = bench.facts["repeats"].get(row["config"], {})
    return [first, *repeats.values()]


def _spread(accuracies):
    mean = 100 * statistics.mean(accuracies)
    each = ", ".join(f"{100 * a:.2f}" for a in accuracies)
    if len(accuracies) < 2:
        return f"{mean:.2f}%"
    return f"{mean:.2f} +- {100 * statistics.stdev(accuracies):.2f}% ({each})"


def _versus_others(flats, rival, routed):
    others = [r for r in flats if r is not rival]
    return "".join(
        f" Against {r['title']} ({r['macs'][MIXTURE]:,} MACs, "
        f"{100 * r['scores']['2 groups'][MIXTURE]['accuracy']:.2f}%): "
        f"{100 * (routed - r['scores']['2 groups'][MIXTURE]['accuracy']):+.2f} points (first seed)."
        for r in others
    )


def _discovery_target(rows, best):
    found = [r for r in rows if r["hierarchy"] == "discovered (2 groups)"]
    hand_made = [r for r in rows if r["config"] == best and r["hierarchy"] in HIERARCHIES]
    if not found or not hand_made:
        return "3. Discovered hierarchy within 1.0 point of the best hand-made one: not run."
    found = found[0]
    top = max(hand_made, key=lambda r: _accuracy(r, ROUTED))
    gap = 100 * (_accuracy(found, ROUTED) - _accuracy(top, ROUTED))
    return (
        f"3. Discovered hierarchy within 1.0 point of the best hand-made one ({TITLES[best]}, "
        f"routed): **{_verdict(gap >= -1.0)}**: discovered {found['groups']} "
        f"{100 * _accuracy(found, ROUTED):.2f}% vs {top['hierarchy']} "
        f"{100 * _accuracy(top, ROUTED):.2f}% ({gap:+.2f} points; mixture "
        f"{100 * _accuracy(found, MIXTURE):.2f}% vs {100 * _accuracy(top, MIXTURE):.2f}%)."
    )


def _row(rows, config, hierarchy):
    return next(r for r in rows if r["config"] == config and r["hierarchy"] == hierarchy)


def _accuracy(row, mode):
    return row["scores"][row["hierarchy"]][mode]["accuracy"]


def _signed(row):
    return f"{100 * (_accuracy(row, ROUTED) - _accuracy(row, MIXTURE)):+.2f}"


def _verdict(met):
    return "MET" if met else "NOT MET"


def notes(bench):
    lines = ["### Notes", ""]
    for row in bench.rows:
        if row["config"] in ("flat_wide", "flat_deep"):
            head = [tuple(pair) for pair in row["head_filters"]]
            convs = f", then (filters, pool) convs {head}" if head else ""
            lines.append(
                f"- Row {CONFIGS.index(row['config']) + 1}: `small_cnn` filters "
                f"{tuple(row['filters'])}{convs}, the narrowest uniform widening with at least "
                f"the routed MACs of the 2-group conditional models ({row['target_macs']:,})."
            )
    cheaper = [
        r
        for r in bench.rows
        if r["hierarchy"] and r["macs"]["routed_average_on_test"] < 0.99 * r["macs"][ROUTED]
    ]
    if cheaper:
        lines.append(
            "- A group of one class has no expert (`build_image_model`), so a route to it "
            "costs trunk + gate only. Routed MACs/image above are those of the costliest "
            "route; averaged over the routes the test images took: "
            + ", ".join(
                f"{r['config']} {r['hierarchy']} {r['macs']['routed_average_on_test']:,.0f}"
                for r in cheaper
            )
            + "."
        )
    for row in bench.rows:
        if row["config"] == "three_levels":
            scores = row["scores"][THREE]
            levels = {
                mode: ", ".join(f"{100 * a:.2f}" for a in scores[mode]["level_accuracy"])
                for mode in (MIXTURE, ROUTED)
            }
            lines.append(
                f"- Row 10, accuracy per level (groups, subgroups, classes) in %: mixture "
                f"{levels[MIXTURE]}; routed {levels[ROUTED]}. Its routed MACs count the top "
                "gate, then the subgroup gate and the costliest expert of the costliest group; "
                "its flat rows are the 2-group flat models scored against the 3-level tree."
            )
    staged = [r for r in bench.rows if r["config"] == "staged"]
    if staged:
        epochs = staged[0]["staged_epochs"]
        lines.append(
            f"- Staged: gate {epochs['gate']}, experts {epochs['experts']} (each on its own "
            f"group's rows), joint {epochs['joint']} epochs; `fit_staged` uses a constant "
            f"learning rate ({LEARNING_RATE:g}, then its default 1e-4 for the joint stage), "
            "not the cosine decay of the other rows."
        )
    found = [r for r in bench.rows if r["hierarchy"] == "discovered (2 groups)"]
    if found and not found[0]["same_split_as_hand_made"]:
        lines.append(
            "- The discovered hierarchy orders the classes differently, so `load_folders` draws "
            "a different validation split from the same training images; the test images are "
            "the same."
        )
    repeats = bench.facts["repeats"]
    lines.append(
        "- One training run per row and seed. Only the two rows of target 1 were repeated "
        f"({', '.join(f'{k}: seeds {list(v)}' for k, v in repeats.items()) or 'none'}); "
        "other differences of a point or so may not repeat with another seed."
    )
    return lines


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message="You are using a softmax over axis -1")
    sys.exit(main())

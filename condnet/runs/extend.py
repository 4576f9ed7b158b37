"""`condnet extend`: grow a trained run with new groups or classes, training only what changed.

A run learns classes it never saw without retraining everything:

- a **new group** (a folder of DATA_DIR whose name is no group of the run)
  gets a new expert, a copy of an existing expert's layers with a fresh
  classifier, and the gate gains an output for it;
- **new classes in an existing group** grow that group's expert: its
  classifier gains outputs, and the kernel and bias of the old classes are
  copied, so it starts answering the old classes as before.

Then only the gate and the grown or new experts train, and the trunk when
the old run trained it from scratch (`trunk_trains`); a pretrained backbone and
every untouched expert are frozen and keep their weights bit for bit. They
train on the new images and a replay sample of the old run's own training
images (from the folder its config.json names, or `old_data`), so the gate
keeps routing the old groups while it learns the new ones. While the trunk is
frozen and the run's `augment` is `"none"` (what the probe of a pretrained
backbone's features usually chooses), the trunk runs once per image and the
heads train on its features, as `condnet train` trains them
(`condnet.training.features`).

DATA_DIR holds the new classes, in a layout `condnet train` reads (nested
`root/<group>/<class>/*`, or flat `root/<class>/*` with `hierarchy`). A class
the run already knows, in the group it knows it in, may be there too: its
images train beside the replay sample. The old run's training data must still
be there (or be passed as `old_data`): the replay sample is drawn from its
training split, and the old classes are scored on its validation split, the
images the old model never trained on, before and after. If it is gone,
`extend` stops before writing anything and says so.

The result is a complete run in `out` (model.keras, config.json,
hierarchy.json, history.csv, metrics.json, backoff.json, unknown.json, the
report), scored on the old run's validation split plus a validation share of
DATA_DIR; metrics.json's `extend` section holds the old classes' accuracy
before and after, the new classes' accuracy and the wall time. The old run is
only read. An extended run cannot be resumed, calibrated or given new
thresholds by `backoff` / `unknown` (its validation split spans two folders):
extend again, or train from scratch.
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import keras
import numpy as np

from condnet.data.image_folder import ImageFolder
from condnet.data.splits import split_indices
from condnet.evaluation.calibration import dense_outputs_of
from condnet.evaluation.evaluate import evaluate_model
from condnet.hierarchy import Hierarchy
from condnet.runs import checkpoint as ckpt
from condnet.runs.claim import COMMITTED, RunClaim, check_run_dir
from condnet.runs.documents import refuse_text_run
from condnet.runs.files import BEST, CONFIG, HIERARCHY
from condnet.runs.finish import INFERENCE_ROUTING, announce, finish_run
from condnet.runs.lock import run_lock
from condnet.runs.options import TrainingOptions
from condnet.runs.outputs import check_output
from condnet.runs.run_dir import EXTENDED, _refuse_ensemble, load_run
from condnet.runs.timing import RunTimes
from condnet.training import balance as balancing
from condnet.training.callbacks import StopOnNaN
from condnet.training.distribute import compile_options
from condnet.vision.backbones import is_pretrained


def extend(
    run_dir,
    data_dir,
    out,
    *,
    epochs=None,
    replay="auto",
    seed=None,
    hierarchy=None,
    validation_split=None,
    learning_rate=None,
    train_trunk="auto",
    balance=True,
    old_data=None,
    overwrite=False,
    break_lock=False,
    verbose="auto",
):
    """Grow the run in `run_dir` with the new groups or classes in `data_dir`; write `out`.

    Args:
        run_dir: a run written by `condnet train` (read, never written).
        data_dir: folder of the new classes: `root/<group>/<class>/*`, or
            `root/<class>/*` with `hierarchy`. Classes the run knows, in their
            own group, may be there too (more images of them).
        out: the new run directory (not the old run, nor inside it or a data folder).
        epochs: int. Epochs to train the gate and the changed experts.
            Defaults to None: the old run's `epochs`.
        replay: `"auto"` or int >= 1. Training images per old class drawn from
            the old run's training split. Defaults to `"auto"`: as many as each
            new class has on average (at least 1), at most what the class has,
            so that old and new classes train on about as many images each.
        seed: int. Seed of the replay sample, the split of `data_dir`, the new
            outputs' initial weights and the shuffles. Defaults to None: the old
            run's seed.
        hierarchy: `Hierarchy`, dict or file naming the group of each class of
            a flat `data_dir`. Defaults to None (nested folders).
        validation_split: float. Share of each new class held out to score it.
            Defaults to None: the old run's.
        learning_rate: float. Defaults to None: the old run's.
        train_trunk: `"auto"` or bool. Train the shared trunk too. Defaults to
            `"auto"`: train it when the old run trained it from scratch (no
            pretrained backbone), keep a pretrained backbone frozen
            (`trunk_trains`). Untouched experts keep their own weights either
            way; a trained trunk learns under their loss on the replayed images.
        balance: bool. After training, subtract an offset from the logits of
            the new classes of grown experts and one from the gate's logits of
            new groups, chosen on the validation split by balanced accuracy
            (the offsets nearest 0 within one standard error of the best,
            `condnet.training.balance`), so that the new outputs
            answer as often as they should (with a small replay they take old
            images). Parts whose classifier has no bias are left as trained.
            Defaults to True.
        old_data: folder of the old run's training images, if it moved.
            Defaults to None: the folder its config.json names.
        overwrite: bool. Replace a run already in `out`.
        break_lock: bool. Remove a stale lock left in `out` by a dead process.
        verbose: Keras's `verbose` for `fit` (0: silent). Defaults to `"auto"`.

    Returns:
        dict with `"metrics"` (metrics.json, its `"extend"` section included),
        `"model"` and `"run_dir"`.

    Example:

    ```python
    result = extend("runs/shapes", "new_shapes", "runs/shapes-grown", epochs=5)
    result["metrics"]["extend"]["old_classes"]  # accuracy before and after
    ```
    """
    started, times = time.perf_counter(), RunTimes()
    run_dir, data_dir, out = Path(run_dir), Path(data_dir), Path(out)
    fit_kwargs = {"verbose": verbose}
    with times.part("scan and prepare"):
        keras.utils.set_random_seed(_loading_seed(run_dir, seed))  # the layers read back
        plan = _plan(run_dir, data_dir, out, hierarchy, old_data, overwrite)
        settings = _settings(plan["options"], epochs, replay, seed, validation_split, learning_rate)
        data = _data(plan, settings)
        keras.utils.set_random_seed(settings["seed"])  # new outputs' weights, fit's shuffles
        train_trunk = trunk_trains(train_trunk, plan["model"], plan["options"])
        model, parts = grow(plan["model"], plan["grown"], train_trunk=train_trunk)
    announce(_summary(plan, data, parts), fit_kwargs)
    with times.part("evaluation"):
        before = _accuracy(plan["model"], data["old_validation"])
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, break_lock=break_lock), RunClaim(out, overwrite) as claim:
        options = _run_options(plan, settings)
        _write_config(out, plan, settings, options, parts)
        state = _fit(model, out, options, settings, data, claim, fit_kwargs, times)
        shipped = _restored(out, parts["trainable"])
        with times.part("evaluation"):
            balanced = _balance(shipped, plan, data["validation"]) if balance else None
            ckpt.save_model_atomic(shipped, out / BEST)  # as trained (its routing too)
            shipped.routing = INFERENCE_ROUTING
            after = _accuracy(shipped, data["old_validation_grown"])
            new = _accuracy(shipped, data["new_validation"])
        section = _section(plan, settings, parts, data, (before, after, new), started)
        section["balance"] = balanced
        extra = {"metrics": {"extend": section}, "header": _header_lines(section)}
        data = (data["train"], data["validation"])
        return finish_run(out, options, data, state, None, None, fit_kwargs, times, extra)


# === What changes ===


def grown_hierarchy(old, found):
    """The old hierarchy with `found`'s new groups and classes added, and what is new.

    `found`: dict group -> classes, those of DATA_DIR. Old groups keep their
    order and their classes come first, so every old index stays where it
    was; new classes follow inside their group, new groups after the old ones.
    Returns `(grown, new_groups, new_classes)`, where `new_classes` maps each
    old group to the classes it gains.
    """
    nested = [g for g, classes in found.items() if isinstance(classes, dict)]
    if old.depth > 2 or nested:
        where = "the old run's" if old.depth > 2 else f"DATA_DIR's (groups {nested})"
        raise ValueError(
            f"extend grows two-level hierarchies (groups of classes); {where} has subgroups. "
            f"Train the deeper tree from scratch. Received: {found}"
        )
    moved = [
        f"{c!r} (in {old.group_of(c)!r}, now under {group!r})"
        for group, classes in found.items()
        for c in classes
        if c in old.classes and old.group_of(c) != group
    ]
    if moved:
        raise ValueError(
            f"A class cannot move between groups: {', '.join(moved)}. The old run's experts "
            "were trained on its groups; put each known class under its old group in DATA_DIR, "
            f"or train from scratch. Received: DATA_DIR groups {found}"
        )
    tree = {g: list(old.classes_of(g)) for g in old.groups}
    new_groups, new_classes = [], {}
    for group, classes in found.items():
        added = [c for c in classes if c not in old.classes]
        if group in tree and added:
            new_classes[group] = added
            tree[group] += added
        elif group not in tree:
            new_groups.append(group)
            tree[group] = list(classes)
    if not new_groups and not new_classes:
        every = ", ".join(c for classes in found.values() for c in classes)
        raise ValueError(
            f"DATA_DIR holds no new class: every class in it ({every}) is already in the run, "
            "in the same group. Add folders of new classes (a new group folder, or a new class "
            f"folder inside a group). Received: {found}"
        )
    try:
        return Hierarchy(tree), new_groups, new_classes
    except ValueError as error:
        raise ValueError(f"The grown hierarchy is not valid: {error}") from None


def scan_new(data_dir, hierarchy=None):
    """The images of DATA_DIR: `(found, paths, names)`, `found` mapping each group to the
    classes that have a folder there, `names` the class of each path.

    Nested folders (`root/<group>/<class>/*`) may hold a single group (`condnet train`
    needs two: here the old run has the others). A flat folder (`root/<class>/*`) needs
    `hierarchy` naming the group of each class folder (the grown tree, or any tree
    holding them); its classes without a folder are left out.
    """
    from condnet.data import scan

    skipped = {}
    with scan._naming_outside_links(data_dir, skipped):  # a folder of links is named as such
        root = scan._check_root(data_dir, skipped)
        if hierarchy is None:
            scan._refuse_flat_layout(root, skipped, scan.IMAGES)
            groups = scan._entries(root, root, skipped)[0]
            if not groups:
                raise ValueError(
                    f"DATA_DIR {str(data_dir)!r} holds no folder. Expected root/<group>/<class>/* "
                    f"(or root/<class>/* with --hierarchy). Received: DATA_DIR={str(data_dir)!r}"
                )
            found = {g.name: scan._read_node(g, root, skipped, scan.IMAGES, 1) for g in groups}
            places = {
                (g, c): root / g / c for g, cs in found.items() if isinstance(cs, list) for c in cs
            }
        else:
            tree = scan._as_hierarchy(hierarchy)
            present = {f.name for f in scan._entries(root, root, skipped)[0]}
            extra = sorted(present - set(tree.classes))
            if extra:
                raise ValueError(
                    f"{len(extra)} class folder(s) in {str(data_dir)!r} are in no group of the "
                    f"hierarchy: {extra[:10]}. Add them to the hierarchy file. Received: "
                    f"hierarchy={tree.to_dict()}"
                )
            found = {g: [c for c in tree.classes_of(g) if c in present] for g in tree.groups}
            found = {g: cs for g, cs in found.items() if cs}
            places = {(g, c): root / c for g, cs in found.items() for c in cs}
        paths, names = [], []
        for (_, name), folder in places.items():
            images = scan._class_files(folder, root, skipped, scan.IMAGES)
            paths += images
            names += [name] * len(images)
    scan._warn_skipped(root, skipped)
    return found, paths, np.asarray(names, dtype=object)


def trunk_trains(train_trunk, model, options):
    """Whether extend trains the trunk: `train_trunk` itself when a bool; for `"auto"`,
    when the old run trained its trunk from scratch (no pretrained backbone).

    A trunk learned from the old classes alone has no features made for the new ones.
    On CIFAR-10 with the trunk frozen, new classes came 9 points below a run from
    scratch when both groups gained a class, and 12 below when only animals gained
    horse; with it trained they came 2.8 and 2.7 points above, and the old classes
    gained too (benchmarks/RESULTS.md). An untouched expert does not hold the trunk
    back: it keeps its weights bit for bit, and its loss on the replayed images of its
    group keeps the trunk's features readable to it (on CIFAR-10 with vehicles
    untouched, old classes +2.6 points with the trunk trained, -0.3 with it frozen). A
    pretrained backbone stays frozen, as `condnet train` starts it.
    """
    if train_trunk not in ("auto", True, False):
        raise ValueError(
            f"train_trunk is 'auto', True or False. Received: train_trunk={train_trunk!r}"
        )
    if train_trunk != "auto":
        return train_trunk
    return model.trunk is not None and not _maybe_pretrained(options)


def _maybe_pretrained(options):
    """Whether the old run's trunk may have arrived trained; a backbone name that no
    longer resolves here (a moved preset folder, keras-hub missing) counts as one."""
    try:
        return is_pretrained(options.backbone, options.weights)
    except (TypeError, ValueError):
        return True


def grow(model, grown, train_trunk=False):
    """A ConditionalModel for `grown` made from `model`: every old weight copied, what
    did not change frozen.

    The trunk and every expert whose group gains no class are `model`'s own
    layers, frozen (the trunk trains with `train_trunk`); the gate and each
    growing expert are copies whose classifier has more outputs (old columns
    copied); a new group's expert copies an existing expert's layers with a
    fresh classifier. Returns `(model, parts)`: `parts` names the `trained`
    and `frozen` parts and holds `trainable`, the layers' trainable flags
    before freezing (restored in the shipped model).
    """
    old = model.hierarchy
    experts, taps = {}, {}
    for group in grown.groups:
        experts[group], taps[group] = _grown_expert(model, grown, group)
    gate_columns = [old.groups.index(g) if g in old.groups else None for g in grown.groups]
    config = {
        **model.get_config(),
        "hierarchy": grown,
        "gate": _regrown(model.gate, gate_columns, model.gate.name),
        "experts": experts,
        "trunk": model.trunk,
        "expert_taps": taps,
    }
    if config.get("preprocessor") is not None:  # the layer itself, not its config
        config["preprocessor"] = model.preprocessor
    grown_model = type(model)(**config)
    trainable = [layer.trainable for layer in grown_model._flatten_layers(include_self=True)]
    _freeze(grown_model, model, train_trunk)
    kept = [g for g in old.groups if experts[g] is not None and experts[g] is model.experts[g]]
    changed = [g for g in grown.groups if experts[g] is not None and g not in kept]
    has_trunk = model.trunk is not None
    return grown_model, {
        "trained": ["gate", *(f"expert {g}" for g in changed)]
        + (["trunk"] if has_trunk and train_trunk else []),
        "frozen": (["trunk"] if has_trunk and not train_trunk else [])
        + [f"expert {g}" for g in kept],
        "trainable": trainable,
    }


def _grown_expert(model, grown, group):
    """`(expert, tap)` of `group` in the grown model: the old expert itself when the
    group gains nothing, a grown copy when it gains classes, a copy of another
    expert's layers (fresh classifier) for a new group."""
    old = model.hierarchy
    classes = grown.classes_of(group)
    before = old.classes_of(group) if group in old.groups else []
    if classes == before:
        return model.experts[group], model.expert_taps[group]
    template = _template(model, group)
    if len(classes) == 1:  # a new single-class group needs no expert
        return None, model.expert_taps[template]
    source = model.experts.get(group)
    if source is None:  # a new group, or a single-class group that gains classes
        fresh = [None] * len(classes)
        copy = _regrown(model.experts[template], fresh, f"expert_{_safe(group)}")
        return copy, model.expert_taps[template]
    columns = [before.index(c) if c in before else None for c in classes]
    return _regrown(source, columns, source.name), model.expert_taps[group]


def _template(model, group):
    """The first group whose expert a new expert of `group` can copy."""
    for name, expert in model.experts.items():
        if expert is not None and not _is_conditional(expert):
            return name
    raise ValueError(
        f"Group {group!r} needs an expert, and the run has none to copy (every group has a "
        "single class). Train the grown hierarchy from scratch with `condnet train`."
    )


def _is_conditional(expert):
    return hasattr(expert, "hierarchy")


def _freeze(grown_model, model, train_trunk):
    for layer in grown_model._flatten_layers(include_self=True):
        layer.trainable = True  # layer by layer, as the staged phases do
    if grown_model.trunk is not None and not train_trunk:
        grown_model.trunk.trainable = False
    for group, expert in grown_model.experts.items():
        if expert is not None and expert is model.experts.get(group):
            expert.trainable = False


def _safe(name):
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)


# === Copying a part with a larger classifier ===


def _regrown(part, columns, name):
    """A copy of `part` (a gate or an expert) whose classifier has `len(columns)` outputs:
    output j takes the old output `columns[j]` (None: a fresh one); every other weight is
    copied."""
    config = keras.saving.serialize_keras_object(part)
    classifier = _last_dense(config)
    if classifier is None:
        raise ValueError(
            f"extend grows a part whose last layer is a Dense classifier; {part.name!r} has "
            f"none. Train the grown hierarchy from scratch. Received: {type(part).__name__}"
        )
    classifier["config"]["units"] = len(columns)
    config["config"]["name"] = name
    copy = keras.saving.deserialize_keras_object(config)
    _copy_weights(part, copy, columns)
    return copy


def _last_dense(config):
    """The config of the last Dense layer inside a serialized functional model."""
    found = None
    for layer in (config.get("config") or {}).get("layers", []):
        if layer.get("class_name") == "Dense":
            found = layer
        inner = _last_dense(layer) if isinstance(layer.get("config"), dict) else None
        found = inner or found
    return found


def _copy_weights(source, target, columns):
    """Copy `source`'s weights into `target` (same layers; its classifier, the last kernel
    and bias, has outputs `columns` of the old one, None for a fresh output)."""
    old, new = source.weights, target.weights
    if len(old) != len(new):
        raise ValueError(
            f"The grown copy of {source.name!r} has {len(new)} weights, not {len(old)}: its "
            "layers differ. Train the grown hierarchy from scratch."
        )
    for index, (value, variable) in enumerate(zip(old, new)):
        value = keras.ops.convert_to_numpy(value)
        if index >= len(old) - 2:  # the classifier's kernel and bias
            value = _grown_columns(value, keras.ops.convert_to_numpy(variable), columns)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"The grown copy of {source.name!r} has a weight of shape {variable.shape} "
                f"where the run's has {value.shape}. Train the grown hierarchy from scratch."
            )
        variable.assign(value)


def _grown_columns(old, fresh, columns):
    """The classifier weight (kernel or bias) of the grown part: column j is the old
    column `columns[j]`, or keeps its fresh initialisation for a new output."""
    grown = fresh.copy()
    for j, i in enumerate(columns):
        if i is not None:
            grown[..., j] = old[..., i]
    return grown


# === Reading the old run and the new data ===


def _plan(run_dir, data_dir, out, hierarchy, old_data, overwrite):
    """Everything read and checked before the disk is touched."""
    _check_folder(data_dir, "DATA_DIR", "the folder of the new classes")
    model, config = load_run(run_dir)
    refuse_text_run(run_dir, config, "extend")
    _refuse_ensemble(run_dir, model, config, "extend", "grows one conditional model")
    if config.get(EXTENDED) is not None:
        raise ValueError(
            f"{str(run_dir)!r} is itself an extended run (its validation split spans two "
            "folders). Extend the original run with every new class at once, or train the "
            f"whole tree from scratch. Received: run_dir={str(run_dir)!r}"
        )
    options = TrainingOptions.from_config(config["options"])
    old_dir = Path(old_data if old_data is not None else config["options"]["data_dir"]).resolve()
    if not old_dir.is_dir():
        raise ValueError(
            f"The old run trained on {str(old_dir)!r}, which is gone. extend replays a sample "
            "of those images (so the gate keeps routing the old groups) and scores the old "
            "classes on their validation split before and after; nothing was written. Restore "
            "the folder, or pass the same images where they are now with --old-data DIR. "
            f"Received: old data={str(old_dir)!r}"
        )
    found, paths, names = scan_new(data_dir.resolve(), hierarchy)  # absolute, as the old run's
    grown, new_groups, new_classes = grown_hierarchy(model.hierarchy, found)
    check_run_dir(out, data_dir)
    check_output(out, data=[data_dir, old_dir], reads=[run_dir], kind="run")
    held = [name for name in COMMITTED if (out / name).exists()]
    if held and not overwrite:
        raise ValueError(
            f"--out {str(out)!r} already holds a run ({', '.join(held)}). Pass --overwrite "
            "(overwrite=True) to replace it, or choose another --out."
        )
    return dict(
        run_dir=run_dir,
        data_dir=data_dir,
        old_dir=old_dir,
        model=model,
        options=options,
        grown=grown,
        new_groups=new_groups,
        new_classes=new_classes,
        found=(paths, names),
    )


def _loading_seed(run_dir, seed):
    """The seed set before the old model is read: Keras seeds the random layers it reads
    back (dropout) from the global random state, and they run while the trunk trains."""
    if seed is None:
        try:
            seed = json.loads((run_dir / CONFIG).read_text())["options"]["seed"]
        except (OSError, ValueError, TypeError, KeyError):
            seed = None
    valid = isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32
    return seed if valid else 0  # `_plan` and `_settings` then name what is wrong


def _check_folder(folder, flag, what):
    if not folder.is_dir():
        where = "is a file" if folder.exists() else "does not exist"
        raise ValueError(
            f"{flag} {str(folder)!r} {where}; pass {what}. Received: {flag}={str(folder)!r}"
        )


def _settings(options, epochs, replay, seed, validation_split, learning_rate):
    """extend's own settings, defaults taken from the old run's options."""
    given = dict(epochs=epochs, seed=seed, validation_split=validation_split)
    given["learning_rate"] = learning_rate
    checked = dataclasses.replace(
        options, **{k: v for k, v in given.items() if v is not None}
    )  # TrainingOptions checks each value
    if replay != "auto" and (not isinstance(replay, int) or isinstance(replay, bool) or replay < 1):
        raise ValueError(
            f"replay is 'auto' or the number of old images per old class (an int >= 1). "
            f"Received: replay={replay!r}"
        )
    if checked.validation_split == 0:
        raise ValueError(
            "extend scores the new classes on a share of DATA_DIR held out, and the old "
            "classes on the old run's validation split: the validation split must be above 0. "
            f"Received: validation_split={checked.validation_split!r}"
        )
    return dict(
        epochs=checked.epochs,
        seed=checked.seed,
        validation_split=checked.validation_split,
        learning_rate=checked.learning_rate,
        replay=replay,
    )


def _data(plan, settings):
    """The training images (new ones and the replay sample) and the validation images
    (the old run's validation split and the held-out new ones), labelled in the grown
    hierarchy, plus the old validation split in the old hierarchy (the score before)."""
    from condnet.runs.run_data import check_split, load_data

    options, grown = plan["options"], plan["grown"]
    old_train, old_validation = load_data(options, plan["old_dir"])
    if old_validation is None:
        raise ValueError(
            f"The run {str(plan['run_dir'])!r} has no validation split (validation_split=0), "
            "so its old classes cannot be scored before and after on images it never "
            "trained on. Train the run with --validation-split 0.2 (or more) first."
        )
    check_split(plan["run_dir"], plan["old_dir"], old_train, old_validation)
    paths, names = plan["found"]
    labels = grown.encode(list(names))
    train_rows, validation_rows = split_indices(
        labels, settings["validation_split"], settings["seed"]
    )
    new = np.isin(names, [c for c in grown.classes if c not in plan["model"].hierarchy.classes])
    per_class = _replay_count(settings["replay"], names[train_rows][new[train_rows]])
    replayed = _replay_rows(old_train.labels, per_class, settings["seed"])
    old_classes = np.asarray(plan["model"].hierarchy.classes)
    train_paths = [old_train.paths[r] for r in replayed] + [paths[r] for r in train_rows]
    train_names = [*old_classes[old_train.labels[replayed]], *names[train_rows]]
    common = _folder_options(options)
    new_validation = [(paths[r], names[r]) for r in validation_rows if new[r]]
    old_validation_named = [
        (p, old_classes[label]) for p, label in zip(old_validation.paths, old_validation.labels)
    ]
    extra_validation = [(paths[r], names[r]) for r in validation_rows if not new[r]]

    def folder(rows, **kwargs):
        return ImageFolder(
            [p for p, _ in rows], grown.encode([n for _, n in rows]), grown, **common, **kwargs
        )

    return dict(
        train=ImageFolder(
            train_paths,
            grown.encode(train_names),
            grown,
            shuffle=True,
            seed=settings["seed"],
            dtype="uint8",
            **common,
        ),
        validation=folder(old_validation_named + extra_validation + new_validation),
        old_validation=ImageFolder(
            old_validation.paths,
            old_validation.labels,
            plan["model"].hierarchy,
            substitute_unreadable=False,
            **common,
        ),
        old_validation_grown=folder(old_validation_named, substitute_unreadable=False),
        new_validation=folder(new_validation, substitute_unreadable=False),
        replay_per_class=per_class,
        num_new_training=int(new[train_rows].sum()),
    )


def _folder_options(options):
    return dict(
        image_size=options.image_size,
        batch_size=options.batch_size,
        color_mode=options.color_mode,
        cache=options.cache,
        cache_dir=options.cache_dir,
    )


def _replay_count(replay, new_names):
    """Old images per old class: `replay`, or the new classes' mean (at least 1)."""
    if replay != "auto":
        return replay
    counts = np.unique(new_names, return_counts=True)[1]
    return max(1, math.ceil(float(np.mean(counts)))) if len(counts) else 1


def _replay_rows(labels, per_class, seed):
    """Up to `per_class` rows of every class of `labels`, drawn with `seed`, sorted."""
    rng = np.random.default_rng(seed)
    rows = [
        rng.permutation(np.flatnonzero(labels == label))[:per_class] for label in np.unique(labels)
    ]
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, "int64")


def _summary(plan, data, parts):
    grown, found = plan["grown"], []
    found += [f"new group {g} ({', '.join(grown.classes_of(g))})" for g in plan["new_groups"]]
    found += [f"{', '.join(c)} in {g}" for g, c in plan["new_classes"].items()]
    return (
        f"Extending {plan['run_dir']} with {'; '.join(found)}: training on "
        f"{data['num_new_training']} new images and {data['replay_per_class']} replayed per old "
        f"class ({data['train'].num_samples} in all), validating on "
        f"{data['validation'].num_samples}. Training {', '.join(parts['trained'])}"
        + (f"; frozen: {', '.join(parts['frozen'])}." if parts["frozen"] else ".")
    )


# === Training and writing the run ===


def _run_options(plan, settings):
    """The new run's options: the old run's, with extend's settings and the grown tree;
    no flat baseline (it would be a run from scratch)."""
    return dataclasses.replace(
        plan["options"],
        hierarchy=plan["grown"].to_dict(),
        epochs=settings["epochs"],
        seed=settings["seed"],
        validation_split=settings["validation_split"],
        learning_rate=settings["learning_rate"],
        strategy="joint",
        fine_tune_epochs=0,
        upcycle_epochs=0,
        baseline=False,
        split=None,
    )


def _write_config(out, plan, settings, options, parts):
    from condnet import __version__

    config = {
        "options": {"data_dir": str(plan["data_dir"].resolve()), **options.to_config()},
        "hierarchy": plan["grown"].to_dict(),
        EXTENDED: {
            "run": str(plan["run_dir"].resolve()),
            "old_data_dir": str(plan["old_dir"].resolve()),
            "new_groups": plan["new_groups"],
            "new_classes": plan["new_classes"],
            "replay": settings["replay"],
            "trained": parts["trained"],
            "frozen": parts["frozen"],
        },
        "versions": {"condnet": __version__, "keras": keras.__version__},
    }
    ckpt.write_atomic(out / CONFIG, json.dumps(config, indent=1))
    plan["grown"].save(out / HIERARCHY)


def _fit(model, out, options, settings, data, claim, fit_kwargs, times):
    from condnet.runs.phases import fit_arguments, stopping_callbacks

    model.routing = options.routing  # model.keras ships hard-routed; train as the run did
    model.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]), **compile_options())
    checkpoint = ckpt.RunCheckpoint(out, 0, on_commit=claim.commit)
    stage = (settings["epochs"], settings["learning_rate"], 0)
    stopping = stopping_callbacks(options, data["validation"], stage, "Extend: ", fit_kwargs)
    folders = (data["train"], data["validation"])
    with times.part("fit frozen features"):  # the frozen trunk's pass, once, when it pays
        inputs, epoch_ends = fit_arguments(model, options, folders, fit_kwargs)
    with times.part("fit extend"):
        model.fit(  # as the recipe feeds it: its input pipeline, or the features
            epochs=settings["epochs"],
            callbacks=[StopOnNaN(), *epoch_ends, checkpoint, *stopping],
            **{**inputs, **fit_kwargs},
        )
    times.move(checkpoint.seconds, "fit extend", "checkpoints")  # as train's timing splits it
    if checkpoint.refused is not None:
        epoch, problem = checkpoint.refused
        raise RuntimeError(
            f"Epoch {epoch} of extend ended with {problem}; nothing of it was kept. Extend "
            f"again with a lower --learning-rate (now {settings['learning_rate']:g})."
        )
    checkpoint.end_phase()
    return ckpt.read_state(out)


def _balance(model, plan, validation):
    """Offsets for the new outputs of `model`, chosen on `validation` and written into the
    biases of the gate (new groups) and of the grown experts (their new classes).
    Returns what metrics.json records."""
    old, grown = plan["model"].hierarchy, plan["grown"]
    grown_experts = [
        g
        for g in old.groups
        if model.experts.get(g) is not None
        and not _is_conditional(model.experts[g])
        and balancing.has_output_bias(model.experts[g], len(grown.classes_of(g)))
        and any(c not in old.classes for c in grown.classes_of(g))
    ]
    new_groups = np.array([g not in old.groups for g in grown.groups])
    new_groups &= balancing.has_output_bias(model.gate, grown.num_groups)
    new_classes = np.array(
        [c not in old.classes and grown.group_of(c) in grown_experts for c in grown.classes]
    )
    if not (new_groups.any() or new_classes.any()):
        return None
    groups, experts, labels, _ = dense_outputs_of(model, validation)
    (group_offset, class_offset), scores = balancing.choose_offsets(
        groups, experts, labels, grown, new_groups, new_classes
    )
    if group_offset:
        balancing.shift_bias(model.gate, np.flatnonzero(new_groups), group_offset)
    for group in grown_experts if class_offset else []:
        columns = [i for i, c in enumerate(grown.classes_of(group)) if c not in old.classes]
        balancing.shift_bias(model.experts[group], columns, class_offset)
    return {
        "new_group_offset": group_offset,
        "new_class_offset": class_offset,
        "balanced_accuracy_without": scores["without"],
        "balanced_accuracy_with": scores["with"],
        "balanced_accuracy_best": scores["best"],
        "standard_error": scores["standard_error"],
        "chosen_on": f"the validation split ({validation.num_samples} images), hard-routed; "
        "the offsets nearest 0 within one standard error of the best",
    }


def _restored(out, trainable):
    """model.keras (the best epoch's weights) with its parts' trainable flags as the old
    run shipped them, before extend froze them."""
    model = keras.models.load_model(out / BEST, compile=False)
    layers = list(model._flatten_layers(include_self=True))
    for layer, flag in zip(layers, trainable if len(trainable) == len(layers) else []):
        layer.trainable = flag
    return model


def _accuracy(model, data):
    """Hard-routed accuracy on `data` (None when it holds no image), and its size."""
    if data.num_samples == 0:
        return {"accuracy": None, "num_samples": 0}
    routing = model.routing
    model.routing = INFERENCE_ROUTING
    try:
        metrics = evaluate_model(model, data)
    finally:
        model.routing = routing
    return {"accuracy": metrics["accuracy"], "num_samples": metrics["num_samples"]}


def _section(plan, settings, parts, data, scores, started):
    before, after, new = scores
    change = None
    if before["accuracy"] is not None and after["accuracy"] is not None:
        change = after["accuracy"] - before["accuracy"]
    return {
        "from_run": str(plan["run_dir"]),
        "new_groups": plan["new_groups"],
        "new_classes": plan["new_classes"],
        "trained": parts["trained"],
        "frozen": parts["frozen"],
        "replay_per_class": data["replay_per_class"],
        "epochs": settings["epochs"],
        "old_classes": {
            "accuracy_before": before["accuracy"],
            "accuracy_after": after["accuracy"],
            "change": change,
            "num_samples": before["num_samples"],
            "scored_on": "the old run's validation split, hard-routed",
        },
        "new_classes_scores": {
            "accuracy": new["accuracy"],
            "num_samples": new["num_samples"],
            "scored_on": "the validation share of DATA_DIR, hard-routed",
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def _header_lines(section):
    old = section["old_classes"]
    shown = "n/a" if old["change"] is None else f"{old['change']:+.4f}"
    new = section["new_classes_scores"]["accuracy"]
    return {
        "extended from": f"{section['from_run']} (trained: {', '.join(section['trained'])}; "
        f"frozen: {', '.join(section['frozen']) or 'nothing'})",
        "old classes": f"{_shown(old['accuracy_before'])} before, "
        f"{_shown(old['accuracy_after'])} after ({shown})",
        "new classes": _shown(new),
    }


def _shown(value):
    return "n/a" if value is None else f"{value:.4f}"

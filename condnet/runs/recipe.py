"""The training recipe: from a folder of images to a trained, checkpointed, reported run."""

import json
import platform
import shutil
from pathlib import Path

import keras
import numpy as np

from condnet.data.folders import ImageFolder, load_folders, scan_directory
from condnet.evaluation.discovery import check_num_groups, discover_from_folder
from condnet.models.routing import check_routing
from condnet.runs import checkpoint as ckpt
from condnet.training.callbacks import LossWeightSchedule, StopOnNaN
from condnet.training.staged import STRATEGIES, plan_phases, prepare_phase, set_phase_trainable
from condnet.vision.image_model import backbone_of, build_image_model, resolve_placement

SCHEDULES = (None, "coarse_to_fine")
CONFIG = "config.json"
DISCOVERED = "hierarchy.discovered.json"
RUN_FILES = (
    CONFIG,
    "hierarchy.json",
    DISCOVERED,
    ckpt.STATE,
    ckpt.BEST,
    ckpt.HISTORY,
    "metrics.json",
    "report.md",
    "report.html",
    ckpt.CHECKPOINTS,
    "logs",
)


def train(
    data_dir,
    run_dir,
    hierarchy=None,
    routing="soft",
    strategy="joint",
    backbone="small_cnn",
    weights=None,
    image_size=64,
    epochs=10,
    batch_size=32,
    validation_split=0.2,
    seed=1337,
    learning_rate=1e-3,
    expert_placement="auto",
    augment=True,
    filters=(32, 64, 128, 256),
    fine_tune_epochs=0,
    fine_tune_layers=20,
    fine_tune_learning_rate=1e-5,
    loss_schedule=None,
    patience=5,
    tensorboard=False,
    color_mode="rgb",
    discovery_groups=2,
    split=None,
    resume=False,
    overwrite=False,
    callbacks=None,
    **fit_kwargs,
):
    """Train a conditional image classifier on a folder and write a run directory.

    The run directory receives `config.json` (every option, to reproduce
    the run), `hierarchy.json`, `model.keras` (the best epoch by validation
    accuracy), `history.csv`, `metrics.json`, `report.md` / `report.html`
    with plots, and `checkpoints/` + `state.json` for `resume=True`.

    The recipe: EarlyStopping on the validation loss (restoring the best
    weights), ReduceLROnPlateau, a crash-safe checkpoint every epoch, an
    optional TensorBoard log and loss-weight schedule. A pretrained backbone
    (`weights`) stays frozen while gate and experts train; `fine_tune_epochs`
    then unfreezes its top `fine_tune_layers` layers (BatchNormalization stays
    frozen) at `fine_tune_learning_rate`. The `staged` strategy trains the gate
    (expert losses off), then the experts (trunk and gate frozen, each expert
    trained by its own group's rows through the masked expert loss), then
    everything jointly.

    `resume=True` continues a run from its last completed epoch, optimizer
    state included, with the options saved in its `config.json`.

    Args:
        data_dir: folder of images, `root/<group>/<class>/*` or
            `root/<class>/*` with `hierarchy`.
        run_dir: output folder.
        hierarchy: `Hierarchy`, dict or path to a JSON/YAML file, for flat folders;
            or `"auto"` to discover `discovery_groups` groups from a flat folder
            (see `discover_for_run`).
        routing, strategy, backbone, weights, image_size, epochs, batch_size,
        validation_split, seed, learning_rate, expert_placement, augment,
        filters, fine_tune_epochs, fine_tune_layers, fine_tune_learning_rate,
        loss_schedule, patience, tensorboard, color_mode: the recipe's options
            (see `condnet train --help`).
        discovery_groups: int. Number of groups `hierarchy="auto"` discovers.
        split: optional pair `(train_indices, validation_indices)` of rows of
            `scan_directory(data_dir, hierarchy)`, used instead of
            `validation_split` (one fold of `cross_validate`); saved in
            `config.json`, so the run reproduces.
        resume: bool. Continue the run in `run_dir`.
        overwrite: bool. Replace a run already in `run_dir`.
        callbacks: extra Keras callbacks.
        **fit_kwargs: passed to every `model.fit` call.

    Returns:
        dict with `"metrics"` (see `condnet.evaluation.metrics.evaluate_predictions`),
        `"model"` (the best model) and `"run_dir"`.
    """
    options = {k: v for k, v in locals().items() if k not in _NOT_OPTIONS}
    run_dir = Path(run_dir)
    if resume:
        options, state = _resume_options(run_dir), _resume_state(run_dir)
    else:
        _check_options(options)
        _claim_run_dir(run_dir, overwrite)
        state = None
        if options["hierarchy"] == "auto":
            options["hierarchy"] = discover_for_run(options, run_dir, fit_kwargs)
    train_data, validation = load_data(options)
    hierarchy = train_data.hierarchy
    if state is None:
        model = _build(options, hierarchy, train_data.channels)
        _write_config(run_dir, options, hierarchy)
    else:
        model = keras.models.load_model(run_dir / ckpt.CHECKPOINTS / state["checkpoint"])
    state = _run_phases(
        model, run_dir, options, state, train_data, validation, list(callbacks or []), fit_kwargs
    )
    return finish_run(run_dir, hierarchy, validation or train_data, state)


_NOT_OPTIONS = ("resume", "overwrite", "callbacks", "fit_kwargs")


def finish_run(run_dir, hierarchy, data, state):
    """Evaluate the best model on `data` and write metrics and the report."""
    from condnet.evaluation.evaluate import evaluate_model
    from condnet.evaluation.report import write_report

    model = keras.models.load_model(Path(run_dir) / ckpt.BEST)
    metrics = evaluate_model(model, data)
    ckpt.write_atomic(Path(run_dir) / "metrics.json", json.dumps(metrics, indent=1))
    history = _history_columns(state["history"] if state else [])
    write_report(
        run_dir, hierarchy, metrics, history=history, title=f"condnet run {Path(run_dir).name}"
    )
    return {"metrics": metrics, "model": model, "run_dir": str(run_dir)}


# === Phases ===


def _run_phases(model, run_dir, options, state, train_data, validation, callbacks, fit_kwargs):
    phases = plan_phases(
        options["strategy"],
        options["epochs"],
        options["fine_tune_epochs"],
        options["learning_rate"],
        options["fine_tune_learning_rate"],
    )
    start = 0
    for index, phase in enumerate(phases):
        end = start + phase.epochs
        if not _phase_done(state, index, end):
            resuming = state is not None and index == state["phase"]
            if not resuming:
                _prepare_phase(model, phase, options)
            else:
                _set_trainable(model, phase, options)  # the checkpoint restored the optimizer
            initial = state["epoch"] if resuming else start
            state = _fit_phase(
                model,
                run_dir,
                options,
                state,
                (index, phase),
                (initial, end),
                (train_data, validation),
                callbacks,
                fit_kwargs,
            )
        start = end
    return state


def _phase_done(state, index, end):
    """Whether a resumed run already finished phase `index` (ending at epoch `end`)."""
    if state is None or index > state["phase"]:
        return False
    return index < state["phase"] or state["phase_done"] or state["epoch"] >= end


def _fit_phase(model, run_dir, options, state, indexed_phase, epochs, data, callbacks, fit_kwargs):
    """Fit one phase from epoch `initial` to `end`; return the committed state."""
    (index, phase), (initial, end), (train_data, validation) = indexed_phase, epochs, data
    checkpoint = ckpt.RunCheckpoint(run_dir, index, state=state)
    guard = StopOnNaN()
    recipe = _recipe_callbacks(run_dir, options, phase, validation, end - phase.epochs)
    model.fit(
        train_data,
        validation_data=validation,
        initial_epoch=initial,
        epochs=end,
        callbacks=[guard, checkpoint, *recipe, *callbacks],
        **fit_kwargs,
    )
    checkpoint.end_phase()
    state = ckpt.read_state(run_dir)
    if state is None or guard.stopped_at is not None:
        raise RuntimeError(
            f"Training stopped on a NaN loss in phase {phase.name!r} (see the "
            f"warning above); completed epochs are saved in {str(run_dir)!r}. Lower "
            "the learning rate, then --resume or start again with --overwrite."
        )
    return state


def _trainable_options(model, options):
    return dict(
        backbone=backbone_of(model),
        freeze_backbone=options["weights"] is not None,
        fine_tune_layers=options["fine_tune_layers"],
    )


def _prepare_phase(model, phase, options):
    prepare_phase(model, phase, **_trainable_options(model, options))


def _set_trainable(model, phase, options):
    set_phase_trainable(model, phase, **_trainable_options(model, options))


def _recipe_callbacks(run_dir, options, phase, validation, first_epoch):
    monitor = "val_loss" if validation is not None else "loss"
    patience = options["patience"]
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor=monitor, patience=patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=0.5, patience=max(1, patience // 2), min_lr=1e-6
        ),
    ]
    if options["tensorboard"]:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(Path(run_dir) / "logs")))
    if options["loss_schedule"] == "coarse_to_fine" and phase.name == "joint":
        callbacks.append(LossWeightSchedule.coarse_to_fine(phase.epochs, start_epoch=first_epoch))
    return callbacks


# === Run directory ===


def _claim_run_dir(run_dir, overwrite):
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not overwrite:
        raise ValueError(
            f"The run directory {str(run_dir)!r} already holds a run ({', '.join(existing)}). "
            "Pass --overwrite to replace it, --resume to continue it, or choose another --out."
        )
    for name in existing:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def _resume_state(run_dir):
    state = ckpt.read_state(run_dir)
    if state is None:
        raise ValueError(
            f"There is no run to resume in {str(run_dir)!r}: it has no {ckpt.STATE} (no "
            "epoch was completed there). Start a new run without --resume."
        )
    if not (run_dir / ckpt.CHECKPOINTS / state["checkpoint"]).is_file():
        raise ValueError(
            f"The run in {str(run_dir)!r} cannot resume: its checkpoint "
            f"{state['checkpoint']!r} is missing. Start a new run with --overwrite."
        )
    return state


def _resume_options(run_dir):
    path = run_dir / CONFIG
    if not path.is_file():
        raise ValueError(
            f"There is no run to resume in {str(run_dir)!r}: {CONFIG} is missing. Start a "
            "new run without --resume."
        )
    return json.loads(path.read_text())["options"]


def _write_config(run_dir, options, hierarchy):
    from condnet import __version__

    config = {
        "options": options,
        "hierarchy": hierarchy.to_dict(),
        "versions": {
            "condnet": __version__,
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "python": platform.python_version(),
        },
    }
    ckpt.write_atomic(run_dir / CONFIG, json.dumps(config, indent=1, default=str))
    hierarchy.save(run_dir / "hierarchy.json")


# === Data and model ===


def load_data(options):
    """Training and validation ImageFolders of a run's options (its split, share and seed)."""
    hierarchy = options["hierarchy"]
    if options.get("split") is not None:
        return _load_split(options)
    return load_folders(
        options["data_dir"],
        hierarchy=hierarchy,
        image_size=options["image_size"],
        batch_size=options["batch_size"],
        validation_split=options["validation_split"],
        seed=options["seed"],
        color_mode=options["color_mode"],
    )


def _build(options, hierarchy, channels):
    keras.utils.set_random_seed(options["seed"])
    augmentation = None
    if options["augment"]:
        from condnet.vision.augmentation import make_augmentation

        augmentation = make_augmentation(seed=options["seed"])
    return build_image_model(
        hierarchy,
        backbone=options["backbone"],
        image_size=options["image_size"],
        channels=channels,
        weights=options["weights"],
        expert_placement=options["expert_placement"],
        augmentation=augmentation,
        routing=options["routing"],
        filters=tuple(options["filters"]),
        seed=options["seed"],
    )


def _check_options(options):
    check_routing(options["routing"])
    _check_choice("strategy", options["strategy"], STRATEGIES)
    resolve_placement(options["expert_placement"], options["backbone"])
    _check_choice("loss_schedule", options["loss_schedule"], SCHEDULES)
    for name in ("epochs", "batch_size", "patience"):
        if not isinstance(options[name], int) or options[name] < 1:
            raise ValueError(f"{name} must be an int >= 1. Received: {name}={options[name]!r}")
    if not isinstance(options["fine_tune_epochs"], int) or options["fine_tune_epochs"] < 0:
        raise ValueError(
            f"fine_tune_epochs must be an int >= 0. Received: {options['fine_tune_epochs']!r}"
        )
    for name in ("learning_rate", "fine_tune_learning_rate"):
        if not options[name] > 0:
            raise ValueError(f"{name} must be > 0. Received: {name}={options[name]!r}")
    if isinstance(options["hierarchy"], str | Path):
        options["hierarchy"] = str(options["hierarchy"])
    elif options["hierarchy"] is not None and not isinstance(options["hierarchy"], dict):
        options["hierarchy"] = options["hierarchy"].to_dict()
    options["data_dir"] = str(options["data_dir"])
    options["run_dir"] = str(options["run_dir"])
    _check_discovery_and_split(options)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}. Received: {name}={value!r}")


def _history_columns(history):
    columns = {}
    for row in history:
        for key, value in row.items():
            if key not in ("epoch", "phase"):
                columns.setdefault(key, []).append(value)
    return columns


# === Discovered hierarchy and explicit split ===


def discover_for_run(options, run_dir, fit_kwargs):
    """`hierarchy="auto"`: discover the groups of a flat folder for this run.

    A flat classifier trains on the run's data with the run's image size,
    epochs, batch size, filters, seed and validation share (0.2 when the run
    has none); its validation confusions are clustered into
    `discovery_groups` groups (`condnet.evaluation.discovery`). The hierarchy is written
    to `RUN_DIR/hierarchy.discovered.json` to edit and reuse with
    `--hierarchy FILE`; its dict replaces "auto" in the run's options, so
    `resume` keeps it. Only that grouping carries over to the run; since it
    reorders the classes, the run's validation rows (same share and seed)
    need not be the ones discovery held out.
    """
    hierarchy, _ = discover_from_folder(
        options["data_dir"],
        num_groups=options["discovery_groups"],
        image_size=options["image_size"],
        epochs=options["epochs"],
        validation_split=options["validation_split"] or 0.2,
        seed=options["seed"],
        batch_size=options["batch_size"],
        filters=tuple(options["filters"]),
        learning_rate=options["learning_rate"],
        color_mode=options["color_mode"],
        **fit_kwargs,
    )
    hierarchy.save(Path(run_dir) / DISCOVERED)
    return hierarchy.to_dict()


def _load_split(options):
    """Training and validation ImageFolders on the rows `options["split"]` names."""
    hierarchy, paths, labels = scan_directory(options["data_dir"], options["hierarchy"])
    train_rows, validation_rows = (list(rows) for rows in options["split"])
    outside = [row for row in train_rows + validation_rows if row >= len(paths)]
    if outside:
        raise ValueError(
            f"split names rows up to {max(outside)}, but {options['data_dir']!r} holds "
            f"{len(paths)} images. The indices refer to scan_directory(data_dir, "
            "hierarchy); the folder has changed since they were drawn."
        )
    common = dict(
        image_size=options["image_size"],
        batch_size=options["batch_size"],
        color_mode=options["color_mode"],
    )

    def folder(rows, **kwargs):
        return ImageFolder([paths[r] for r in rows], labels[rows], hierarchy, **common, **kwargs)

    train = folder(train_rows, shuffle=True, seed=options["seed"])
    return train, folder(validation_rows) if validation_rows else None


def _check_discovery_and_split(options):
    check_num_groups(options["discovery_groups"])
    split = options["split"]
    if split is None:
        return
    if options["hierarchy"] == "auto":
        raise ValueError(
            "split indices refer to the rows of a known hierarchy, so they cannot be "
            "combined with hierarchy='auto'. Discover the hierarchy first "
            "(condnet.evaluation.discovery.discover_from_folder), save it, and pass its file. "
            "Received: hierarchy='auto' with split"
        )
    if not isinstance(split, list | tuple) or len(split) != 2:
        raise TypeError(
            "split must be a pair (train_indices, validation_indices). Received: "
            f"{type(split).__name__} {split!r:.100}"
        )
    rows = [[_row(value) for value in part] for part in split]
    if not rows[0] or set(rows[0]) & set(rows[1]):
        raise ValueError(
            "split needs at least one training row and no row in both parts. Received: "
            f"{len(rows[0])} training rows, {len(set(rows[0]) & set(rows[1]))} shared"
        )
    options["split"] = rows


def _row(value):
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
        raise TypeError(f"split indices must be ints >= 0. Received: {value!r}")
    return int(value)

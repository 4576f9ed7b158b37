"""The training recipe: from a folder of images to a trained, checkpointed, reported run."""

import contextlib
import dataclasses
import difflib
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

import keras
import numpy as np

from condnet.choices import HUB_TEXT_TRUNK
from condnet.data.folders import ImageFolder, load_folders, scan_directory, split_indices
from condnet.data.text import (
    TextFolder,
    count_files,
    make_vectorizer,
    read_documents,
    scan_documents,
    warn_fallbacks,
)
from condnet.evaluation.discovery import (
    check_discovery_installed,
    check_num_groups,
    discover_from_folder,
    flat_class_names,
)
from condnet.hierarchy import Hierarchy
from condnet.models.precision import precision_scope, resolve_precision
from condnet.runs import checkpoint as ckpt
from condnet.runs.claim import (
    RunClaim,
    check_run_dir,
    clean_temporary_files,
    replaced_asides,
    restore_replaced,
)
from condnet.runs.files import CHECKPOINTS, CONFIG, DISCOVERED, HIERARCHY, SPLIT, STATE
from condnet.runs.finish import announce as _announce
from condnet.runs.finish import finish_run, fit_flat, model_input_shape, noun_of
from condnet.runs.lock import run_lock
from condnet.runs.options import TrainingOptions, label, normalised
from condnet.runs.run_dir import read_state as checked_state
from condnet.runs.run_dir import refuse_extended
from condnet.runs.timing import RunTimes
from condnet.text.hub_text_model import build_hub_text_model, hub_tokenizer
from condnet.text.text_model import build_text_model
from condnet.training import distribute
from condnet.training.callbacks import (
    SMOOTHING_EPOCHS,
    EarlyStop,
    LossWeightSchedule,
    SmoothedMetric,
    StopOnNaN,
    checkpoint_monitor,
    cosine_learning_rate,
    small_validation,
)
from condnet.training.features import features_fit, frozen_features
from condnet.training.staged import plan_phases, prepare_phase, set_phase_trainable
from condnet.training.upcycle import upcycle, upcycle_source
from condnet.vision.backbones import is_pretrained
from condnet.vision.image_model import (
    backbone_of,
    build_image_model,
    resolve_head_units,
    resolve_placement,
)

# model.fit arguments a caller may pass through; the recipe sets the others itself.
FIT_KEYWORDS = tuple(
    name
    for name in inspect.signature(keras.Model.fit).parameters
    if name
    not in ("self", "x", "y", "batch_size", "epochs", "callbacks", "validation_split")
    + ("validation_data", "initial_epoch")
)
IMAGE_LEARNING_RATE = 1e-3
TEXT_LEARNING_RATE = 1e-2
# Options a resume may change: more epochs, other learning rates (after a NaN), and the
# callbacks' settings. Any other difference would make the run a different one.
RESUME_CHANGES = (
    "epochs",
    "learning_rate",
    "fine_tune_learning_rate",
    "patience",
    "tensorboard",
    "report",  # a run trained without its report (a tune trial) can have it written
    "distribute",  # the devices may differ from those the run started on
    "cache",  # where decoded images are kept changes no result
    "cache_dir",
)


def train(
    data_dir,
    run_dir,
    options=None,
    *,
    overwrite=False,
    break_lock=False,
    callbacks=None,
    **fields_and_fit_kwargs,
):
    """Train a conditional classifier on a folder of images or documents and write a run
    directory.

    The run directory receives `config.json` (every option, to reproduce
    the run), `hierarchy.json`, `model.keras` (the best epoch by validation
    accuracy), `history.csv`, `metrics.json`, `report.md` / `report.html`
    with plots, and `checkpoints/` + `state.json` for `resume`.

    The recipe: EarlyStopping on the validation accuracy (the metric that
    also picks model.keras; the best weights are restored), a learning rate
    that decays along a cosine over each phase (`lr_schedule`), a
    crash-safe checkpoint every epoch, an optional TensorBoard log and
    loss-weight schedule. At the end, model.keras is set to hard
    routing (only the chosen expert runs at inference) and scored so, with
    the soft mixture beside it, and the flat baseline (`baseline`) trains on
    the same split and is compared in metrics.json and the report. A pretrained backbone
    (`weights`) stays frozen while gate and experts train; `fine_tune_epochs`
    then unfreezes its top `fine_tune_layers` layers (BatchNormalization stays
    frozen) at `fine_tune_learning_rate`. The `staged` strategy trains the gate
    (expert losses off), then the experts (trunk and gate frozen, each expert
    trained by its own group's rows through the masked expert loss), then
    everything jointly. `upcycle_epochs` first trains a flat model (the
    trunk and one expert's head over every class) and starts every expert as
    a copy of it (`condnet.training.upcycle`); the flat baseline then trains
    as many epochs more.

    A folder of documents (`modality="text"`, which `"auto"` picks when most
    of its files are text; see `resolve_modality`) trains `build_text_model`
    with `text_trunk`, `sequence_length` and `vocabulary_size`: its
    `TextVectorization` is adapted on the training split only and saved
    inside model.keras, which then predicts from strings. The options of
    image runs are refused there.

    Nothing is lost: the options, `data_dir`, a hierarchy file and the model
    are checked before anything is written; the run directory is then locked
    (`run_lock`). A directory holding a committed run is refused unless
    `overwrite`; its files are moved aside and deleted only once the new run
    has committed its first epoch, and put back if it fails before. An epoch
    with a non-finite loss or weights is never saved.

    Args:
        data_dir: folder of images or documents, `root/<group>/<class>/*`, or
            `root/<class>/*` with a `hierarchy`.
        run_dir: output folder (not inside `data_dir`, nor containing it).
        options: `TrainingOptions`. Defaults to `TrainingOptions()`.
        overwrite: bool. Replace a run already in `run_dir`.
        break_lock: bool. Remove a stale lock left by a dead process.
        callbacks: extra Keras callbacks.
        **fields_and_fit_kwargs: `TrainingOptions` fields (they replace those of
            `options`, e.g. `epochs=5`), then arguments of `model.fit` (e.g.
            `verbose=0`), passed to every `fit` call. `hierarchy` may be a
            `Hierarchy`, a dict, the path of a JSON/YAML file, or `"auto"` to
            discover `discovery_groups` groups from a flat folder (see
            `discover_for_run`). `split` is an optional pair
            `(train_indices, validation_indices)` of rows of
            `scan_directory(data_dir, hierarchy)`, used instead of
            `validation_split` (one fold of `cross_validate`).

    Returns:
        dict with `"metrics"` (see `condnet.evaluation.metrics.evaluate_predictions`),
        `"model"` (the best model) and `"run_dir"`.

    Example:

    ```python
    result = condnet.train("demo/data/train", "runs/shapes", image_size=48, epochs=5)
    ```
    """
    if "resume" in fields_and_fit_kwargs:
        raise TypeError(
            "train() starts runs; continue one with condnet.runs.recipe.resume(run_dir, ...) "
            "(`condnet train ... --resume`). Received: resume="
            f"{fields_and_fit_kwargs['resume']!r}"
        )
    options, fit_kwargs = _options_and_fit_kwargs(options, fields_and_fit_kwargs)
    _check_inputs(options, data_dir)
    data_dir, run_dir = Path(data_dir).resolve(), Path(run_dir)
    check_run_dir(run_dir, data_dir)
    times = RunTimes()
    with times.part("scan and prepare"):
        options = resolve_modality(options, data_dir)
        options = _resolve_image_size(options, data_dir)
    job = distribute.Job(options.distribute, options.batch_size)
    flags = (overwrite, break_lock, times)
    return _start(options, data_dir, run_dir, flags, callbacks, fit_kwargs, job)


def _check_inputs(options, data_dir):
    """What `train` reads must be there before it sizes images or writes anything: the
    image folder, and scikit-learn for `hierarchy="auto"`."""
    given = str(data_dir)
    if not Path(data_dir).exists():
        raise ValueError(
            f"The image folder does not exist: {given!r}. Pass the folder of your images, laid "
            "out as DATA_DIR/<group>/<class>/* (or DATA_DIR/<class>/* with --hierarchy). "
            f"Received: DATA_DIR={given!r}"
        )
    if not Path(data_dir).is_dir():
        raise ValueError(
            f"{given!r} is a file; DATA_DIR is the folder that holds the class (or group) "
            f"folders. Pass that folder. Received: DATA_DIR={given!r}"
        )
    if options.hierarchy == "auto":
        check_discovery_installed()


def _start(options, data_dir, run_dir, flags, callbacks, fit_kwargs, job):
    """`train` after its checks: the phases in the job's scope, then the finish."""
    overwrite, break_lock, times = flags
    if options.modality == "text" and job.processes > 1:
        raise ValueError(
            "A text run trains in one process (its folder of documents is not sharded "
            "between processes yet). Start it without --coordinator / --num-processes or "
            "TF_CONFIG. Received: modality='text'"
        )
    if options.hierarchy == "auto" and job.processes > 1:
        raise ValueError(
            "hierarchy='auto' discovers the groups in one process; a job of several "
            "processes needs them first: run the discovery alone (or pass --hierarchy FILE). "
            "Received: hierarchy='auto'"
        )
    with times.part("scan and prepare"), job.scope():
        prepared = None if options.hierarchy == "auto" else _prepare(options, data_dir)
    _time_probe(prepared, times)
    if prepared is None:
        check_num_groups(options.discovery_groups, len(flat_class_names(data_dir)))
    with _guarded(run_dir, break_lock, overwrite, job) as claim:
        with job.scope():
            if prepared is None:
                options = discover_for_run(options, data_dir, run_dir, fit_kwargs)
                prepared = _prepare(options, data_dir)
            options, (train_data, validation), model = prepared
            _announce(_data_summary(train_data, validation, options), fit_kwargs)
            if _probe_line(train_data):
                _announce(_probe_line(train_data), fit_kwargs)
            if _selection_line(validation):
                _announce(_selection_line(validation), fit_kwargs)
            if job.is_chief:
                _write_config(run_dir, data_dir, options, train_data.hierarchy)
                write_split(run_dir, data_dir, train_data, validation)
            shards = _sharded(job, train_data, validation)
            if options.upcycle_epochs:
                with times.part("fit upcycling"):
                    _upcycle(model, options, shards, fit_kwargs, job.is_chief)
            state = _run_phases(
                model,
                run_dir,
                options,
                None,
                shards,
                (list(callbacks or []), fit_kwargs, claim.commit, times, job),
            )
        data = (train_data, validation)
        return _finish(run_dir, options, data, state, fit_kwargs, times, job)


class _Follower:
    """What a process other than the chief holds instead of the run's claim."""

    commit = None


@contextlib.contextmanager
def _guarded(run_dir, break_lock, overwrite, job):
    """The run's lock and claim, taken by the process that writes the run (the chief)."""
    if not job.is_chief:
        yield _Follower()
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir, break_lock=break_lock), RunClaim(run_dir, overwrite) as claim:
        yield claim


def _sharded(job, train_data, validation):
    """This process's slice of every batch, in a job of several processes."""
    return job.shard(train_data), job.shard(validation)


def resume(run_dir, data_dir=None, *, break_lock=False, callbacks=None, **changes_and_fit_kwargs):
    """Continue the run in `run_dir` from its last committed epoch, optimizer state included.

    The run keeps the options its `config.json` stores. Options passed here
    must agree with them, except for the changes that make sense on a
    resume (`RESUME_CHANGES`): a larger `epochs` trains the extra epochs (of
    the phase the run is in, even when it had finished or stopped early),
    other learning rates apply from the next epoch on (e.g. lower after a
    NaN stop), and `patience` / `tensorboard` set the callbacks.

    Args:
        run_dir: a run directory written by `train`.
        data_dir: the image folder; must be the run's own (the default).
        break_lock: bool. Remove a stale lock left by a dead process.
        callbacks: extra Keras callbacks.
        **changes_and_fit_kwargs: `TrainingOptions` fields (see above), then
            arguments of `model.fit` (e.g. `verbose=0`).

    Returns:
        dict with `"metrics"`, `"model"` and `"run_dir"`, as `train`.
    """
    run_dir = Path(run_dir)
    if distribute.is_chief() and run_dir.is_dir() and replaced_asides(run_dir):
        with run_lock(run_dir, break_lock=break_lock):
            print(restore_replaced(run_dir), file=sys.stderr, flush=True)
    stored, stored_data_dir = read_config(run_dir)
    changes, fit_kwargs = TrainingOptions.fields_of(changes_and_fit_kwargs)
    _check_fit_kwargs(fit_kwargs)
    if data_dir is not None and Path(data_dir).resolve() != Path(stored_data_dir).resolve():
        raise ValueError(
            f"DATA_DIR {str(data_dir)!r} is not the run's image folder {stored_data_dir!r}; a "
            "resume continues on the images it started with. Pass that folder (or none), "
            f"or start a new run. Received: DATA_DIR={str(data_dir)!r}"
        )
    options = _resumed_options(stored, changes)
    options = dataclasses.replace(options, learning_rate=resolve_learning_rate(options))
    job, times = distribute.Job(options.distribute, options.batch_size), RunTimes()
    chief = job.is_chief
    with run_lock(run_dir, break_lock=break_lock) if chief else contextlib.nullcontext():
        with job.scope():
            state = _reopen_phase(stored, options, _resume_state(run_dir))
            if chief:
                clean_temporary_files(run_dir)
            if job.processes > 1:  # loading initialises the layers first: alike
                keras.utils.set_random_seed(options.seed)
            model = keras.models.load_model(run_dir / CHECKPOINTS / state["checkpoint"])
            with times.part("scan and prepare"):  # documents: the checkpoint's own vectorizer
                vectorizer = getattr(model, "preprocessor", None)
                train_data, validation = load_data(options, stored_data_dir, vectorizer)
                check_split(run_dir, stored_data_dir, train_data, validation)
            phase = _phases(options)[state["phase"]].name
            _announce(
                f"Resuming {run_dir} after epoch {state['epoch']} (phase {phase!r}), from "
                f"{CHECKPOINTS}/{state['checkpoint']}.",
                fit_kwargs,
            )
            _set_learning_rate(model, stored, options, state["phase"])
            if options != stored and chief:
                _write_config(run_dir, stored_data_dir, options, train_data.hierarchy)
            state = _run_phases(
                model,
                run_dir,
                options,
                state,
                _sharded(job, train_data, validation),
                (list(callbacks or []), fit_kwargs, None, times, job),
            )
        data = (train_data, validation)
        return _finish(run_dir, options, data, state, fit_kwargs, times, job)


def read_config(run_dir):
    """`(TrainingOptions, data_dir)` of the run in `run_dir`, from its config.json."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ValueError(
            f"There is no run to resume in {str(run_dir)!r}: {CONFIG} is missing. Start a "
            "new run without --resume."
        )
    try:
        config = json.loads(path.read_text())
        stored = config["options"]
        found = TrainingOptions.from_config(stored), stored["data_dir"]
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(
            f"{str(path)!r} is not a readable run config ({type(error).__name__}: {error}). "
            "Restore it, or start a new run with --overwrite."
        ) from None
    refuse_extended(run_dir, config, "train --resume")
    return found


def _finish(run_dir, options, data, state, fit_kwargs, times, job):
    """Hard-routed metrics, the flat baseline and the report (`condnet.runs.finish`)."""
    train_data = data[0]
    if not job.is_chief:  # the chief evaluates and reports
        return {"metrics": None, "model": None, "run_dir": str(run_dir)}

    def build():
        return build_model(options, train_data)

    def stopping(validation, epochs, rate):
        stage = (epochs, rate, 0)
        return _stopping_callbacks(options, validation, stage, "Flat baseline: ", fit_kwargs)

    with job.evaluation_scope():
        return finish_run(run_dir, options, data, state, build, stopping, fit_kwargs, times)


# === Options ===


def _data_summary(train_data, validation, options):
    hierarchy = train_data.hierarchy
    held_out = f", validating on {validation.num_samples}" if validation is not None else ""
    read = f"at {options.image_size} px"
    if _reads_hub(options):
        read = (
            f"the keras-hub backbone {options.backbone} (frozen) on the first "
            f"{options.sequence_length} tokens, its tokenizer's vocabulary of "
            f"{train_data.vectorizer.vocabulary_size()}"
        )
    elif options.modality == "text":
        read = (
            f"{options.text_trunk} trunk on the first {options.sequence_length} words, a "
            f"vocabulary of {train_data.vectorizer.vocabulary_size()} words"
        )
    return (
        f"Found {train_data.num_samples + (validation.num_samples if validation else 0)} "
        f"{noun_of(train_data)} in {hierarchy.num_classes} classes / {hierarchy.num_groups} "
        f"groups; training on {train_data.num_samples}{held_out}, {read}."
    )


def _options_and_fit_kwargs(options, kwargs):
    fields, fit_kwargs = TrainingOptions.fields_of(kwargs)
    if options is None:
        options = TrainingOptions(**fields)
    elif not isinstance(options, TrainingOptions):
        raise TypeError(
            "options must be a TrainingOptions (or None, with the options as keyword "
            f"arguments). Received: options of type {type(options).__name__}"
        )
    elif fields:
        options = dataclasses.replace(options, **fields)
    _check_fit_kwargs(fit_kwargs)
    return options, fit_kwargs


def _check_fit_kwargs(fit_kwargs):
    unknown = [name for name in fit_kwargs if name not in FIT_KEYWORDS]
    if unknown:
        known = [f.name for f in dataclasses.fields(TrainingOptions)] + list(FIT_KEYWORDS)
        hints = {name: difflib.get_close_matches(name, known, n=1) for name in unknown}
        shown = ", ".join(
            f"{name!r}" + (f" (did you mean {hints[name][0]!r}?)" if hints[name] else "")
            for name in unknown
        )
        raise TypeError(
            f"Unknown keyword argument {shown}: neither a TrainingOptions field nor a "
            f"model.fit argument ({', '.join(FIT_KEYWORDS)}). Received: {sorted(unknown)}"
        )


def _resumed_options(stored, changes):
    """The stored options with the allowed `changes`; any other difference is refused."""
    differences = []
    for name, value in changes.items():
        old = getattr(stored, name)
        if _same(name, value, old):
            continue
        if name == "epochs" and isinstance(value, int) and value < old:
            differences.append(
                f"{label(name)} {value} is fewer than the run's {old} (a resume can add "
                "epochs, not remove them)"
            )
        elif name not in RESUME_CHANGES:
            differences.append(f"{label(name)} {value!r} differs from the run's {old!r}")
    if differences:
        raise ValueError(
            "A resume continues the run with its stored options, and these contradict them: "
            + "; ".join(differences)
            + ". Leave them out, or start a new run (another --out, or --overwrite)."
        )
    return dataclasses.replace(stored, **changes)


def _same(name, value, old):
    if name != "hierarchy" or value is None or old is None or value == "auto":
        return normalised(name, value) == old
    as_hierarchy = Hierarchy.from_file if isinstance(value, str | Path) else Hierarchy
    return as_hierarchy(value) == Hierarchy(old)


def _reopen_phase(stored, options, state):
    """The state to continue when `epochs` grew: the run's phase ends later, and is reopened.

    Phases before the run's current one must keep their epochs.
    """
    if options.epochs == stored.epochs:
        return state
    before, after = _phase_plan(stored), _phase_plan(options)
    index = state["phase"]
    if before[:index] != after[:index] or len(after) <= index:
        raise ValueError(
            f"{label('epochs')} {options.epochs} would change the phases this run already "
            f"finished ({[name for name, _ in before[:index]]}); a resume can only lengthen "
            f"the phase it is in ({before[index][0]!r}). Start a new run with --overwrite. "
            f"Received: epochs={options.epochs}"
        )
    return {**state, "phase_done": False}


def _set_learning_rate(model, stored, options, index):
    """The resumed phase's new learning rate, if the options changed it (else the
    checkpoint's, which ReduceLROnPlateau may have lowered; a cosine schedule sets each
    epoch's rate itself)."""
    rate = _phases(options)[index].learning_rate
    if rate != _phases(stored)[index].learning_rate:
        model.optimizer.learning_rate = rate


def _phase_plan(options):
    return [(phase.name, phase.epochs) for phase in _phases(options)]


def _phases(options):
    return plan_phases(
        options.strategy,
        options.epochs,
        options.fine_tune_epochs,
        options.learning_rate,
        options.fine_tune_learning_rate,
    )


# === Phases ===


def _run_phases(model, run_dir, options, state, data, extras):
    """Fit every phase not done yet; return the last committed state.

    `data` is `(train, validation)`, `extras` is `(callbacks, fit_kwargs, on_commit,
    times)`.
    """
    start, phases = 0, _phases(options)
    for index, phase in enumerate(phases):
        end = start + phase.epochs
        if not _phase_done(state, index, end):
            if len(phases) > 1:
                _announce(_phase_header(index, phases, start, end, options), extras[1])
            resuming = state is not None and index == state["phase"]
            if resuming:
                _set_trainable(model, phase, options)  # the checkpoint restored the optimizer
            else:
                _prepare_phase(model, phase, options)
            initial = state["epoch"] if resuming else start
            state = _fit_phase(
                model, run_dir, options, state, (index, phase), (initial, end), data, extras
            )
        start = end
    return state


PHASE_WORDS = {
    "gate": "the gate alone (experts frozen)",
    "experts": "the experts, each on its own group's rows (trunk and gate frozen)",
    "joint": "gate and experts together",
    "fine_tune": "fine-tuning the top of the pretrained backbone at a low learning rate",
}


def _phase_header(index, phases, start, end, options):
    phase = phases[index]
    what = PHASE_WORDS.get(phase.name, phase.name)
    if phase.name == "joint" and phases[-1].name == "fine_tune":
        what += " (the pretrained backbone frozen)"
    return (
        f"=== Phase {index + 1}/{len(phases)}: {phase.name}, epochs {start + 1}-{end}: {what} ==="
    )


def _phase_done(state, index, end):
    """Whether a resumed run already finished phase `index` (ending at epoch `end`)."""
    if state is None or index > state["phase"]:
        return False
    return index < state["phase"] or state["phase_done"] or state["epoch"] >= end


def _fit_phase(model, run_dir, options, state, indexed_phase, epochs, data, extras):
    """Fit one phase from epoch `initial` to `end`; return the committed state."""
    (index, phase), (initial, end), validation = indexed_phase, epochs, data[1]
    callbacks, fit_kwargs, on_commit, times, job = extras
    chief = job.is_chief
    checkpoint = ckpt.RunCheckpoint(
        run_dir,
        index,
        state=state,
        monitor=checkpoint_monitor(validation),
        on_commit=on_commit,
        writes=chief,
    )
    first = end - phase.epochs
    recipe = _recipe_callbacks(run_dir, options, phase, validation, first, fit_kwargs, chief)
    with times.part("fit frozen features"):  # the backbone's pass, once, when cached
        inputs, in_order = _fit_inputs(model, options, data, fit_kwargs, job)
    with times.part(f"fit {phase.name}"):
        model.fit(
            initial_epoch=initial,
            epochs=end,
            # The checkpoint after the recipe's callbacks: it reads the smoothed metric.
            callbacks=[StopOnNaN(), *in_order, *recipe, checkpoint, *callbacks],
            **{**inputs, **fit_kwargs},
        )
    times.move(checkpoint.seconds, f"fit {phase.name}", "checkpoints")
    if checkpoint.refused is not None:
        raise RuntimeError(_not_finite_message(run_dir, options, phase, checkpoint.refused))
    checkpoint.end_phase()
    return ckpt.read_state(run_dir) if chief else checkpoint.committed or state


def _fit_inputs(model, options, data, fit_kwargs, job):
    """`fit`'s data arguments and the callbacks that keep the folders in step.

    While the trunk is frozen and nothing augments the images (a pretrained
    backbone before fine-tuning, `augment="none"`), its features are computed
    once per image (`condnet.training.features`) and the heads train on them:
    the trunk does not run again, epoch after epoch.
    """
    folders = train_data, validation = data
    augmented = options.modality != "text" and options.augment != "none"
    # Documents: a hub backbone's features (a trunk trained from scratch is never frozen
    # outside the staged "experts" phase, which keeps running it).
    once = options.modality != "text" or _reads_hub(options)
    once = once and job.processes == 1
    if not once or not features_fit(model.trunk, folders, augmented):
        x, validation_data, epoch_ends = distribute.fit_inputs(train_data, validation)
        return {"x": x, "validation_data": validation_data, **distribute.IN_ORDER}, epoch_ends
    new = "_frozen_features" not in train_data.__dict__
    x, y = frozen_features(model.trunk, train_data)
    held_out = frozen_features(model.trunk, validation) if validation is not None else None
    if new:
        noun, count = noun_of(train_data), len(y) + (len(held_out[1]) if held_out else 0)
        augmenting = "" if options.modality == "text" else " and nothing augments the images"
        _announce(
            f"The backbone is frozen{augmenting}: its features are computed once for the "
            f"{count} {noun} and the heads train on them.",
            fit_kwargs,
        )
    inputs = {"x": x, "y": y, "batch_size": options.batch_size, "shuffle": True}
    return {**inputs, "validation_data": held_out}, []


def _not_finite_message(run_dir, options, phase, refused):
    epoch, problem = refused
    state = ckpt.read_state(run_dir)
    rate = f"--learning-rate (now {phase.learning_rate:g})"
    if phase.name == "fine_tune":
        rate = f"--fine-tune-learning-rate (now {phase.learning_rate:g})"
    if state is None:
        kept = (
            "No epoch was saved, so nothing is lost: start again with the same --out and a "
            f"lower {rate}."
        )
    else:
        kept = (
            f"The run stays at epoch {state['epoch']} (its resume point; model.keras is "
            f"unchanged). Lower {rate} and continue with `--resume`, e.g. "
            f"--learning-rate {phase.learning_rate / 10:g}."
        )
    return (
        f"Epoch {epoch} (phase {phase.name!r}) ended with {problem}, so it was not saved. " + kept
    )


def _trainable_options(model, options):
    return dict(
        backbone=backbone_of(model),
        freeze_backbone=is_pretrained(options.backbone, options.weights),
        fine_tune_layers=options.fine_tune_layers,
    )


def _prepare_phase(model, phase, options):
    prepare_phase(model, phase, **_trainable_options(model, options))


def _set_trainable(model, phase, options):
    set_phase_trainable(model, phase, **_trainable_options(model, options))


def _recipe_callbacks(run_dir, options, phase, validation, first_epoch, fit_kwargs, chief):
    stage = (phase.epochs, phase.learning_rate, first_epoch)
    name = f"Phase {phase.name!r}: "
    callbacks = _stopping_callbacks(options, validation, stage, name, fit_kwargs, chief)
    if options.tensorboard and tensorboard_available() and chief:
        logs = Path(run_dir) / LOGS
        write_hparams(logs, options)
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir=str(logs), write_graph=False, profile_batch=0)
        )
    if options.loss_schedule == "coarse_to_fine" and phase.name == "joint":
        callbacks.append(LossWeightSchedule.coarse_to_fine(phase.epochs, start_epoch=first_epoch))
    return callbacks


LOGS = "logs"


def tensorboard_available():
    """TensorBoard logs need TensorFlow's summary writer and the tensorboard package."""
    import importlib.util

    return all(importlib.util.find_spec(name) for name in ("tensorflow", "tensorboard"))


def write_hparams(logs, options):
    """The run's options in TensorBoard's HParams view (written once per run directory)."""
    marker = Path(logs) / "hparams"
    if marker.is_dir():
        return
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    values = {}
    for key, value in options.to_config().items():
        if isinstance(value, (bool, int, float, str)):
            values[key] = value
        elif value is not None and key != "split":
            values[key] = json.dumps(value)[:200]
    with tf.summary.create_file_writer(str(marker)).as_default():
        hp.hparams(values)


def _stopping_callbacks(options, validation, stage, name="", fit_kwargs=None, chief=True):
    """EarlyStopping on the metric that also picks model.keras, and the learning-rate
    schedule of one stage `(epochs, learning_rate, first_epoch)`. An early stop
    prints one line, prefixed by `name`, if `chief` (the process that writes the run)
    unless the run is silent.

    Validation accuracy, not loss: the checkpoint keeps the epoch of best
    validation accuracy, and on small data the validation loss is noisy
    enough (three loss terms, early BatchNormalization statistics) that
    stopping on it ended runs epochs before their best accuracy. The
    learning rate decays along a cosine over the stage (`lr_schedule="cosine"`)
    or halves when that metric stalls (`"plateau"`).

    Under the cosine, early stopping watches the second half of the stage
    only: before it the learning rate is still high, validation accuracy
    swings from epoch to epoch, and the best epochs come as the rate decays.
    Watching from the first epoch, a 30-epoch CIFAR-10 run stopped at epoch
    20 and kept epoch 15, 5.6 points below its flat baseline
    (benchmarks/RESULTS.md, "Equal-cost accuracy on CIFAR-10").
    """
    monitor = "val_accuracy" if validation is not None else "accuracy"
    smoothing = []
    if small_validation(validation):
        smoothing = [SmoothedMetric(monitor, SMOOTHING_EPOCHS)]
        monitor = smoothing[0].name
    patience = options.patience
    epochs, rate, first_epoch = stage
    watch_from = first_epoch
    if options.lr_schedule == "cosine":
        schedule = keras.callbacks.LearningRateScheduler(
            cosine_learning_rate(rate, epochs, start_epoch=first_epoch)
        )
        watch_from = first_epoch + epochs // 2
    else:
        schedule = keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, mode="max", factor=0.5, patience=max(1, patience // 2), min_lr=1e-6
        )
    return [
        *smoothing,
        EarlyStop(
            name=name,
            announce=chief and (fit_kwargs or {}).get("verbose", "auto") != 0,
            monitor=monitor,
            mode="max",
            patience=patience,
            restore_best_weights=True,
            start_from_epoch=watch_from,
        ),
        schedule,
    ]


def _selection_line(validation):
    """Says on how many images the best epoch is chosen."""
    if validation is None:
        return None
    count, noun = validation.num_samples, noun_of(validation)
    if not small_validation(validation):
        return f"The best epoch is chosen on the validation accuracy of {count} {noun}."
    error = 100 * (0.8 * 0.2 / count) ** 0.5
    return (
        f"The best epoch is chosen on {count} validation {noun} only (about +-{error:.1f} "
        f"points of noise at 80% accuracy), so on their accuracy averaged over the last "
        f"{SMOOTHING_EPOCHS} epochs; hold out more {noun} (--validation-split) for a "
        "surer choice."
    )


# === Run directory ===


def _resume_state(run_dir):
    state = checked_state(run_dir)
    if state is None:
        raise ValueError(
            f"There is no run to resume in {str(run_dir)!r}: it has no {STATE} (no "
            "epoch was completed there, so nothing is lost). Start it again without "
            "--resume, with the same --out."
        )
    if not (Path(run_dir) / CHECKPOINTS / state["checkpoint"]).is_file():
        raise ValueError(
            f"The run in {str(run_dir)!r} cannot resume: its checkpoint "
            f"{state['checkpoint']!r} is missing. Start a new run with --overwrite."
        )
    return state


def _write_config(run_dir, data_dir, options, hierarchy):
    from condnet import __version__

    config = {
        "options": {"data_dir": str(data_dir), **options.to_config()},
        "hierarchy": hierarchy.to_dict(),
        "versions": {
            "condnet": __version__,
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "python": platform.python_version(),
        },
    }
    ckpt.write_atomic(Path(run_dir) / CONFIG, json.dumps(config, indent=1))
    hierarchy.save(Path(run_dir) / HIERARCHY)


# === The split's fingerprint ===


def write_split(run_dir, data_dir, train_data, validation):
    """Record which files the run trains and validates on (`RUN_DIR/split.json`)."""
    ckpt.write_atomic(
        Path(run_dir) / SPLIT, json.dumps(_split_of(data_dir, train_data, validation)) + "\n"
    )


def check_split(run_dir, data_dir, train_data, validation):
    """Refuse a data folder whose files changed since the run drew its split.

    Files added or removed redraw the split, so images the model trained on
    would be validated on (or the reverse). A run written before `split.json`
    existed is not checked.
    """
    path = Path(run_dir) / SPLIT
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text())
        stored = {part: set(stored[part]) for part in ("train", "validation")}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{str(path)!r} is damaged ({type(error).__name__}: {error}); it records the run's "
            "split. Restore it, or start a new run."
        ) from None
    now = {k: set(v) for k, v in _split_of(data_dir, train_data, validation).items()}
    if now != stored:
        raise ValueError(_split_changed(data_dir, stored, now))


def _split_of(data_dir, train_data, validation):
    def relative(folder):
        return sorted(os.path.relpath(p, data_dir) for p in folder.paths) if folder else []

    return {"train": relative(train_data), "validation": relative(validation)}


def _split_changed(data_dir, stored, now):
    before, after = stored["train"] | stored["validation"], now["train"] | now["validation"]
    added, removed = sorted(after - before), sorted(before - after)
    moved = len(stored["validation"] & now["train"]) + len(stored["train"] & now["validation"])
    parts = [f"{len(added)} file(s) added ({', '.join(added[:3])})" if added else ""]
    parts += [f"{len(removed)} removed ({', '.join(removed[:3])})" if removed else ""]
    changed = "; ".join(p for p in parts if p) or "the files are the same but split differently"
    return (
        f"The images in {str(data_dir)!r} changed since the run drew its split: {changed}. "
        f"The split drawn again would move {moved} image(s) between training and validation, "
        "so validation would score images the model trained on. Restore the folder as it was, "
        "or start a new run on it."
    )


# === Data and model ===


def _prepare(options, data_dir):
    """Everything a run needs before it writes a file: `(options, (train, validation), model)`.

    A hierarchy file is read here, and the run's options keep its tree, so
    the run reproduces (and resumes) without the file.
    """
    train_data, validation = load_data(options, data_dir)
    if isinstance(options.hierarchy, str):
        options = dataclasses.replace(options, hierarchy=train_data.hierarchy.to_dict())
    # The policy "auto" picks on this machine, so that config.json (and a resume) keep it.
    options = dataclasses.replace(options, precision=resolve_precision(options.precision))
    options = dataclasses.replace(options, learning_rate=resolve_learning_rate(options))
    probe = options.augment == "auto" and _probes_augmentation(options, validation)
    if options.modality != "text":
        options = dataclasses.replace(options, augment=resolve_augment(options))
        placement = resolve_placement(options.expert_placement, options.backbone, options.weights)
        options = dataclasses.replace(
            options, head_units=resolve_head_units(options.head_units, placement)
        )
    model = build_model(options, train_data)
    if probe:
        options, model = _probe_augmentation(options, model, train_data, validation)
    if options.upcycle_epochs:
        _upcycle_source(model, options, train_data)  # refuses a model it cannot upcycle
    return options, (train_data, validation), model


def resolve_learning_rate(options):
    """The Adam learning rate a run uses: `"auto"` is `TEXT_LEARNING_RATE` for documents read
    by a trunk trained from scratch, `IMAGE_LEARNING_RATE` for images (a resolved modality;
    `"auto"` modality counts as images) and for documents read by a pretrained keras-hub
    backbone (`text_trunk="hub"`: heads on frozen features, as on a pretrained image
    backbone). On 20 Newsgroups the default bag trunk reached 79.9% at 1e-3 and 89.4% at
    1e-2 in 10 epochs (benchmarks/RESULTS.md, "Text: 20 Newsgroups"): its embeddings learn
    slowly at 1e-3."""
    if options.learning_rate != "auto":
        return options.learning_rate
    if options.modality == "text" and not _reads_hub(options):
        return TEXT_LEARNING_RATE
    return IMAGE_LEARNING_RATE


def _reads_hub(options):
    """Whether a run reads documents with a pretrained keras-hub backbone (`text_trunk="hub"`)."""
    return options.modality == "text" and options.text_trunk == HUB_TEXT_TRUNK


# `--augment auto` on a pretrained backbone: the validation images the probe needs at
# least, and the drop in accuracy under the light policy's shifts that turns it on,
# counted at its lower bound: the measured drop less PROBE_ERRORS standard errors (one
# random draw of validation images and shifts moves the drop by about a point on a few
# hundred images; photos20 measured 1.0-2.2 across seeds, where light gained nothing).
PROBE_MIN_IMAGES = 100
PROBE_DROP = 0.02
PROBE_ERRORS = 2.0


def _probes_augmentation(options, validation):
    """Whether `augment="auto"` is decided by `augmentation_probe` (a pretrained backbone,
    images, one process, and `PROBE_MIN_IMAGES` validation images to score)."""
    return (
        options.modality != "text"
        and is_pretrained(options.backbone, options.weights)
        and validation is not None
        and validation.num_samples >= PROBE_MIN_IMAGES
        and distribute.process_count() == 1
    )


def _probe_augmentation(options, model, train_data, validation):
    """`augment="auto"` on a pretrained backbone: `"none"` (features computed once), unless
    the light policy's shifts surely cost its frozen features `PROBE_DROP` or more of
    their nearest-class-mean validation accuracy (the drop less `PROBE_ERRORS` standard
    errors); then `"light"`, and the model is built again with it. What the probe
    measured is kept on the training folder for the run's output."""
    from condnet.training.features import augmentation_probe
    from condnet.vision.augmentation import make_augmentation

    shifts = make_augmentation("light", image_size=options.image_size, seed=options.seed)
    started = time.perf_counter()
    found = augmentation_probe(model.trunk, train_data, validation, shifts)
    augment = "light" if _surely_drops(found) else "none"
    seconds = time.perf_counter() - started
    train_data.augmentation_probe = {**found, "augment": augment, "seconds": seconds}
    if augment == "none":
        return options, model
    options = dataclasses.replace(options, augment=augment)
    return options, build_model(options, train_data)


def _surely_drops(found):
    drop = found["clean"] - found["augmented"]
    return drop - PROBE_ERRORS * found["drop_error"] >= PROBE_DROP


def _time_probe(prepared, times):
    """The probe's seconds (the backbone's pass over the images, kept for the training,
    and over the shifted validation images) count as the frozen features' pass."""
    found = getattr(prepared[1][0], "augmentation_probe", None) if prepared else None
    if found is not None:
        times.move(found["seconds"], "scan and prepare", "fit frozen features")


def _probe_line(train_data):
    found = getattr(train_data, "augmentation_probe", None)
    if found is None:
        return None
    drop = 100 * (found["clean"] - found["augmented"])
    lower = drop - 100 * PROBE_ERRORS * found["drop_error"]
    verdict = {
        "none": "so the heads train on features computed once, without augmentation",
        "light": "so the run augments them (every epoch runs the backbone)",
    }[found["augment"]]
    return (
        f"--augment auto: the backbone's features classify the {found['images']} validation "
        f"images {found['clean']:.1%} right as they are and {found['augmented']:.1%} right "
        f"shifted slightly (a drop of {drop:.1f} points, at least {lower:.1f} at "
        f"{PROBE_ERRORS:g} standard errors; augmentation needs {100 * PROBE_DROP:g}), {verdict}."
    )


def resolve_augment(options):
    """The augmentation policy a run starts from: `"auto"` on a pretrained backbone is
    `"none"`.

    Without augmentation a frozen backbone's features are computed once per
    image, so the heads train in seconds an epoch instead of running the
    backbone every epoch (benchmarks/RESULTS.md, "Pretrained backbone:
    photos20"). With a validation split of `PROBE_MIN_IMAGES` or more,
    `_probe_augmentation` then turns `"light"` on when the data needs it. Other
    values are kept; on a backbone trained from scratch `"auto"` stays for
    `make_augmentation` to resolve.
    """
    if options.augment != "auto" or not is_pretrained(options.backbone, options.weights):
        return options.augment
    return "none"


def _upcycle_source(model, options, train_data):
    return upcycle_source(model, model_input_shape(options, train_data))


def _upcycle(model, options, data, fit_kwargs, chief):
    """`upcycle_epochs`: train a flat model on every class, then copy it into the
    trunk and every expert (`condnet.training.upcycle`)."""
    source = _upcycle_source(model, options, data[0])
    _announce(
        f"=== Upcycling, epochs 1-{options.upcycle_epochs}: a flat model over all "
        f"{data[0].hierarchy.num_classes} classes; every expert then starts as a copy of it ===",
        fit_kwargs,
    )

    def stopping(validation, epochs, rate):
        return _stopping_callbacks(
            options, validation, (epochs, rate, 0), "Upcycling: ", fit_kwargs, chief
        )

    fit_flat(
        source,
        options,
        data,
        stopping,
        fit_kwargs,
        [(options.upcycle_epochs, options.learning_rate)],
    )
    upcycle(model, source)


def load_data(options, data_dir=None, vectorizer=None):
    """Training and validation folders of a run's options (its split or share, and seed):
    ImageFolders, or TextFolders for documents (`load_documents`).

    Args:
        options: `TrainingOptions`, or the `"options"` dict of a run's
            config.json (which also names its `data_dir`).
        data_dir: the data folder. Defaults to the one `options` names.
        vectorizer: documents only: the adapted `TextVectorization` to read
            them with (a resumed run's; a `HubTokenizer` for `text_trunk="hub"`).
            Defaults to one adapted on the training split (the preset's
            tokenizer for `"hub"`).
    """
    if not isinstance(options, TrainingOptions):
        data_dir = options["data_dir"] if data_dir is None else data_dir
        options = TrainingOptions.from_config(options)
    if options.modality == "text":
        return load_documents(options, data_dir, vectorizer)
    if options.split is not None:
        return _load_split(options, data_dir)
    return load_folders(
        data_dir,
        hierarchy=options.hierarchy,
        image_size=options.image_size,
        batch_size=options.batch_size,
        validation_split=options.validation_split,
        seed=options.seed,
        color_mode=options.color_mode,
        cache=options.cache,
        cache_dir=options.cache_dir,
        dtype=_batch_dtype(),
    )


def _batch_dtype():
    """uint8 training batches (4 times smaller to move; the model casts them), except in a
    job of several processes: TensorFlow's collectives refuse to reduce uint8."""
    return "uint8" if distribute.process_count() == 1 else "float32"


def load_documents(options, data_dir, vectorizer=None):
    """Training and validation TextFolders of a text run: the documents of `data_dir`
    (`scan_documents`), split as the options say, read (a count of those read as
    Windows-1252 is warned once) and turned into token ids by `vectorizer`, by default
    one adapted on the training split only (`make_vectorizer`), or for `text_trunk="hub"`
    the preset's own tokenizer (`hub_tokenizer`)."""
    hierarchy, paths, labels = scan_documents(data_dir, options.hierarchy)
    if options.split is not None:
        train_rows, validation_rows = _split_rows(options, len(paths), data_dir, "documents")
    else:
        train_rows, validation_rows = split_indices(labels, options.validation_split, options.seed)
    texts, fallbacks = read_documents(paths)
    warn_fallbacks(data_dir, fallbacks, len(texts))
    if vectorizer is None and _reads_hub(options):  # the preset's own tokenizer
        vectorizer = hub_tokenizer(options.backbone, options.sequence_length)
    if vectorizer is None:
        training_texts = [texts[row] for row in train_rows]
        vectorizer = make_vectorizer(
            training_texts, options.vocabulary_size, options.sequence_length
        )

    def folder(rows, **kwargs):
        return TextFolder(
            [texts[row] for row in rows],
            labels[rows],
            hierarchy,
            vectorizer,
            batch_size=options.batch_size,
            paths=[paths[row] for row in rows],
            **kwargs,
        )

    train = folder(train_rows, shuffle=True, seed=options.seed)
    return train, folder(validation_rows) if len(validation_rows) else None


def build_model(options, train_data):
    """The run's freshly initialised model: `build_text_model` on documents (reading the
    training folder's vectorizer), else `build_image_model`."""
    if options.modality != "text":
        return _build(options, train_data.hierarchy, train_data.channels)
    keras.utils.set_random_seed(options.seed)
    conditional = dict(  # the ConditionalModel's own arguments
        routing=options.routing,
        seed=options.seed,
        dispatch=options.dispatch,
        capacity_factor=options.capacity_factor,
        confidence_threshold=options.confidence_threshold,
        temperature=options.temperature,
    )
    with precision_scope(options.precision):
        if _reads_hub(options):
            return build_hub_text_model(
                train_data.hierarchy,
                options.backbone,
                options.sequence_length,
                tokenizer=train_data.vectorizer,
                **conditional,
            )
        return build_text_model(
            train_data.hierarchy,
            train_data.vectorizer.vocabulary_size(),
            options.sequence_length,
            trunk=options.text_trunk,
            preprocessor=train_data.vectorizer,
            **conditional,
        )


def _build(options, hierarchy, channels):
    keras.utils.set_random_seed(options.seed)
    augmentation = None
    if options.augment != "none":
        from condnet.vision.augmentation import make_augmentation

        augmentation = make_augmentation(
            options.augment,
            # False drops the policy's flips / rotations; True keeps what the policy has.
            flip="auto" if options.flip else None,
            rotation="auto" if options.rotation else None,
            image_size=options.image_size,
            seed=options.seed,
        )
    return build_image_model(
        hierarchy,
        backbone=options.backbone,
        image_size=options.image_size,
        channels=channels,
        weights=options.weights,
        expert_placement=options.expert_placement,
        augmentation=augmentation,
        routing=options.routing,
        filters=options.filters,
        expert_dropout=options.expert_dropout,
        head_units=options.head_units,
        seed=options.seed,
        dispatch=options.dispatch,
        capacity_factor=options.capacity_factor,
        confidence_threshold=options.confidence_threshold,
        temperature=options.temperature,
        backbone_output=options.backbone_output,
        preprocess=options.preprocess,
        precision=options.precision,
    )


def _resolve_image_size(options, data_dir, sample=200):
    """`image_size="auto"`: the median shorter side of up to `sample` training images,
    rounded to a multiple of 8 and kept within 32..224 px."""
    if options.image_size != "auto" or options.modality == "text":
        return options
    from PIL import Image

    from condnet.data.folders import IMAGE_EXTENSIONS

    files = sorted(
        path
        for path in Path(data_dir).rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    )
    sides = []
    for path in files[:: max(1, len(files) // sample)][:sample]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, ValueError):
            continue  # the scan reports unreadable files
    if not sides:
        raise ValueError(
            f"--image-size auto reads the size of the training images, but no image in "
            f"{str(data_dir)!r} could be opened. Pass --image-size PIXELS or check the folder. "
            f"Received: DATA_DIR={str(data_dir)!r}"
        )
    side = int(np.clip(round(float(np.median(sides)) / 8) * 8, 32, 224))
    return dataclasses.replace(options, image_size=side)


# === Discovered hierarchy and explicit split ===


def discover_for_run(options, data_dir, run_dir, fit_kwargs):
    """`hierarchy="auto"`: discover the groups of a flat folder for this run.

    A flat classifier trains on the run's data with the run's image size,
    epochs, batch size, filters, seed and validation share (0.2 when the run
    has none); its validation confusions are clustered into
    `discovery_groups` groups (`condnet.evaluation.discovery`). The hierarchy is written
    to `RUN_DIR/hierarchy.discovered.json` to edit and reuse with
    `--hierarchy FILE`; the returned options hold its dict instead of "auto", so
    `resume` keeps it. Only that grouping carries over to the run; since it
    reorders the classes, the run's validation rows (same share and seed)
    need not be the ones discovery held out.
    """
    _announce(
        f"=== Discovery: training a flat classifier for {options.epochs} epochs to find "
        f"{options.discovery_groups} groups of similar classes ===",
        fit_kwargs,
    )
    hierarchy, _ = discover_from_folder(
        data_dir,
        num_groups=options.discovery_groups,
        image_size=options.image_size,
        epochs=options.epochs,
        validation_split=options.validation_split or 0.2,
        seed=options.seed,
        batch_size=options.batch_size,
        filters=options.filters,
        learning_rate=resolve_learning_rate(options),
        color_mode=options.color_mode,
        **fit_kwargs,
    )
    hierarchy.save(Path(run_dir) / DISCOVERED)
    found = "; ".join(f"{g}: {', '.join(hierarchy.classes_of(g))}" for g in hierarchy.groups)
    _announce(
        f"Discovered groups: {found} (written to {Path(run_dir) / DISCOVERED}; edit it and "
        "pass --hierarchy FILE to reuse it).",
        fit_kwargs,
    )
    return dataclasses.replace(options, hierarchy=hierarchy.to_dict())


def _load_split(options, data_dir):
    """Training and validation ImageFolders on the rows `options.split` names."""
    hierarchy, paths, labels = scan_directory(data_dir, options.hierarchy)
    train_rows, validation_rows = _split_rows(options, len(paths), data_dir, "images")
    common = dict(
        image_size=options.image_size,
        batch_size=options.batch_size,
        color_mode=options.color_mode,
        cache=options.cache,
        cache_dir=options.cache_dir,
        dtype=_batch_dtype(),
    )

    def folder(rows, **kwargs):
        return ImageFolder([paths[r] for r in rows], labels[rows], hierarchy, **common, **kwargs)

    train = folder(train_rows, shuffle=True, seed=options.seed)
    return train, folder(validation_rows) if validation_rows else None


def _split_rows(options, count, data_dir, noun):
    """`options.split` as (train rows, validation rows), refused when a row is not one of
    the `count` files of `data_dir`."""
    train_rows, validation_rows = (list(rows) for rows in options.split)
    outside = [row for row in train_rows + validation_rows if row >= count]
    if outside:
        scan = "scan_documents" if noun == "documents" else "scan_directory"
        raise ValueError(
            f"split names rows up to {max(outside)}, but {str(data_dir)!r} holds "
            f"{count} {noun}. The indices refer to {scan}(data_dir, "
            "hierarchy); the folder has changed since they were drawn."
        )
    return train_rows, validation_rows


# === Modality ===


def resolve_modality(options, data_dir):
    """`modality="auto"` as `"text"` when most of the first files of `data_dir` are
    documents (`condnet.data.text.count_files`), else `"image"`; the resolved options are
    checked again (a text run refuses the image options). A folder whose files are
    neither images nor documents (only empty or binary files) is refused; one without
    files is left to the image scan, which says what the layout lacks."""
    if options.modality != "auto":
        return options
    images, documents = count_files(data_dir)
    if not images and not documents and _holds_files(data_dir):
        raise ValueError(
            f"Found neither images nor text documents in {str(data_dir)!r}: its files (if "
            "any) are empty or binary. Put images (.jpg, .png, ...) or text files (UTF-8 or "
            "Latin-1, any extension) in DATA_DIR/<group>/<class>/*, or DATA_DIR/<class>/* "
            f"with --hierarchy. Received: DATA_DIR={str(data_dir)!r}"
        )
    return dataclasses.replace(options, modality="text" if documents > images else "image")


def _holds_files(folder):
    """Whether `folder` holds a file that is not hidden, at any depth."""
    visible = (path for path in Path(folder).rglob("*") if not path.name.startswith("."))
    return any(path.is_file() for path in visible)

"""The training recipe: from a folder of images to a trained, checkpointed, reported run."""

import contextlib
import dataclasses
import difflib
import inspect
import sys
from pathlib import Path

import keras

from condnet.evaluation.discovery import (
    check_discovery_installed,
    check_num_groups,
    flat_class_names,
)
from condnet.hierarchy import Hierarchy
from condnet.runs.claim import (
    RunClaim,
    check_run_dir,
    clean_temporary_files,
    replaced_asides,
    restore_replaced,
)
from condnet.runs.discovery import discover_for_run
from condnet.runs.files import CHECKPOINTS, STATE
from condnet.runs.finish import announce as _announce
from condnet.runs.finish import finish_run, noun_of
from condnet.runs.lock import run_lock
from condnet.runs.options import TrainingOptions, label, normalised
from condnet.runs.phases import (
    phase_plan,
    phases_of,
    run_phases,
    stopping_callbacks,
    upcycle_experts,
    upcycling_source,
)
from condnet.runs.run_config import (
    build_model,
    probe_line,
    read_run_options,
    reads_hub,
    resolve_image_size,
    resolve_learning_rate,
    resolve_modality,
    resolve_options,
    time_probe,
    write_config,
)
from condnet.runs.run_data import check_split, load_data, write_split
from condnet.runs.run_dir import read_state as checked_state
from condnet.runs.timing import RunTimes
from condnet.training import distribute
from condnet.training.callbacks import SMOOTHING_EPOCHS, small_validation

# model.fit arguments a caller may pass through; the recipe sets the others itself.
FIT_KEYWORDS = tuple(
    name
    for name in inspect.signature(keras.Model.fit).parameters
    if name
    not in ("self", "x", "y", "batch_size", "epochs", "callbacks", "validation_split")
    + ("validation_data", "initial_epoch")
)

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


# === Train ===


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
    of its files are text; see `condnet.runs.run_config.resolve_modality`)
    trains `build_text_model` with `text_trunk`, `sequence_length` and
    `vocabulary_size`: its `TextVectorization` is adapted on the training
    split only and saved inside model.keras, which then predicts from
    strings. The options of image runs are refused there.

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
            `condnet.runs.discovery.discover_for_run`). `split` is an optional pair
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
        options = resolve_image_size(options, data_dir)
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
    time_probe(prepared, times)
    if prepared is None:
        check_num_groups(options.discovery_groups, len(flat_class_names(data_dir)))
    with _guarded(run_dir, break_lock, overwrite, job) as claim:
        with job.scope():
            if prepared is None:
                options = discover_for_run(options, data_dir, run_dir, fit_kwargs)
                prepared = _prepare(options, data_dir)
            options, (train_data, validation), model = prepared
            _announce(_data_summary(train_data, validation, options), fit_kwargs)
            if probe_line(train_data):
                _announce(probe_line(train_data), fit_kwargs)
            if _selection_line(validation):
                _announce(_selection_line(validation), fit_kwargs)
            if job.is_chief:
                write_config(run_dir, data_dir, options, train_data.hierarchy)
                write_split(run_dir, data_dir, train_data, validation)
            shards = _sharded(job, train_data, validation)
            if options.upcycle_epochs:
                with times.part("fit upcycling"):
                    upcycle_experts(model, options, shards, fit_kwargs, job.is_chief)
            state = run_phases(
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


def _prepare(options, data_dir):
    """Everything a run needs before it writes a file: `(options, (train, validation), model)`,
    the options resolved on the data (`resolve_options`)."""
    train_data, validation = load_data(options, data_dir)
    options, model = resolve_options(options, train_data, validation)
    if options.upcycle_epochs:
        upcycling_source(model, options, train_data)  # refuses a model it cannot upcycle
    return options, (train_data, validation), model


def _data_summary(train_data, validation, options):
    hierarchy = train_data.hierarchy
    held_out = f", validating on {validation.num_samples}" if validation is not None else ""
    read = f"at {options.image_size} px"
    if reads_hub(options):
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


# === Resume ===


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
    stored, stored_data_dir = read_run_options(run_dir)
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
            phase = phases_of(options)[state["phase"]].name
            _announce(
                f"Resuming {run_dir} after epoch {state['epoch']} (phase {phase!r}), from "
                f"{CHECKPOINTS}/{state['checkpoint']}.",
                fit_kwargs,
            )
            _set_learning_rate(model, stored, options, state["phase"])
            if options != stored and chief:
                write_config(run_dir, stored_data_dir, options, train_data.hierarchy)
            state = run_phases(
                model,
                run_dir,
                options,
                state,
                _sharded(job, train_data, validation),
                (list(callbacks or []), fit_kwargs, None, times, job),
            )
        data = (train_data, validation)
        return _finish(run_dir, options, data, state, fit_kwargs, times, job)


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
    before, after = phase_plan(stored), phase_plan(options)
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
    rate = phases_of(options)[index].learning_rate
    if rate != phases_of(stored)[index].learning_rate:
        model.optimizer.learning_rate = rate


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


# === The end of a run ===


def _finish(run_dir, options, data, state, fit_kwargs, times, job):
    """Hard-routed metrics, the flat baseline and the report (`condnet.runs.finish`)."""
    train_data = data[0]
    if not job.is_chief:  # the chief evaluates and reports
        return {"metrics": None, "model": None, "run_dir": str(run_dir)}

    def build():
        return build_model(options, train_data)

    def stopping(validation, epochs, rate):
        stage = (epochs, rate, 0)
        return stopping_callbacks(options, validation, stage, "Flat baseline: ", fit_kwargs)

    with job.evaluation_scope():
        return finish_run(run_dir, options, data, state, build, stopping, fit_kwargs, times)

"""The recipe's phases: each fit with its checkpoint, callbacks and TensorBoard logs."""

import json
from pathlib import Path

import keras

from condnet.runs import checkpoint as ckpt
from condnet.runs.finish import announce as _announce
from condnet.runs.finish import fit_flat, model_input_shape, noun_of
from condnet.runs.run_config import reads_hub
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
from condnet.vision.image_model import backbone_of

# === The plan ===


def phases_of(options):
    """The run's phases (`condnet.training.staged.plan_phases`) from its options."""
    return plan_phases(
        options.strategy,
        options.epochs,
        options.fine_tune_epochs,
        options.learning_rate,
        options.fine_tune_learning_rate,
    )


def phase_plan(options):
    """`(name, epochs)` of each phase: what a resume must keep of the phases already done."""
    return [(phase.name, phase.epochs) for phase in phases_of(options)]


# === The phase loop ===


def run_phases(model, run_dir, options, state, data, extras):
    """Fit every phase not done yet; return the last committed state.

    `data` is `(train, validation)`, `extras` is `(callbacks, fit_kwargs, on_commit,
    times, job)` (`job`: the `condnet.training.distribute.Job` the run trains in).
    """
    start, phases = 0, phases_of(options)
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
        inputs, in_order = fit_arguments(model, options, data, fit_kwargs, job.processes)
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


def fit_arguments(model, options, data, fit_kwargs, processes=1):
    """`fit`'s data arguments for `data` (`(train, validation)` folders) and the callbacks
    that keep the folders in step.

    While the trunk is frozen and nothing augments the images (a pretrained
    backbone before fine-tuning, `augment="none"`; `condnet extend`'s heads), its
    features are computed once per image (`condnet.training.features`) and the heads
    train on them: the trunk does not run again, epoch after epoch. `processes`: the
    job's (features are computed once in a job of one process only).
    """
    folders = train_data, validation = data
    augmented = options.modality != "text" and options.augment != "none"
    # Documents: a hub backbone's features (a text trunk trained from scratch is frozen
    # only in the staged "experts" phase, which keeps running it; extend refuses text runs).
    once = options.modality != "text" or reads_hub(options)
    once = once and processes == 1
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


# === Callbacks ===


def _recipe_callbacks(run_dir, options, phase, validation, first_epoch, fit_kwargs, chief):
    stage = (phase.epochs, phase.learning_rate, first_epoch)
    name = f"Phase {phase.name!r}: "
    callbacks = stopping_callbacks(options, validation, stage, name, fit_kwargs, chief)
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


def stopping_callbacks(options, validation, stage, name="", fit_kwargs=None, chief=True):
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
    Watching from the first epoch stopped runs well before their best
    epochs (benchmarks/RESULTS.md, "Equal-cost accuracy on CIFAR-10").
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


# === Upcycling ===


def upcycling_source(model, options, train_data):
    """The flat model whose copies start the experts (refused for a model that cannot be
    upcycled: `condnet.training.upcycle.upcycle_source`)."""
    return upcycle_source(model, model_input_shape(options, train_data))


def upcycle_experts(model, options, data, fit_kwargs, chief=True):
    """`upcycle_epochs`: train a flat model on every class, then copy it into the
    trunk and every expert (`condnet.training.upcycle`)."""
    source = upcycling_source(model, options, data[0])
    _announce(
        f"=== Upcycling, epochs 1-{options.upcycle_epochs}: a flat model over all "
        f"{data[0].hierarchy.num_classes} classes; every expert then starts as a copy of it ===",
        fit_kwargs,
    )

    def stopping(validation, epochs, rate):
        stage = (epochs, rate, 0)
        return stopping_callbacks(options, validation, stage, "Upcycling: ", fit_kwargs, chief)

    fit_flat(
        source,
        options,
        data,
        stopping,
        fit_kwargs,
        [(options.upcycle_epochs, options.learning_rate)],
    )
    upcycle(model, source)

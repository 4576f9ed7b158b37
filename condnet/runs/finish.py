"""The end of a run: hard-routed evaluation, the flat baseline, metrics.json and the report.

What a user ships is `model.keras`, so the headline figures are those of
hard-routed inference (only the chosen expert runs), whatever routing the
model trained with; the soft mixture is reported beside them. The flat
baseline (`condnet.evaluation.baseline.flat_baseline`: the same trunk, split,
epochs and augmentation, one head over every class at the routed MACs per
image) trains after the conditional model, under a heading of its own, and is
compared in `metrics.json` and the report, which record the epochs each model
trained.

A resume keeps `baseline.keras` only when `metrics.json` records that it
trained for as many epochs as the run now has. A resume that adds epochs
trains the baseline again from scratch (same seed, split and options, the
new epochs) rather than continuing it: `baseline.keras` holds its best
epoch, not its last one nor its optimizer state, and a baseline trained from
scratch is the one a new run with those epochs would train, so the
comparison does not depend on the run's history.
"""

import json
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np

from condnet.data.text import TextFolder
from condnet.evaluation.analysis import baseline_verdict, gallery_examples, gap_sources
from condnet.evaluation.baseline import flat_baseline
from condnet.evaluation.cost import routed_macs
from condnet.evaluation.evaluate import evaluate_model, within_group_of
from condnet.evaluation.explain import document_weigher, explainer
from condnet.evaluation.mistakes import milder_mistakes
from condnet.evaluation.report import write_report
from condnet.models.precision import loss_scaled
from condnet.runs import checkpoint as ckpt
from condnet.runs.backoff import TARGET_ACCURACY, chosen_entry, write_backoff
from condnet.runs.files import BASELINE, BEST, METRICS
from condnet.runs.run_dir import backoff_of
from condnet.runs.timing import RunTimes, describe
from condnet.runs.unknown import FALSE_ALARM_RATE, chosen_unknown_entry, write_unknown
from condnet.training.callbacks import StopOnNaN, checkpoint_monitor
from condnet.training.distribute import IN_ORDER, compile_options, fit_inputs
from condnet.training.features import features_fit, frozen_features
from condnet.training.staged import tunable_count
from condnet.vision.backbones import freeze, is_pretrained, unfreeze_top

INFERENCE_ROUTING = "hard"
SCORED_ON = {False: "validation split", True: "training images, no validation split"}
_TIMED_IMAGES = 256


def finish_run(
    run_dir, options, data, state, build, stopping_callbacks, fit_kwargs, times=None, extra=None
):
    """Evaluate the best model on the validation split (or the training data without one),
    train and compare the baseline, write `metrics.json` and the report.

    Args:
        run_dir: the run directory.
        options: the run's `TrainingOptions`.
        data: `(train, validation)` ImageFolders or TextFolders (validation
            may be None).
        state: the last committed checkpoint state (its history).
        build: callable returning a freshly initialised conditional model of
            the run (the baseline copies its trunk and initial weights).
        stopping_callbacks: callable `validation -> callbacks` of the recipe.
        fit_kwargs: arguments the run passes to `fit` (e.g. `verbose`).
        times: the run's `RunTimes`; its parts are written to `timing.json` and
            a line of the report. Defaults to a stopwatch started here.
        extra: dict with `"metrics"` (entries added to metrics.json) and
            `"header"` (lines added to the report's header), e.g. what
            `condnet extend` measured. Defaults to None.

    Returns:
        dict with `"metrics"`, `"model"` and `"run_dir"`.
    """
    run_dir, times = Path(run_dir), times or RunTimes()
    train_data, validation = data
    scored = validation or train_data
    shape = model_input_shape(options, train_data)
    with times.part("evaluation"):
        model, trained_routing = _shipped(run_dir, shape)
        macs = routed_macs(model, shape)
    flat = flat_costs = None
    if options.baseline:
        with times.part("flat baseline"):
            flat, flat_costs = _baseline(
                run_dir, options, data, build, stopping_callbacks, fit_kwargs
            )
    with times.part("evaluation"):
        epochs = _conditional_epochs(options, state)
        costs = {"conditional": {"macs_per_image": int(macs["routed"]), "epochs": epochs}}
        costs["flat"] = flat_costs
        metrics, predictions, flat_predictions = score_run(model, scored, flat, costs)
    metrics["training_routing"] = trained_routing
    metrics["macs_per_image"] = {"routed": macs["routed"], "all_experts": macs["all_experts"]}
    metrics["scored_on"] = SCORED_ON[validation is None]
    metrics["best_epoch_chosen_on"] = {
        noun_of(scored): scored.num_samples,
        "monitor": checkpoint_monitor(validation),
    }
    probe = getattr(train_data, "augmentation_probe", None)  # what chose `--augment auto`
    if probe is not None:
        metrics["augmentation_probe"] = {k: v for k, v in probe.items() if k != "seconds"}
    comparison = metrics.get("baseline")
    with times.part("evaluation"):
        metrics["backoff"] = _backoff(
            run_dir, train_data.hierarchy, validation, predictions, flat_predictions
        )
        _unknown(run_dir, train_data.hierarchy, validation, predictions, flat_predictions)
    extra = extra or {}
    metrics.update(extra.get("metrics", {}))
    ckpt.write_atomic(run_dir / METRICS, json.dumps(metrics, indent=1))
    if not options.report:  # a tune trial or a fold: its metrics are what is read
        times.write(run_dir)
        return {"metrics": metrics, "model": model, "run_dir": str(run_dir)}
    with times.part("report"):
        header = {**_header(options, data, state, metrics["training_routing"])}
        header.update(extra.get("header", {}))
        header["time"] = describe(times.summary()) + " (before this report)"
        documents = isinstance(train_data, TextFolder)
        write_report(
            run_dir,
            train_data.hierarchy,
            metrics,
            history=_history_columns(state["history"] if state else []),
            title=f"{run_dir.name}: trained on {_data_root(train_data)}",
            header=header,
            baseline=comparison,
            examples=gallery_examples(train_data.hierarchy, predictions),
            # occlusion maps of the misrouted images; documents show their first lines
            # and the words that weighed most
            explain=document_weigher(model) if documents else explainer(model),
            documents=documents,
        )
    times.write(run_dir)
    return {"metrics": metrics, "model": model, "run_dir": str(run_dir)}


def _shipped(run_dir, shape):
    """model.keras hard-routed and without its optimizer (saved so), and the routing it
    trained with."""
    model = keras.models.load_model(run_dir / BEST)
    trained_routing = model.routing
    model.routing = INFERENCE_ROUTING  # what a user's predict runs: the chosen expert only
    model = _without_optimizer(model, (None, *shape))
    ckpt.save_model_atomic(model, run_dir / BEST)
    return model, trained_routing


def _without_optimizer(model, input_shape):
    """The same model, uncompiled: what users ship needs no optimizer state (the
    checkpoints keep it for --resume), and the file is about a third smaller.

    A text model's adapted `TextVectorization` is handed over as it is: its config
    does not hold the vocabulary it adapted (the saved file's assets do)."""
    config = model.get_config()
    if getattr(model, "preprocessor", None) is not None:
        config["preprocessor"] = model.preprocessor
    copy = type(model).from_config(config)
    copy.build(input_shape)
    copy.set_weights(model.get_weights())
    return copy


# === Scores ===


def score_run(model, data, flat=None, costs=None, progress=False):
    """Score a run's condnet model, and its flat baseline beside it, on `data`: what
    `condnet train` writes to metrics.json for its validation split and `condnet
    evaluate` for another folder.

    The model is scored with its own routing (`inference_routing`; a run ships hard:
    only the chosen expert runs), and with the other one beside it: `mixture` (the
    soft mixture, every expert) or `hard_routed`. With `flat` (the run's flat
    baseline: a Keras classifier over the same classes) the two are scored on the
    same images and compared in `baseline`: per side the accuracy, `group_accuracy`
    (the final class lies in the true group), `within_group_accuracy` (the right
    class among the true group's: the soft mixture's for the conditional model),
    hierarchical F1 and how far the mistakes miss; under hard routing also `costs`
    (`{"conditional": {...}, "flat": {...}}`, e.g. MACs per image and epochs, which
    do not depend on the images) and the images per second timed on these images.
    Then the verdict, where the gap comes from (the gate or the experts) and whose
    mistakes are milder. `progress=True` reports each pass on standard error.

    Returns:
        `(metrics, predictions, flat_predictions)`: the predictions of
        `evaluate_model` (None for a missing `flat`).
    """
    hierarchy = model.hierarchy
    routing = model.routing
    metrics, predictions = evaluate_model(
        model, data, return_predictions=True, progress=progress, progress_label=f"{routing} routing"
    )
    metrics["inference_routing"] = routing
    other = "hard" if routing == "soft" else "soft"
    beside, soft = _routed_as(model, other, data, progress)
    within = within_group_of(hierarchy, predictions if other == "hard" else soft)
    metrics["hard_routed" if other == "hard" else "mixture"] = _other_routing(beside, other, within)
    if flat is None:
        return metrics, predictions, None
    flat_metrics, flat_predictions = evaluate_model(
        flat,
        data,
        hierarchy=hierarchy,
        return_predictions=True,
        progress=progress,
        progress_label="flat baseline",
    )
    flat_metrics["within_group_accuracy"] = within_group_of(hierarchy, flat_predictions)
    comparison = {
        "conditional": _summary({**metrics, "within_group_accuracy": within}),
        "flat": _summary(flat_metrics),
        "model": BASELINE,
    }
    if routing == INFERENCE_ROUTING:  # the costs and speeds of the models as shipped
        for side, parts in (costs or {}).items():
            comparison[side].update(parts)
        comparison["conditional"]["images_per_second"] = images_per_second(model, data)
        comparison["flat"]["images_per_second"] = images_per_second(flat, data)
    metrics["baseline"] = _compared(comparison, metrics["num_samples"], noun_of(data))
    return metrics, predictions, flat_predictions


def _routed_as(model, routing, data, progress):
    """`evaluate_model` of `model` under another routing, which it is given back after."""
    kept, model.routing = model.routing, routing
    label = f"{routing} routing"
    try:
        return evaluate_model(
            model, data, return_predictions=True, progress=progress, progress_label=label
        )
    finally:
        model.routing = kept


def _other_routing(metrics, routing, within):
    """The scores of the routing beside the model's own; the soft mixture's hold the
    within-group accuracy too."""
    scores = {key: metrics[key] for key in ("accuracy", "group_accuracy", "gate_accuracy")}
    if routing != "soft":
        return scores
    note = "every expert runs; P(class) = P(group) x P(class | group)"
    return {**scores, "within_group_accuracy": within, "note": note}


_COMPARED = (
    "accuracy",
    "group_accuracy",
    "within_group_accuracy",
    "hierarchical_f1",
    "mistake_distance",
    "top_k_distance",
)


def _summary(metrics):
    return {key: metrics[key] for key in _COMPARED}


def _compared(comparison, num_samples, noun):
    """The comparison with its verdict, where the gap comes from and whose mistakes are
    milder."""
    conditional, flat = comparison["conditional"], comparison["flat"]
    return {
        **comparison,
        "verdict": baseline_verdict(conditional, flat, num_samples, noun),
        "where": gap_sources(conditional, flat, noun),
        "milder_mistakes": milder_mistakes(conditional, flat),
    }


def images_per_second(model, data):
    """Images per second of `model.predict` on up to `_TIMED_IMAGES` images (after a warm-up)."""
    images = []
    for index in range(len(data)):
        images.append(data.read_batch(index)[0])
        if sum(len(batch) for batch in images) >= _TIMED_IMAGES:
            break
    images = np.concatenate(images)[:_TIMED_IMAGES]
    model.predict(images, batch_size=64, verbose=0)
    start = time.perf_counter()
    model.predict(images, batch_size=64, verbose=0)
    return round(len(images) / max(time.perf_counter() - start, 1e-9), 1)


# === Baseline ===


def _baseline(run_dir, options, data, build, stopping_callbacks, fit_kwargs):
    """The flat baseline, trained (or reloaded when trained for as many epochs), and
    what the comparison records of it beside its scores: MACs per image, epochs
    trained and planned, its curves."""
    train_data, _ = data
    path = run_dir / BASELINE
    planned = sum(epochs for epochs, _ in baseline_stages(options))
    recorded = _recorded_baseline(run_dir) if path.is_file() else {}
    history = {}  # the baseline's curves in the report
    if recorded.get("epochs_planned") == planned:
        flat, trained = keras.models.load_model(path), recorded["epochs"]
        history = recorded["history"]
    else:
        announce(_baseline_heading(options, recorded.get("epochs_planned")), fit_kwargs)
        keras.utils.set_random_seed(options.seed)
        fresh = build()
        flat = flat_baseline(fresh, model_input_shape(options, train_data))
        callbacks = _logging_epochs(stopping_callbacks, history)
        trained = fit_flat(flat, options, data, callbacks, fit_kwargs)
        ckpt.save_model_atomic(flat, path)
    shape = model_input_shape(options, train_data)
    return flat, {
        "macs_per_image": int(routed_macs(flat, shape)["routed"]),
        "epochs": trained,
        "epochs_planned": planned,
        "history": history,
    }


# === Back-off ===


def _backoff(run_dir, hierarchy, validation, predictions, flat_predictions):
    """Choose the back-off thresholds of model.keras and baseline.keras on the validation
    split (`condnet.runs.backoff`), write backoff.json, and return metrics.json's
    `backoff`: each model's coverage and accuracy at each depth there, and its
    risk-coverage curves. Without a validation split no threshold is chosen (they
    would be chosen on the training images): the curves alone are returned."""
    scored = {BEST: predictions}
    if flat_predictions is not None:
        scored[BASELINE] = flat_predictions
    entries = {}
    if validation is not None:
        entries = {
            name: chosen_entry(hierarchy, scored_predictions, TARGET_ACCURACY, "validation split")
            for name, scored_predictions in scored.items()
        }
        write_backoff(run_dir, hierarchy, entries, keep=False)
    section = {"target_accuracy": TARGET_ACCURACY if entries else None}
    for side, name in (("conditional", BEST), ("flat", BASELINE)):
        if name in scored:
            thresholds = entries.get(name, {}).get("thresholds")
            source = "chosen here (backoff.json)"
            section[side] = backoff_of(hierarchy, scored[name], thresholds, name, source)
    return section


def _unknown(run_dir, hierarchy, validation, predictions, flat_predictions):
    """Choose the unknown-class thresholds of model.keras (scored in the group it routes
    to) and baseline.keras (its maximum softmax) on the validation split and write
    unknown.json (`condnet.runs.unknown`); nothing without a validation split."""
    if validation is None:
        return
    entries = {BEST: (predictions, predictions["route"])}
    if flat_predictions is not None:
        entries[BASELINE] = (flat_predictions, None)
    chosen = {
        name: chosen_unknown_entry(hierarchy, scored, route, FALSE_ALARM_RATE, "validation split")
        for name, (scored, route) in entries.items()
    }
    write_unknown(run_dir, hierarchy, chosen, keep=False)


def baseline_stages(options):
    """The flat baseline's `(epochs, learning rate)` stages: the conditional run's
    epochs (and its upcycling epochs, which trained a flat model first), then its
    fine-tuning epochs."""
    stages = [(options.epochs + options.upcycle_epochs, options.learning_rate)]
    if options.fine_tune_epochs:
        stages.append((options.fine_tune_epochs, options.fine_tune_learning_rate))
    return stages


def _recorded_baseline(run_dir):
    """What the run's metrics.json says of baseline.keras: `{"epochs": trained,
    "epochs_planned": budget, "history": its curves}`, or {} when it says nothing
    readable (a run that ended before writing it, or written before condnet recorded
    epochs)."""
    try:
        flat = json.loads((run_dir / METRICS).read_text())["baseline"]["flat"]
        recorded = {key: flat[key] for key in ("epochs", "epochs_planned")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    counts = all(type(value) is int and value >= 0 for value in recorded.values())
    return {**recorded, "history": _curves_of(flat.get("history"))} if counts else {}


def _curves_of(history):
    """A recorded baseline history (name -> per-epoch numbers), or {} where it is not one."""
    if not isinstance(history, dict):
        return {}
    numbers = (int, float)
    return {
        str(key): values
        for key, values in history.items()
        if isinstance(values, list) and all(isinstance(v, numbers) for v in values)
    }


def _logging_epochs(stopping_callbacks, history):
    """The recipe's stopping callbacks, and one that appends each epoch's logs to
    `history` (name -> per-epoch values, across the stages)."""

    def callbacks(validation, epochs, rate):
        return [*stopping_callbacks(validation, epochs, rate), _EpochLog(history)]

    return callbacks


class _EpochLog(keras.callbacks.Callback):
    def __init__(self, history):
        super().__init__()
        self.logged = history

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.logged.setdefault(key, []).append(float(value))


def _baseline_heading(options, stale_epochs=None):
    stages = baseline_stages(options)
    total = sum(epochs for epochs, _ in stages)
    tuned = f" (the last {stages[1][0]} fine-tuning the backbone's top)" if len(stages) > 1 else ""
    again = ""
    if stale_epochs is not None:
        again = f"; trained again: baseline.keras trained for {stale_epochs} epochs"
    return (
        f"=== Flat baseline, epochs 1-{total}{tuned}: one head over every class at the "
        f"routed MACs, for comparison (--no-baseline skips it){again} ==="
    )


def _conditional_epochs(options, state):
    """The epochs the conditional model trained: its history's, and upcycling's before."""
    return len((state or {}).get("history", [])) + options.upcycle_epochs


def announce(line, fit_kwargs):
    """Print a progress line on standard error unless the run is silent (`verbose=0`)."""
    if fit_kwargs.get("verbose", "auto") != 0:
        print(line, file=sys.stderr, flush=True)


def fit_flat(flat, options, data, stopping_callbacks, fit_kwargs, stages=None):
    """Fit a flat classifier on the run's data, `stages` of `(epochs, learning rate)`:
    by default the conditional run's schedule (`baseline_stages`), its epochs (backbone
    frozen when pretrained), then its fine-tuning epochs with the backbone's top
    unfrozen. Returns the epochs it trained (early stopping may end a stage sooner)."""
    train_data, validation = data
    backbone = _backbone(flat)
    if backbone is not None and is_pretrained(options.backbone, options.weights):
        freeze(backbone)  # a copy of a frozen backbone: see freeze
    trained = 0
    for index, (epochs, rate) in enumerate(stages or baseline_stages(options)):
        if index == 1 and backbone is not None:
            backbone.trainable = True
            unfreeze_top(backbone, min(options.fine_tune_layers, tunable_count(backbone)))
        model, inputs, epoch_ends = _flat_inputs(flat, options, data)
        model.compile(
            optimizer=loss_scaled(keras.optimizers.Adam(rate), flat),  # float16: scaled
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            **compile_options(),
        )
        history = model.fit(
            epochs=epochs,
            callbacks=[StopOnNaN(), *epoch_ends, *stopping_callbacks(validation, epochs, rate)],
            **{**inputs, **fit_kwargs},
        )
        trained += len(history.epoch)
    return trained


def _flat_inputs(flat, options, data):
    """`(model to fit, fit's data arguments, callbacks)` for one stage of the flat model.

    While its trunk is frozen and nothing augments the images, the head alone
    trains on the trunk's features computed once per image (the same layers as
    `flat`'s, so `flat` holds what it learned); else `flat` trains on the images.
    """
    train_data, validation = data
    parts = _trunk_and_head(flat)
    augmented = options.modality != "text" and options.augment != "none"
    # A trunk trained from scratch is never frozen here; a pretrained one (an image
    # backbone, or a text run's keras-hub backbone) is until fine-tuning.
    if parts is None or not features_fit(parts[0], data, augmented):
        x, validation_data, epoch_ends = fit_inputs(train_data, validation)
        return flat, {"x": x, "validation_data": validation_data, **IN_ORDER}, epoch_ends
    trunk, head = parts
    (tap,) = trunk.output
    x, y = frozen_features(trunk, train_data)
    inputs = {"x": x[tap], "y": y, "batch_size": options.batch_size, "shuffle": True}
    if validation is not None:
        held_out = frozen_features(trunk, validation)
        inputs["validation_data"] = (held_out[0][tap], held_out[1])
    return head, inputs, []


def _trunk_and_head(flat):
    """The trunk (one tapped output) and the head of a `flat_twin`, or None."""
    inner = [layer for layer in flat.layers if isinstance(layer, keras.Model)]
    if len(inner) != 2 or not isinstance(inner[0].output, dict) or len(inner[0].output) != 1:
        return None
    return inner[0], inner[1]


def _backbone(flat):
    for layer in flat._flatten_layers(include_self=False):
        if layer.name == "backbone" and isinstance(layer, keras.Model):
            return layer
    return None


# === Report parts ===


def _header(options, data, state, trained_routing):
    train_data, validation = data
    hierarchy, noun = train_data.hierarchy, noun_of(train_data)
    split = f"none: the figures are on the training {noun}"
    if validation is not None:
        split = (
            f"validation, {validation.num_samples} {noun} ({options.validation_split:.0%} of "
            f"each class, seed {options.seed})"
        )
    return {
        "data": (
            f"{train_data.num_samples} training {noun}, {hierarchy.num_classes} classes in "
            f"{hierarchy.num_groups} groups"
        ),
        "scored on": split,
        "routing": f"trained {trained_routing}; scored {INFERENCE_ROUTING} (only the chosen "
        "expert runs), the soft mixture beside it",
        "best epoch": _best_epoch(state, trained_routing, noun),
        "configuration": {k: v for k, v in options.to_config().items() if k != "split"},
    }


def _best_epoch(state, trained_routing, noun="images"):
    """The epoch model.keras keeps, and why its score is not the summary's."""
    history = (state or {}).get("history", [])
    scored = [row for row in history if "val_accuracy" in row or "accuracy" in row]
    if not scored:
        return "unknown"
    key = "val_accuracy" if "val_accuracy" in scored[0] else "accuracy"
    best = max(scored, key=lambda row: row[key])
    images = f"validation {noun}"
    if key != "val_accuracy":
        images = f"training {noun} (averaged over the epoch)"
    routing = {"soft": "soft: every expert, mixed by the gate", "hard": "hard"}.get(
        trained_routing, f"{trained_routing}, hard-routed outside training"
    )
    return (
        f"{best['epoch']} of {len(history)} (highest {key}, {best[key]:.4f}: the epoch "
        f"model.keras keeps). That {key} was measured by fit during training, on the {images} "
        f"with the training routing ({routing}); the summary scores the shipped "
        f"model.keras afterwards, {INFERENCE_ROUTING}-routed, so the two can differ"
    )


def _history_columns(history):
    columns = {}
    for row in history:
        for key, value in row.items():
            if key not in ("epoch", "phase"):
                columns.setdefault(key, []).append(value)
    return columns


def _data_root(data):
    """The folder all the training images share (the DATA_DIR of the run)."""
    return os.path.commonpath([str(path) for path in data.paths[:2000]]) if data.paths else "?"


def noun_of(folder):
    """What a folder of the run holds: "documents" or "images"."""
    return "documents" if isinstance(folder, TextFolder) else "images"


def model_input_shape(options, train_data):
    """The shape of one input of the run's model: `(sequence_length,)` token ids for
    documents, else `(height, width, channels)`."""
    if isinstance(train_data, TextFolder):
        return (options.sequence_length,)
    return (*side_pair(options.image_size), train_data.channels)


def side_pair(image_size):
    """`image_size` (an int or a pair) as `(height, width)`."""
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)

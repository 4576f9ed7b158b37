"""A run's unknown-class thresholds (`unknown.json`): chosen on its validation split, or given.

The thresholds live in a run file of their own rather than inside
backoff.json: they answer another question (is this image of a class the
expert knows?), are keyed by group rather than by level, and are chosen
for a false-alarm rate rather than a target accuracy, so either can be
chosen again or given without touching the other.

Where they are chosen: `condnet train` chooses them at the end of training,
beside the back-off thresholds, for a false-alarm rate of `FALSE_ALARM_RATE`
(0.05), on the validation split it already scores `model.keras` and
`baseline.keras` on; `condnet unknown RUN_DIR --false-alarm-rate X` chooses
them again (the split is drawn again from config.json), also for
`model.calibrated.keras`; `--thresholds cat=0.6 dog=0.5` stores thresholds
given directly. `predict --unknown` and `serve --unknown` read them.

The score: `condnet train` stores thresholds of the maximum softmax;
`condnet unknown` chooses them for `--score` (`DEFAULT_SCORE`, "gated_energy":
the log-sum-exp of the chosen expert's logits plus the log of the gate's
probability of its group, which told left-out classes apart better than the
expert's energy or maximum softmax on every data set of `benchmarks/unknown.py`,
where "mahalanobis" won on CIFAR-10 without outlier exposure and fell below
chance on photos20). The
Mahalanobis score's statistics (class means and precision per expert, fitted
on the run's training split) are plain arrays in `unknown.npz` beside
unknown.json, keyed `<model file>/<expert>/means`, so that model.keras stays
one file that loads safely.
"""

import io
import json
import sys
from pathlib import Path

import numpy as np

from condnet.evaluation.unknown import (
    DEFAULT_SCORE,
    FALSE_ALARM_RATE,
    UnknownDetector,
    check_false_alarm_rate,
    check_score,
    check_unknown_thresholds,
    choose_unknown_thresholds,
    flag_unknown,
    highest_threshold,
    unknown_scores,
)
from condnet.runs.backoff import _validation_split, validation_predictions
from condnet.runs.checkpoint import write_atomic
from condnet.runs.documents import refuse_text_run
from condnet.runs.files import BEST, UNKNOWN, UNKNOWN_STATISTICS
from condnet.runs.run_dir import _refuse_ensemble, load_run, read_unknown, read_unknown_statistics


def chosen_unknown_entry(hierarchy, predictions, route, false_alarm_rate, chosen_on):
    """unknown.json's entry of one model: thresholds chosen on its `predictions` (those of
    `evaluate_model`, known classes only) for `false_alarm_rate`, and the share of those
    images each expert flags there. `route`: the predictions' route, or None for a flat
    model (`condnet.evaluation.unknown.scored_route`)."""
    classes = predictions["classes"]
    thresholds = choose_unknown_thresholds(hierarchy, classes, route, false_alarm_rate)
    scored = unknown_scores(hierarchy, classes, route)
    flagged = flag_unknown(hierarchy, scored, thresholds)
    per_expert = {
        group: _share(flagged[scored["route"] == g]) for g, group in enumerate(hierarchy.groups)
    }
    return {
        "thresholds": thresholds,
        "false_alarm_rate": false_alarm_rate,
        "chosen_on": f"{chosen_on} ({len(classes)} images)",
        "there": {"flagged": _share(flagged), "flagged_per_expert": per_expert},
    }


def _share(flags):
    return float(np.mean(flags)) if len(flags) else None


def write_unknown(run_dir, hierarchy, entries, keep=True):
    """Write `entries` (model file -> entry) into the run's unknown.json, keeping the
    entries of other model files when `keep`; returns the whole record."""
    path = Path(run_dir) / UNKNOWN
    models = read_unknown(path, hierarchy)["models"] if keep and path.is_file() else {}
    record = {"groups": list(hierarchy.groups), "models": {**models, **entries}}
    write_atomic(path, json.dumps(record, indent=1) + "\n")
    return record


def unknown_run(
    run_dir,
    false_alarm_rate=FALSE_ALARM_RATE,
    thresholds=None,
    model_file=None,
    score=None,
    break_lock=False,
    progress=False,
):
    """`condnet unknown`: choose (or store) a run's unknown-class thresholds.

    Without `thresholds`, one per expert is chosen for `false_alarm_rate` on
    the run's validation split for `model_file`, or by default for each of
    model.keras, model.calibrated.keras and baseline.keras the run holds, on
    `score` (`DEFAULT_SCORE` when None; a feature score's statistics are
    fitted on the run's training split and written to unknown.npz). With
    `thresholds` (a dict `group -> threshold or None`, maximum-softmax
    thresholds), those are stored for `model_file` (model.keras by default).
    Holds the run's lock. `progress=True` says what it does on standard
    error. Returns the record written to `RUN_DIR/unknown.json`.
    """
    from condnet.runs.lock import run_lock

    if thresholds is not None and score not in (None, "softmax"):
        raise ValueError(
            "Thresholds given directly are maximum-softmax thresholds (probabilities); a "
            f"{score} score's thresholds are chosen with its statistics: leave out "
            f"--thresholds, or --score. Received: score={score!r}"
        )
    score = check_score(DEFAULT_SCORE if score is None else score)
    with run_lock(run_dir, command="unknown", break_lock=break_lock):
        return _unknown_locked(
            Path(run_dir), false_alarm_rate, thresholds, model_file, score, progress
        )


def _unknown_locked(run_dir, false_alarm_rate, thresholds, model_file, score, progress):
    model, config = load_run(run_dir, model_file=model_file)
    refuse_text_run(run_dir, config, "unknown")
    hierarchy = model.hierarchy
    name = Path(model_file or BEST).name
    if model_file is not None and name != str(model_file):
        raise ValueError(
            "unknown.json keeps thresholds for the run's own model files: pass a file name "
            f"in the run (model.keras, model.calibrated.keras, baseline.keras). "
            f"Received: model={model_file!r}"
        )
    if thresholds is not None:
        entry = {
            "score": "softmax",
            "thresholds": check_unknown_thresholds(hierarchy, thresholds),
            "chosen_on": "given",
        }
        return write_unknown(run_dir, hierarchy, {name: entry})
    rate = check_false_alarm_rate(false_alarm_rate)
    _refuse_ensemble(
        run_dir, model, config, "unknown", "chooses one model's thresholds on its validation split"
    )
    if score != "softmax":
        return _feature_entries(run_dir, config, model_file, score, rate, progress)
    entries = {}
    for each, chosen, predictions in validation_predictions(
        run_dir, config, model_file, progress, "unknown-class thresholds"
    ):
        route = None if chosen.routing is None else predictions["route"]
        entries[each] = chosen_unknown_entry(
            hierarchy, predictions, route, rate, "validation split"
        )
    return write_unknown(run_dir, hierarchy, entries)


def _feature_entries(run_dir, config, model_file, score, rate, progress):
    """Choose each model file's thresholds on a feature `score` on the validation split,
    for "mahalanobis" with statistics fitted on the training split (written to
    unknown.npz); write unknown.json."""
    from condnet.evaluation import unknown_features
    from condnet.runs.run_data import load_data

    training = load_data(config["options"])[0] if score == "mahalanobis" else None
    validation = _validation_split(run_dir, config)
    names = [Path(model_file).name] if model_file else _model_files(run_dir)
    entries, statistics = {}, {}
    for name in names:
        if progress:
            print(f"Fitting the {score} score of {name} ...", file=sys.stderr, flush=True)
        model, _ = load_run(run_dir, model_file=name)
        fitted = None
        if training is not None:
            readers = unknown_features.feature_readers(model)
            _, features, labels = _read_folder(model, readers, training)
            fitted = unknown_features.fit_statistics(model.hierarchy, readers, features, labels)
        empty = {group: None for group in model.hierarchy.groups}
        detector = UnknownDetector(model.hierarchy, empty, score, fitted)
        scored = _scored_folder(model, detector, validation)
        entries[name] = feature_entry(model.hierarchy, scored, score, rate)
        statistics |= {f"{name}/{key}": value for key, value in (fitted or {}).items()}
    if score == "mahalanobis":
        _write_statistics(run_dir, names, statistics)
    return write_unknown(run_dir, model.hierarchy, entries)


def _model_files(run_dir):
    from condnet.runs.files import BASELINE, CALIBRATED

    return [n for n in (BEST, CALIBRATED, BASELINE) if (run_dir / n).is_file()]


def _read_folder(model, readers, folder):
    """(outputs, features, labels) of every decoded image of `folder`."""
    from condnet.evaluation.evaluate import predict_batch
    from condnet.evaluation.unknown_features import read_features

    outputs, features, labels = [], [], []
    for index in range(len(folder)):
        images, batch_labels, errors = folder.read_batch(index)
        valid = np.array([error is None for error in errors], bool)
        if valid.any():
            outputs.append(predict_batch(model, images[valid]))
            features.append(read_features(model, readers, images[valid]))
            labels.append(batch_labels[valid])
    return (
        {key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]},
        {name: np.concatenate([f[name] for f in features]) for name in readers},
        np.concatenate(labels),
    )


def _scored_folder(model, detector, folder):
    """`detector`'s scores (a dict of score and route) on every decoded image of `folder`."""
    from condnet.evaluation.evaluate import predict_batch

    parts = []
    for index in range(len(folder)):
        images, _, errors = folder.read_batch(index)
        valid = np.array([error is None for error in errors], bool)
        if valid.any():
            images = images[valid]
            parts.append(detector.scores(model, images, predict_batch(model, images)))
    return {key: np.concatenate([part[key] for part in parts]) for key in ("score", "route")}


def feature_entry(hierarchy, scored, score, false_alarm_rate):
    """unknown.json's entry of one model on a feature `score`: per expert the highest
    threshold flagging at most `false_alarm_rate` of the known-class images `scored`
    (validation) routed to it, and the share of them flagged there."""
    thresholds = {
        group: highest_threshold(scored["score"][scored["route"] == g], false_alarm_rate)
        for g, group in enumerate(hierarchy.groups)
    }
    flagged = flag_unknown(hierarchy, scored, thresholds, score)
    per_expert = {
        group: _share(flagged[scored["route"] == g]) for g, group in enumerate(hierarchy.groups)
    }
    return {
        "score": score,
        "thresholds": thresholds,
        "false_alarm_rate": false_alarm_rate,
        "chosen_on": f"validation split ({len(flagged)} images)",
        "there": {"flagged": _share(flagged), "flagged_per_expert": per_expert},
    }


def _write_statistics(run_dir, names, statistics):
    """Replace the statistics of the model files `names` in unknown.npz, keeping others'."""
    path = run_dir / UNKNOWN_STATISTICS
    kept = read_unknown_statistics(path) if path.is_file() else {}
    kept = {k: v for k, v in kept.items() if k.split("/")[0] not in names}
    buffer = io.BytesIO()
    np.savez(buffer, **kept, **statistics)
    write_atomic(path, buffer.getvalue())


def unknown_section(run_dir, models, data):
    """`evaluate`'s unknown-class figures: for each `(side, model file, model)` of `models`
    whose thresholds the run holds, the share of `data`'s images (all of known classes, so
    each one flagged is a false alarm) flagged unknown, overall and per expert. None when
    the run holds no thresholds for any of them."""
    from condnet.runs.run_dir import run_unknown_detector

    section = {}
    for side, name, model in models:
        detector = run_unknown_detector(run_dir, model.hierarchy, name)
        if detector is None:
            continue
        scored = _scored_folder(model, detector, data)
        flagged = flag_unknown(model.hierarchy, scored, detector.thresholds, detector.score)
        section[side] = {
            "model": Path(name).name,
            "score": detector.score,
            "thresholds": detector.thresholds,
            "flagged": _share(flagged),
            "flagged_per_expert": {
                group: _share(flagged[scored["route"] == g])
                for g, group in enumerate(model.hierarchy.groups)
            },
        }
    return section or None


def flagged_line(side):
    """One line on a model's entry of `unknown_section`: its score and the share of the
    evaluated images (all of known classes) it flags."""
    return (
        f"{side['model']}: flags {_percent(side['flagged'])} of these images unknown "
        f"({side['score']} score, the run's unknown.json; they are all of known classes, so "
        "each one flagged is a false alarm)"
    )


def _percent(share):
    return "-" if share is None else f"{share:.1%}"


def unknown_line(name, entry):
    """One line on a model's entry of unknown.json: each expert's threshold, where it was
    chosen, and the share of those images it flags."""
    shown = ", ".join(
        f"{group} {'never' if value is None else f'{value:.4f}'}"
        for group, value in entry["thresholds"].items()
    )
    chosen_on = entry.get("chosen_on", "given")
    where = "(given)" if chosen_on == "given" else f"chosen on the {chosen_on}"
    score = entry.get("score", "softmax")
    line = f"{name}: unknown-class thresholds ({score} score) {shown} {where}"
    flagged = (entry.get("there") or {}).get("flagged")
    return line if flagged is None else f"{line}; {flagged:.1%} of those images flagged"

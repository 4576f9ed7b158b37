"""A run's back-off thresholds (`backoff.json`): chosen on its validation split, or given.

Where the thresholds are chosen: `condnet train` chooses them at the end of
training, for a target accuracy of `TARGET_ACCURACY` (0.95), on the
validation split it already scores `model.keras` and `baseline.keras` on;
`condnet backoff RUN_DIR --target-accuracy X` chooses them again (the split
is drawn again from config.json, as `condnet calibrate` does), also for
`model.calibrated.keras`; `--thresholds group=0.8 class=0.9` stores thresholds
given directly. `predict --back-off`, `serve --back-off` and `evaluate` read
them; `predict` and `serve` also take `--thresholds` without storing them.
"""

import json
import sys
from pathlib import Path

from condnet.evaluation.backoff import backoff_scores, check_thresholds, choose_thresholds
from condnet.evaluation.evaluate import evaluate_model
from condnet.evaluation.mistakes import level_names, tree_levels
from condnet.runs.checkpoint import write_atomic
from condnet.runs.documents import refuse_text_run
from condnet.runs.files import BACKOFF, BASELINE, BEST, CALIBRATED
from condnet.runs.run_dir import _refuse_ensemble, load_run, read_backoff, refuse_extended

TARGET_ACCURACY = 0.95


def chosen_entry(hierarchy, predictions, target_accuracy, chosen_on):
    """backoff.json's entry of one model: thresholds chosen on its `predictions` (those of
    `evaluate_model`) for `target_accuracy`, and its scores there (which reach the target
    at every level that answers)."""
    thresholds = choose_thresholds(
        hierarchy,
        predictions["labels"],
        predictions["classes"],
        target_accuracy,
        predictions.get("groups"),
    )
    scores = backoff_scores(
        hierarchy,
        predictions["labels"],
        predictions["classes"],
        thresholds,
        predictions.get("groups"),
    )
    return {
        "thresholds": thresholds,
        "target_accuracy": target_accuracy,
        "chosen_on": f"{chosen_on} ({len(predictions['labels'])} images)",
        "there": scores,
    }


def backoff_line(scores):
    """One line on a model's back-off answers (`backoff_scores`, or an entry of metrics'
    `backoff`): how many are answered at each depth, and how many of those are right."""
    name = f"{scores['model']}: " if scores.get("model") else ""
    if "levels" not in scores:
        return f"{name}no back-off thresholds (`condnet backoff RUN_DIR` chooses them)"
    depths = ", ".join(
        f"{level['level']} {level['coverage']:.1%}"
        + ("" if level["accuracy"] is None else f" ({level['accuracy']:.4f} right)")
        for level in reversed(scores["levels"])
    )
    accuracy = "-" if scores["accuracy"] is None else f"{scores['accuracy']:.4f}"
    return (
        f"{name}back-off answers {depths}, unsure {scores['unsure']:.1%}; accuracy of the "
        f"answers given {accuracy}"
    )


def write_backoff(run_dir, hierarchy, entries, keep=True):
    """Write `entries` (model file -> entry) into the run's backoff.json, keeping the
    entries of other model files when `keep`; returns the whole record."""
    path = Path(run_dir) / BACKOFF
    models = read_backoff(path, hierarchy)["models"] if keep and path.is_file() else {}
    record = {
        "levels": list(level_names(len(tree_levels(hierarchy)[1]))),
        "models": {**models, **entries},
    }
    write_atomic(path, json.dumps(record, indent=1) + "\n")
    return record


def backoff_run(
    run_dir,
    target_accuracy=TARGET_ACCURACY,
    thresholds=None,
    model_file=None,
    break_lock=False,
    progress=False,
):
    """`condnet backoff`: choose (or store) a run's back-off thresholds.

    Without `thresholds`, they are chosen for `target_accuracy` on the run's
    validation split for `model_file`, or by default for each of
    model.keras, model.calibrated.keras and baseline.keras the run holds.
    With `thresholds` (a dict `level -> threshold or None`), those are stored
    for `model_file` (model.keras by default). Holds the run's lock.
    `progress=True` says what it does on standard error. Returns the record
    written to `RUN_DIR/backoff.json`.
    """
    from condnet.runs.lock import run_lock

    with run_lock(run_dir, command="backoff", break_lock=break_lock):
        return _backoff_locked(Path(run_dir), target_accuracy, thresholds, model_file, progress)


def _backoff_locked(run_dir, target_accuracy, thresholds, model_file, progress):
    model, config = load_run(run_dir, model_file=model_file)
    refuse_text_run(run_dir, config, "backoff")
    hierarchy = model.hierarchy
    name = Path(model_file or BEST).name
    if model_file is not None and Path(model_file).name != str(model_file):
        raise ValueError(
            "backoff.json keeps thresholds for the run's own model files: pass a file name "
            f"in the run (model.keras, model.calibrated.keras, baseline.keras). "
            f"Received: model={model_file!r}"
        )
    if thresholds is not None:
        entry = {"thresholds": check_thresholds(hierarchy, thresholds), "chosen_on": "given"}
        return write_backoff(run_dir, hierarchy, {name: entry})
    if target_accuracy is None:
        raise ValueError(
            "Give a target accuracy (e.g. 0.95) or the thresholds themselves. "
            "Received: target_accuracy=None, thresholds=None"
        )
    from condnet.evaluation.backoff import check_target

    target = check_target(target_accuracy)
    _refuse_ensemble(
        run_dir, model, config, "backoff", "chooses one model's thresholds on its validation split"
    )
    entries = {}
    for each, _, predictions in validation_predictions(
        run_dir, config, model_file, progress, "thresholds"
    ):
        entries[each] = chosen_entry(hierarchy, predictions, target, "validation split")
    return write_backoff(run_dir, hierarchy, entries)


def validation_predictions(run_dir, config, model_file, progress, what):
    """`(file name, model, predictions)` on the run's validation split for `model_file`,
    or for each of model.keras, model.calibrated.keras and baseline.keras the run holds:
    what `condnet backoff` and `condnet unknown` choose their thresholds on."""
    validation = _validation_split(run_dir, config)
    names = [n for n in (BEST, CALIBRATED, BASELINE) if (run_dir / n).is_file()]
    for each in [Path(model_file).name] if model_file else names:
        if progress:
            print(
                f"Choosing the {what} of {each} on {validation.num_samples} validation images ...",
                file=sys.stderr,
                flush=True,
            )
        chosen, _ = load_run(run_dir, model_file=each)
        _, predictions = evaluate_model(chosen, validation, return_predictions=True)
        yield each, chosen, predictions


def _validation_split(run_dir, config):
    from condnet.runs.run_data import check_split, load_data

    refuse_extended(run_dir, config, "backoff / unknown")
    train_data, validation = load_data(config["options"])
    check_split(run_dir, config["options"]["data_dir"], train_data, validation)
    if validation is None:
        raise ValueError(
            f"The run {str(run_dir)!r} has no validation split (validation_split=0), and "
            "thresholds must be chosen on images the model did not train on. Give them "
            "with --thresholds, or train with --validation-split 0.2 (or more)."
        )
    return validation

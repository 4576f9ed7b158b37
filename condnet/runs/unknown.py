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
"""

import json
from pathlib import Path

import numpy as np

from condnet.evaluation.unknown import (
    FALSE_ALARM_RATE,
    check_false_alarm_rate,
    check_unknown_thresholds,
    choose_unknown_thresholds,
    flag_unknown,
    unknown_scores,
)
from condnet.runs.backoff import validation_predictions
from condnet.runs.checkpoint import BEST, write_atomic
from condnet.runs.run_dir import UNKNOWN, _refuse_ensemble, load_run, read_unknown


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
    break_lock=False,
    progress=False,
):
    """`condnet unknown`: choose (or store) a run's unknown-class thresholds.

    Without `thresholds`, one per expert is chosen for `false_alarm_rate` on
    the run's validation split for `model_file`, or by default for each of
    model.keras, model.calibrated.keras and baseline.keras the run holds.
    With `thresholds` (a dict `group -> threshold or None`), those are
    stored for `model_file` (model.keras by default). Holds the run's lock.
    Returns the record written to `RUN_DIR/unknown.json`.
    """
    from condnet.runs.lock import run_lock

    with run_lock(run_dir, command="unknown", break_lock=break_lock):
        return _unknown_locked(Path(run_dir), false_alarm_rate, thresholds, model_file, progress)


def _unknown_locked(run_dir, false_alarm_rate, thresholds, model_file, progress):
    model, config = load_run(run_dir, model_file=model_file)
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
            "thresholds": check_unknown_thresholds(hierarchy, thresholds),
            "chosen_on": "given",
        }
        return write_unknown(run_dir, hierarchy, {name: entry})
    rate = check_false_alarm_rate(false_alarm_rate)
    _refuse_ensemble(
        run_dir, model, config, "unknown", "chooses one model's thresholds on its validation split"
    )
    entries = {}
    for each, chosen, predictions in validation_predictions(
        run_dir, config, model_file, progress, "unknown-class thresholds"
    ):
        route = None if chosen.routing is None else predictions["route"]
        entries[each] = chosen_unknown_entry(
            hierarchy, predictions, route, rate, "validation split"
        )
    return write_unknown(run_dir, hierarchy, entries)


def unknown_line(name, entry):
    """One line on a model's entry of unknown.json: each expert's threshold, where it was
    chosen, and the share of those images it flags."""
    shown = ", ".join(
        f"{group} {'never' if value is None else f'{value:.4f}'}"
        for group, value in entry["thresholds"].items()
    )
    chosen_on = entry.get("chosen_on", "given")
    where = "(given)" if chosen_on == "given" else f"chosen on the {chosen_on}"
    line = f"{name}: unknown-class thresholds {shown} {where}"
    flagged = (entry.get("there") or {}).get("flagged")
    return line if flagged is None else f"{line}; {flagged:.1%} of those images flagged"

"""`condnet tune`: hyperparameter search over the training recipe, on KerasTuner.

Each trial is an ordinary run directory (`TUNE_DIR/trials/trial-<id>`) trained
by `condnet.train` with the trial's values; KerasTuner's oracle (random,
Bayesian or Hyperband) chooses the values and keeps the search state in
`TUNE_DIR/search`, so an interrupted search resumes where it stopped (a trial
cut short resumes from its last epoch). Distributed tuning is KerasTuner's
own: a chief oracle and workers over gRPC, configured by
`KERASTUNER_TUNER_ID`, `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT`
(`--chief` / `--worker` set them).

The trials read what `condnet train` would read in DATA_DIR (`search_modality`):
`--modality image` or `text`, or with `auto` (the default) documents when more of
its files are text than images. The default space is that modality's (`SPACE` for
images, `TEXT_SPACE` for documents); an option given on the command line is fixed
and leaves the space, and a space file may name only options of that modality.
"""

import dataclasses
import json
import math
import os
from pathlib import Path

from condnet.choices import STAGED_MIN_EPOCHS, TUNE_OBJECTIVES, TUNERS
from condnet.runs.files import METRICS
from condnet.runs.options import IMAGE_OPTIONS, TEXT_OPTIONS, TrainingOptions, normalised
from condnet.runs.outputs import mark, write_file

# The default search space of images: option -> {"choices": [...]} or {"min", "max", "sampling"}.
# It is sized for a first search on a CPU: the widths are small_cnn's default and a
# narrower trunk, no wider (48 96 192 filters cost about 2.25x the MACs and time of
# 32 64 128 per epoch); a --space file adds wider ones once the search has its bearings.
SPACE = {
    "routing": {"choices": ["soft", "hard"]},
    "strategy": {"choices": ["joint", "staged"]},
    "expert_placement": {"choices": ["branch", "top"]},
    "filters": {"choices": ["32 64 128", "24 48 96"]},
    "learning_rate": {"min": 3e-4, "max": 3e-3, "sampling": "log"},
    "loss_schedule": {"choices": ["none", "coarse_to_fine"]},
    "augment": {"choices": ["none", "light", "standard"]},
}
# The default space of a folder of documents, sized alike: the two cheap trunks (a bag of
# embeddings, two 1D convolutions; gru and transformer cost far more per document), the
# default sequence length and vocabulary and cheaper ones, and Adam around the text
# runs' 1e-2 (a bag of embeddings learns slowly at the images' 1e-3).
TEXT_SPACE = {
    "text_trunk": {"choices": ["bag", "cnn"]},
    "sequence_length": {"choices": [128, 256]},
    "vocabulary_size": {"choices": [10000, 20000]},
    "learning_rate": {"min": 3e-3, "max": 3e-2, "sampling": "log"},
    "routing": {"choices": ["soft", "hard"]},
    "strategy": {"choices": ["joint", "staged"]},
    "loss_schedule": {"choices": ["none", "coarse_to_fine"]},
}
SPACES = {"image": SPACE, "text": TEXT_SPACE}
SUMMARY = "summary.json"
TRIAL = "trial.json"  # in each trial's run directory: its id, the tuner that ran it, its values


def search_modality(data_dir, options):
    """What the trials of a search on `data_dir` read, `"image"` or `"text"`: the
    `modality` of `options` (a dict of training options), or for `"auto"` what
    `condnet train` decides (`condnet.runs.run_config.resolve_modality`: documents when more
    of the folder's files are text than images). The options are checked as a run of
    that modality checks them (a text run refuses the image options)."""
    from condnet.runs.run_config import resolve_modality

    fields, _ = TrainingOptions.fields_of(options)
    return resolve_modality(TrainingOptions(**fields), data_dir).modality


def read_space(path=None, modality="image", fixed=()):
    """The default space of `modality` (`SPACE` for images, `TEXT_SPACE` for documents)
    without the options in `fixed` (those given on the command line), with the entries of
    a JSON / YAML file replacing its own (an entry may be a fixed value,
    `{"choices": [...]}` or `{"min", "max", "sampling"}`).

    Every entry is checked here, before the first trial: it must name an option of
    `modality` that `fixed` leaves free, and each value it allows must be one the option
    takes (`condnet train --help`), or a ValueError names the entry and value.
    """
    space = {name: entry for name, entry in SPACES[modality].items() if name not in fixed}
    if path is None:
        return space
    loaded = _load_space(path)
    if not isinstance(loaded, dict):
        raise ValueError(
            f"The space file {str(path)!r} must map option names to choices. "
            f"Received: {type(loaded).__name__}"
        )
    known = {f.name for f in dataclasses.fields(TrainingOptions)}
    for name, entry in loaded.items():
        if name not in known:
            raise ValueError(
                f"The space file {str(path)!r} names {name!r}, which is not a training "
                f"option (see `condnet train --help`). Received: {name!r}"
            )
        _check_searchable(f"The space file {str(path)!r}", name, modality, fixed)
        space[name] = entry if isinstance(entry, dict) else {"choices": [entry]}
        problem = _entry_problem(name, space[name])
        if problem:
            raise ValueError(
                f"The space file {str(path)!r} has a bad entry for {name!r}: {problem}. Fix "
                f"or remove the entry. Received: {name}={entry!r:.200}"
            )
    return space


def _check_searchable(space, name, modality, fixed=()):
    """An entry of `space` (a space file, "The space file 'space.json'") must name an
    option that the search's trials read and that the command line leaves free."""
    source = f"{space} names {name!r}"
    if name == "modality":
        raise ValueError(
            f"{source}: a search reads one modality, decided as `condnet train` decides it. "
            f"Remove the entry and pass --modality image or text. Received: {name!r}"
        )
    if name in fixed:
        flag = "--" + name.replace("_", "-")
        raise ValueError(
            f"{source}, which {flag} also fixes on the command line. Keep one: remove the "
            f"entry, or leave out {flag}. Received: {name!r}"
        )
    other = IMAGE_OPTIONS if modality == "text" else TEXT_OPTIONS
    if name in other:
        reads, kind = ("documents", "images") if modality == "text" else ("images", "documents")
        raise ValueError(
            f"{source}, an option of runs on {kind}, and this search reads {reads} "
            f"(modality={modality!r}; auto decides it from DATA_DIR's files). Remove the "
            f"entry, or pass --modality {'image' if modality == 'text' else 'text'} for a "
            f"folder of {kind}. Received: {name!r}"
        )


def _load_space(path):
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    errors, parse = (ValueError, RecursionError), json.loads
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        import yaml

        errors, parse = (*errors, yaml.YAMLError), yaml.safe_load
    try:
        return parse(text)
    except errors as error:
        problem = " ".join(str(error).split())[:200] or type(error).__name__
        raise ValueError(f"The space file {str(path)!r} cannot be read: {problem}") from None


SAMPLINGS = ("linear", "log", "reverse_log")


def _entry_problem(name, entry):
    """Why KerasTuner or the option `name` would refuse a space entry, or None."""
    if "choices" in entry:
        extra = set(entry) - {"choices"}
        choices = entry["choices"]
        if extra or not isinstance(choices, list) or not choices:
            return "'choices' must be a non-empty list and stand alone"
        if any(not isinstance(c, bool | int | float | str) for c in choices):
            return "KerasTuner choices must be numbers, strings or true/false"
        if len({type(c) for c in choices}) > 1:
            return "KerasTuner choices must all have one type"
        return next(filter(None, (_value_problem(name, c) for c in choices)), None)
    if not {"min", "max"} <= set(entry) or set(entry) - {"min", "max", "sampling"}:
        return "an entry is a value, {'choices': [...]} or {'min', 'max', 'sampling'}"
    return _range_problem(name, entry)


def _range_problem(name, entry):
    low, high, sampling = entry["min"], entry["max"], entry.get("sampling", "linear")
    if not (_is_number(low) and _is_number(high) and low <= high):
        return "'min' and 'max' must be finite numbers, 'min' <= 'max'"
    if sampling not in SAMPLINGS or (sampling != "linear" and low <= 0):
        return f"'sampling' is one of {list(SAMPLINGS)}, and log sampling needs 'min' > 0"
    return _value_problem(name, low) or _value_problem(name, high)


def _is_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _value_problem(name, value):
    try:
        normalised(name, _values({name: value})[name])
    except (TypeError, ValueError) as error:
        return f"{value!r:.80} is refused ({str(error).split(' Received:')[0].rstrip('.')})"
    return None


def hyperparameters(space):
    """A KerasTuner `HyperParameters` declaring every entry of `space`."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    for name, entry in space.items():
        if "choices" in entry:
            hp.Choice(name, list(entry["choices"]))
        elif {"min", "max"} <= set(entry):
            if isinstance(entry["min"], int) and isinstance(entry["max"], int):
                hp.Int(name, entry["min"], entry["max"], sampling=entry.get("sampling", "linear"))
            else:
                sampling = entry.get("sampling", "linear")
                hp.Float(name, float(entry["min"]), float(entry["max"]), sampling=sampling)
        else:
            raise ValueError(
                f"Space entry {name!r} needs 'choices' or 'min' and 'max'. Received: {entry!r}"
            )
    return hp


def _values(trial_values):
    """Trial values as `condnet.train` options (filters: "32 64 128" -> (32, 64, 128))."""
    values = dict(trial_values)
    if isinstance(values.get("filters"), str):
        values["filters"] = tuple(int(f) for f in values["filters"].split())
    if values.get("loss_schedule") == "none":
        values["loss_schedule"] = None
    return values


def make_tuner(
    data_dir,
    tune_dir,
    options,
    tuner="random",
    trials=10,
    objective="val_accuracy",
    space=None,
    verbose=0,
):
    """A KerasTuner tuner whose trials are `condnet.train` runs.

    The trials read what `search_modality` decides for `data_dir` and `options`; without
    a `space` they search that modality's default space less the options in `options`
    (see `read_space`), and a `space` naming options of the other modality is refused.
    """
    import keras_tuner as kt

    if tuner not in TUNERS or objective not in TUNE_OBJECTIVES:
        raise ValueError(
            f"tuner must be one of {list(TUNERS)} and objective one of {list(TUNE_OBJECTIVES)}. "
            f"Received: tuner={tuner!r}, objective={objective!r}"
        )
    modality = search_modality(data_dir, options)
    space = space or read_space(None, modality, options)
    for name in space:
        _check_searchable("The space", name, modality)
    options = {**options, "modality": modality}  # every trial reads what the space is for
    epochs = options.get("epochs", TrainingOptions.__dataclass_fields__["epochs"].default)
    space = strategies_for(space, fewest_trial_epochs(tuner, epochs, space))
    _claim(tune_dir, data_dir)
    goal = kt.Objective(objective, direction="max")
    hp = hyperparameters(space)
    common = dict(objective=goal, hyperparameters=hp, tune_new_entries=False)
    if tuner == "random":
        oracle = kt.oracles.RandomSearchOracle(max_trials=trials, **common)
    elif tuner == "bayesian":
        oracle = kt.oracles.BayesianOptimizationOracle(max_trials=trials, **common)
    else:
        oracle = kt.oracles.HyperbandOracle(max_epochs=epochs, **common)

    class RunTuner(kt.engine.base_tuner.BaseTuner):
        def run_trial(self, trial):
            return run_trial(data_dir, tune_dir, options, trial, verbose)

    return RunTuner(oracle, directory=str(tune_dir), project_name="search")


def fewest_trial_epochs(tuner, epochs, space):
    """The fewest epochs a trial of the search trains: `epochs` (or the least a space's
    `epochs` entry allows); Hyperband's first round of its most aggressive bracket trains
    `ceil(epochs / 3 ** (brackets - 1))` (KerasTuner's HyperbandOracle: factor 3, brackets
    while `epochs / 3 ** n >= 1`)."""
    if tuner == "hyperband":
        brackets, budget = 0, epochs
        while budget >= 1:
            budget, brackets = budget / 3, brackets + 1
        return math.ceil(epochs / 3 ** (brackets - 1))
    entry = space.get("epochs", {})
    return min(entry.get("choices", [epochs])) if "min" not in entry else entry["min"]


def strategies_for(space, epochs):
    """`space` with its strategies fitted to trials of `epochs` epochs: staged trains the
    gate, then the experts, and needs `STAGED_MIN_EPOCHS`. The default space then searches
    joint alone (and says so); a space file that asks for staged is refused."""
    entry = space.get("strategy") or {}
    if epochs >= STAGED_MIN_EPOCHS or "staged" not in entry.get("choices", []):
        return space
    if entry not in [default["strategy"] for default in SPACES.values()]:
        raise ValueError(
            f"The space asks for the staged strategy, which trains the gate, then the experts: "
            f"it needs {STAGED_MIN_EPOCHS} epochs or more, and trials of this search may train "
            f"{epochs}. Pass more --epochs (Hyperband's first rounds train fewer than --epochs) "
            "or take staged out of the space's strategy. "
            f"Received: strategy={entry!r}, {epochs} epoch(s) per trial"
        )
    print(
        f"condnet tune: trials of {epochs} epoch(s) leave the staged strategy (gate, then "
        f"experts: {STAGED_MIN_EPOCHS} epochs at least) no room, so this search tries the "
        f"joint strategy only. Pass --epochs {STAGED_MIN_EPOCHS} or more to search both.",
        flush=True,
    )
    return {**space, "strategy": {"choices": ["joint"]}}


KIND = "search"  # what the output marker of TUNE_DIR says
SEARCH_FILES = ("trials", "search", SUMMARY, "summary.md", "pareto.png")


def _claim(tune_dir, data_dir):
    """TUNE_DIR must be new, empty, or a search condnet wrote (which then resumes)."""
    from condnet.runs.claim import check_run_dir

    check_run_dir(tune_dir, data_dir, kind=KIND)
    Path(tune_dir).mkdir(parents=True, exist_ok=True)
    mark(tune_dir, KIND, SEARCH_FILES)


def run_trial(data_dir, tune_dir, options, trial, verbose=0):
    """Train (or resume) one trial's run; its objectives."""
    from condnet.runs.files import RUN_FILES
    from condnet.runs.recipe import resume, train
    from condnet.runs.run_dir import read_state

    values = _values(trial.hyperparameters.values)
    if "tuner/epochs" in values:  # Hyperband's budget for this trial
        values["epochs"] = values.pop("tuner/epochs")
    values = {k: v for k, v in values.items() if not k.startswith("tuner/")}
    run_dir = Path(tune_dir) / "trials" / f"trial-{trial.trial_id}"
    # A trial is scored on its own validation accuracy: no flat baseline unless asked, and
    # no report (the search writes its best trial's, `report_best`).
    settings = {"baseline": False, "report": False, **options, **values}
    run_dir.mkdir(parents=True, exist_ok=True)
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    record = {
        "trial": trial.trial_id,
        "number": trial_number(trial.trial_id),  # KerasTuner's "Running Trial #N"
        "tuner": tuner_id,
        "values": trial.hyperparameters.values,
    }
    mark(run_dir, "run", RUN_FILES)  # a run condnet writes, which also holds TRIAL
    write_file(run_dir / TRIAL, json.dumps(record, indent=1) + "\n")
    # The search owns its trials: the lock of a trial whose process died (a search killed
    # mid-trial) is stale, and breaking it lets the trial continue.
    if read_state(run_dir) is not None and not (run_dir / METRICS).is_file():
        result = resume(run_dir, break_lock=True, verbose=verbose)  # left unfinished
    else:
        result = train(
            data_dir, run_dir, overwrite=True, break_lock=True, verbose=verbose, **settings
        )
    metrics = result["metrics"]
    routed = metrics.get("macs_per_image", {}).get("routed") or math.nan
    return {
        "val_accuracy": float(metrics["accuracy"]),
        "accuracy_per_mmac": float(metrics["accuracy"]) / (routed / 1e6),
    }


# === Summary ===


def summarise(tune_dir, tuner):
    """Write TUNE_DIR/summary.json, summary.md and pareto.png; return the rows."""
    rows = []
    for trial in tuner.oracle.trials.values():
        run_dir = Path(tune_dir) / "trials" / f"trial-{trial.trial_id}"
        metrics = _read(run_dir / METRICS)
        rows.append(
            {
                "trial": trial.trial_id,
                "number": trial_number(trial.trial_id),
                "status": str(trial.status),
                "run_dir": str(run_dir),
                "values": {k: v for k, v in trial.hyperparameters.values.items()},
                "val_accuracy": metrics.get("accuracy"),
                "routed_mmacs": _mmacs(metrics),
            }
        )
    rows.sort(key=_ranked)
    front = pareto_front(rows)
    for row in rows:
        row["pareto"] = row["trial"] in front
    write_file(Path(tune_dir, SUMMARY), json.dumps(rows, indent=1) + "\n")
    write_file(Path(tune_dir, "summary.md"), summary_table(rows))
    _plot(rows, Path(tune_dir) / "pareto.png")
    return rows


def report_best(rows, verbose=0):
    """Write the report of the most accurate finished trial (`summarise`'s first row with an
    accuracy), which trained without one; its run directory, or None when no trial finished.
    The run is resumed with `report=True`: nothing trains, its model is scored again on its
    validation split for the gallery."""
    from condnet.runs.recipe import resume

    best = next((row for row in rows if row["val_accuracy"] is not None), None)
    if best is None or Path(best["run_dir"], "report.md").is_file():
        return best and best["run_dir"]
    resume(best["run_dir"], report=True, verbose=verbose)
    return best["run_dir"]


def _ranked(row):
    """The order of trials: the most accurate first, and of equal accuracies the earliest
    (KerasTuner reloads its trials in no fixed order, and the best must stay the best)."""
    trial = str(row["trial"])
    return -(row["val_accuracy"] or -1), len(trial), trial


def trial_number(trial_id):
    """The number KerasTuner shows for a trial ("Running Trial #2", "Trial 2 Complete"):
    its id ("01", the `trials/trial-01` folder) counts from 0, the display from 1."""
    return int(trial_id) + 1 if str(trial_id).isdigit() else trial_id


def best_trials(tune_dir, k):
    """The run directories of the `k` most accurate finished trials of a search."""
    path = Path(tune_dir) / SUMMARY
    if not path.is_file():
        raise ValueError(
            f"{str(tune_dir)!r} holds no {SUMMARY}: it is not a search written by "
            f"`condnet tune`. Received: {str(tune_dir)!r}"
        )
    rows = [r for r in json.loads(path.read_text()) if r.get("val_accuracy") is not None]
    if k < 1 or k > len(rows):
        raise ValueError(
            f"--top must be between 1 and the {len(rows)} finished trials of "
            f"{str(tune_dir)!r}. Received: --top {k}"
        )
    rows.sort(key=_ranked)
    return [r["run_dir"] for r in rows[:k]]


def pareto_front(rows):
    """Trials no other trial beats on both accuracy (higher) and routed MACs (lower)."""
    scored = [r for r in rows if r["val_accuracy"] is not None and r["routed_mmacs"] is not None]
    front = set()
    for row in scored:
        beaten = any(
            o["val_accuracy"] >= row["val_accuracy"]
            and o["routed_mmacs"] <= row["routed_mmacs"]
            and (o["val_accuracy"], o["routed_mmacs"]) != (row["val_accuracy"], row["routed_mmacs"])
            for o in scored
        )
        if not beaten:
            front.add(row["trial"])
    return front


def summary_table(rows):
    names = sorted({k for r in rows for k in r["values"] if not k.startswith("tuner/")})
    header = ["trial", "folder", "val_accuracy", "routed_mmacs", "pareto", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        accuracy = "-" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
        cells = [_shown(r), f"trial-{r['trial']}", accuracy, str(r["routed_mmacs"])]
        cells.append("yes" if r["pareto"] else "")
        cells += [str(r["values"].get(n, "")) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _shown(row):
    """A trial as KerasTuner's display numbers it: "#2"."""
    return f"#{row.get('number', trial_number(row['trial']))}"


def _read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _mmacs(metrics):
    routed = metrics.get("macs_per_image", {}).get("routed")
    return None if routed is None else round(routed / 1e6, 3)


def _plot(rows, path):
    from condnet.runs.compare import accuracy_against_macs

    scored = [r for r in rows if r["val_accuracy"] is not None and r["routed_mmacs"] is not None]
    front = sorted((r for r in scored if r["pareto"]), key=lambda r: r["routed_mmacs"])
    return accuracy_against_macs(
        path,
        [
            (
                _shown(r),
                r["routed_mmacs"],
                r["val_accuracy"],
                "tab:red" if r["pareto"] else "tab:blue",
            )
            for r in scored
        ],
        "Trials (red: the Pareto front)",
        line=[(r["routed_mmacs"], r["val_accuracy"]) for r in front],
        required=False,
    )

"""K-fold cross-validation of the training recipe: one run per fold, then mean and spread."""

import dataclasses
import json
from pathlib import Path

import numpy as np

from condnet.data.scan import scan_directory
from condnet.runs.checkpoint import write_atomic
from condnet.runs.claim import check_run_dir
from condnet.runs.documents import refuse_text_folder
from condnet.runs.lock import run_lock
from condnet.runs.options import TrainingOptions
from condnet.runs.outputs import mark

SUMMARY = "cv.json"
KIND = "cross-validation"  # what the output marker of OUT_DIR says
METRICS = ("accuracy", "group_accuracy", "hierarchical_f1")


def cross_validate(
    data_dir, out_dir, folds=5, options=None, *, overwrite=False, break_lock=False, **kwargs
):
    """Train one run per fold of a stratified K-fold split and summarise them.

    Every image of `data_dir` lands in exactly one validation fold
    (`fold_indices`: each class spread evenly across the folds, decided by
    the options' `seed` alone). Fold `k` trains `condnet.runs.recipe.train` on the
    other folds and validates on fold `k`, in `out_dir/fold-k/` (a complete run
    directory whose `config.json` records its row indices). `out_dir/cv.json`
    then holds each fold's accuracy, group accuracy and hierarchical F1 with
    their mean and sample standard deviation (`ddof=1`) across folds.
    `out_dir` is locked (`run_lock`) while the folds train, and each fold
    claims its own run directory as `train` does.

    Args:
        data_dir: str or `Path`. The image folder, `root/<group>/<class>/*`,
            or `root/<class>/*` with a `hierarchy` option.
        out_dir: str or `Path`. Where the fold runs and `cv.json` go.
        folds: int. Number of folds, from 2 to the size of the smallest
            class. Defaults to 5.
        options: `TrainingOptions` of every fold (their `seed` also draws the
            folds). Defaults to `TrainingOptions()`.
        overwrite: bool. Replace the runs and `cv.json` already in
            `out_dir`. Defaults to `False`.
        break_lock: bool. Remove stale locks left by a dead process.
        **kwargs: `TrainingOptions` fields (not `validation_split` or `split`:
            a fold is the validation set), then `model.fit` arguments.

    Returns:
        The summary written to `cv.json`: `folds`, `seed`, `data_dir`,
        `per_fold` (one dict per fold: `fold`, `run_dir`, `num_train`,
        `num_validation` and the metrics), `mean` and `std`.

    Example:

    ```python
    summary = cross_validate("shapes/train", "cv", folds=5, epochs=10)
    summary["mean"]["accuracy"], summary["std"]["accuracy"]
    ```
    """
    from condnet.runs.finish import announce
    from condnet.runs.recipe import train

    _check_folds(folds)
    _check_kwargs(kwargs)
    fields, fit_kwargs = TrainingOptions.fields_of(kwargs)
    # cv.json compares folds, not models: no flat baseline and no report per fold unless asked.
    default = TrainingOptions(baseline=False, report=False)
    options = dataclasses.replace(options or default, **fields)
    _check_hierarchy(options.hierarchy)
    refuse_text_folder(data_dir, options.modality, "cv")
    out_dir = Path(out_dir)
    check_run_dir(out_dir, data_dir, kind=KIND)
    if (out_dir / SUMMARY).exists() and not overwrite:
        raise ValueError(
            f"{str(out_dir)!r} already holds a cross-validation ({SUMMARY}). Pass "
            "overwrite=True (--overwrite) to replace it, or choose another out_dir."
        )
    found, _, labels = scan_directory(data_dir, options.hierarchy)
    splits = fold_indices(labels, folds, options.seed, class_names=found.classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with run_lock(out_dir, break_lock=break_lock):
        mark(out_dir, KIND, [SUMMARY, *(f"fold-{n}" for n in range(1, folds + 1))])
        for number, (train_rows, validation_rows) in enumerate(splits, start=1):
            run_dir = out_dir / f"fold-{number}"
            split = (train_rows.tolist(), validation_rows.tolist())
            fold = dataclasses.replace(options, split=split)
            announce(f"=== Fold {number}/{folds}: {run_dir} ===", fit_kwargs)
            result = train(
                data_dir, run_dir, fold, overwrite=overwrite, break_lock=break_lock, **fit_kwargs
            )
            rows.append(_fold_row(number, run_dir, split, result["metrics"]))
        summary = {
            "folds": folds,
            "seed": options.seed,
            "data_dir": str(data_dir),
            **summarize(rows),
        }
        write_atomic(out_dir / SUMMARY, json.dumps(summary, indent=1) + "\n")
    return summary


def fold_indices(labels, folds, seed=1337, class_names=None):
    """Stratified K-fold rows: `folds` pairs `(train_indices, validation_indices)`.

    The rows of each class are shuffled with `seed` and dealt to the folds
    in turn, continuing where the previous class stopped, so every class is
    spread evenly over the folds and fold sizes differ by at most one. Each
    row is in exactly one validation fold.

    Args:
        labels: 1D array of class indices.
        folds: int. From 2 to the size of the smallest class.
        seed: int. Seed of the shuffle. Defaults to 1337.
        class_names: optional list of names of the labels, for error messages.

    Returns:
        A list of `folds` pairs of sorted int64 arrays.
    """
    _check_folds(folds)
    labels = np.asarray(labels).reshape(-1)
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < folds:
        smallest = classes[counts.argmin()]
        name = class_names[smallest] if class_names is not None else smallest
        raise ValueError(
            f"folds={folds} needs at least {folds} images in every class so that each "
            f"validation fold holds every class, but class {name!r} has {counts.min()}. "
            f"Pass folds <= {counts.min()} or add images."
        )
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), "int64")
    start = 0
    for label in classes:
        rows = rng.permutation(np.flatnonzero(labels == label))
        fold_of[rows] = (start + np.arange(len(rows))) % folds
        start += len(rows)
    return [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)) for k in range(folds)]


def summarize(rows, metrics=METRICS):
    """`per_fold` rows with the `mean` and sample `std` (ddof=1) of each metric."""
    values = {name: np.array([row[name] for row in rows], dtype="float64") for name in metrics}
    return {
        "per_fold": rows,
        "mean": {name: float(v.mean()) for name, v in values.items()},
        "std": {name: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for name, v in values.items()},
    }


def summary_table(summary):
    """A plain-text table: one row per metric, one column per fold, then mean ± std."""
    folds = [f"fold-{row['fold']}" for row in summary["per_fold"]]
    header = ["metric", *folds, "mean ± std"]
    lines = [header]
    for name in summary["mean"]:
        per_fold = [f"{row[name]:.3f}" for row in summary["per_fold"]]
        spread = f"{summary['mean'][name]:.3f} ± {summary['std'][name]:.3f}"
        lines.append([name, *per_fold, spread])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join([text[0], "-" * len(text[0]), *text[1:]])


# === Helpers ===


def _fold_row(number, run_dir, split, metrics):
    return {
        "fold": number,
        "run_dir": str(run_dir),
        "num_train": len(split[0]),
        "num_validation": len(split[1]),
        **{name: metrics[name] for name in METRICS},
    }


def _check_folds(folds):
    if not isinstance(folds, int | np.integer) or isinstance(folds, bool):
        raise TypeError(f"folds must be an int. Received: folds={folds!r}")
    if folds < 2:
        raise ValueError(
            "folds must be an int >= 2: each fold is validated by a model trained on "
            f"the others. Received: folds={folds!r}"
        )


def _check_kwargs(kwargs):
    given = sorted({"validation_split", "split", "resume", "run_dir"} & set(kwargs))
    if given:
        raise TypeError(
            "cross_validate chooses each run's validation rows (one fold) and run "
            f"directory itself; leave out {given}. Received: {given}"
        )


def _check_hierarchy(hierarchy):
    if isinstance(hierarchy, str) and hierarchy == "auto":
        raise ValueError(
            "With hierarchy='auto' every fold would discover its own groups, so group "
            "scores could not be compared across folds. Discover the hierarchy once "
            "(condnet.evaluation.discovery.discover_from_folder, or "
            "`condnet train --hierarchy auto`), "
            "then pass its file. Received: hierarchy='auto'"
        )

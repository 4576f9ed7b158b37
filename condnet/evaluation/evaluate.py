"""Evaluate a ConditionalModel on labelled batches, routed as it routes at inference."""

import warnings

import numpy as np

from condnet.data.image_folder import ImageFolder
from condnet.evaluation.metrics import evaluate_predictions, within_group_accuracy
from condnet.evaluation.progress import Progress, check_progress

SHOWN_SKIPPED = 10


def evaluate_model(
    model,
    data,
    hierarchy=None,
    return_predictions=False,
    progress=False,
    progress_label="evaluating",
):
    """Metrics of a ConditionalModel on an ImageFolder, in one pass over its batches.

    A flat Keras classifier over the same classes (such as
    `condnet.evaluation.baseline.flat_baseline`) is scored the same way when
    `hierarchy` is given: its predicted group is the group of its class.

    Every row is scored on its own image and its own label. A row whose image
    fails to decode is never replaced by another sample (whatever the
    folder's `substitute_unreadable`): it is left out of the metrics, counted
    in `num_skipped`, listed (the first `SHOWN_SKIPPED`) in `skipped` as
    `{"path": ..., "error": "cannot decode: <reason>"}`, and reported in one
    warning. A `TextFolder` of documents with their `paths` is read the same
    way (its documents never fail). Other datasets (a `PyDataset` of `(images,
    labels)` batches) are read as they are.

    `progress=True` reports the batches on standard error, as a line that
    starts with `progress_label` (e.g. `"hard routing"`;
    `condnet.evaluation.progress.Progress`).

    Returns:
        The dict of `evaluate_predictions` (`num_samples` counts the scored
        rows) with `num_skipped` and `skipped` added; with
        `return_predictions`, a pair `(metrics, predictions)` where
        `predictions` holds the scored rows' `paths`, `labels` and the model's
        outputs (`classes`, and `groups` / `route` for a conditional model).
    """
    check_progress(progress)
    hierarchy = hierarchy or model.hierarchy
    outputs, labels, kept_paths, skipped = [], [], [], []
    shown = Progress(progress_label, len(data), enabled=progress)
    for done, (images, batch_labels, paths, errors) in enumerate(_batches(data), 1):
        valid = np.array([error is None for error in errors], bool)
        skipped += [
            error_row(path, error) for path, error in zip(paths, errors) if error is not None
        ]
        if valid.any():
            outputs.append(predict_batch(model, images[valid]))
            labels.append(np.asarray(batch_labels)[valid])
            kept_paths += [path for path, ok in zip(paths, valid) if ok]
        shown.update(done)
    shown.close()
    if not outputs:
        raise ValueError(
            f"None of the {len(skipped)} images to evaluate can be decoded, so there is "
            f"nothing to score. Check the files. Received: e.g. {skipped[:2]}"
        )
    _warn_skipped(skipped)
    stacked = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    labels = np.concatenate(labels)
    metrics = evaluate_predictions(
        hierarchy,
        labels,
        stacked["classes"],
        group_probabilities=stacked.get("groups"),
        route=stacked.get("route"),
    )
    metrics = {**metrics, "num_skipped": len(skipped), "skipped": skipped[:SHOWN_SKIPPED]}
    if return_predictions:
        return metrics, {"paths": kept_paths, "labels": labels, **stacked}
    return metrics


def within_group_of(hierarchy, predictions):
    """`within_group_accuracy` of the `predictions` that `evaluate_model` returns."""
    return within_group_accuracy(hierarchy, predictions["labels"], predictions["classes"])


def predict_batch(model, images):
    """The model's outputs on one batch, as numpy, with its inference routing.

    `ConditionalModel.predict` decides: under a hard routing only the chosen
    expert of each row runs.
    """
    outputs = model.predict(images, batch_size=len(images), verbose=0)
    if not isinstance(outputs, dict):  # a flat classifier
        return {"classes": np.asarray(outputs)}
    return {key: np.asarray(value) for key, value in outputs.items()}


def prediction_row(hierarchy, path, outputs, row):
    """What `condnet predict --json` (and the HTTP service) says of one image."""
    classes = outputs["classes"][row]
    best = int(classes.argmax())
    return {
        "path": str(path),
        "group": hierarchy.group_of(hierarchy.classes[best]),
        "class": hierarchy.classes[best],
        "expert": hierarchy.groups[int(outputs["route"][row])],
        "confidence": float(classes[best]),
        "group_probabilities": {
            g: float(p) for g, p in zip(hierarchy.groups, outputs["groups"][row])
        },
    }


def error_row(path, reason):
    """The row that stands for an image that cannot be decoded."""
    return {"path": str(path), "error": f"cannot decode: {reason}"}


def _batches(data):
    """(images, labels, paths, errors) per batch; errors[i] is None for a decoded row."""
    for index in range(len(data)):
        if isinstance(data, ImageFolder) or getattr(data, "paths", None) is not None:
            images, labels, errors = data.read_batch(index)  # ImageFolder, TextFolder
            paths = [data.paths[row] for row in data.batch_rows(index)]
        else:
            images, labels = data[index][:2]
            paths = errors = [None] * len(images)
        yield images, labels, paths, errors


def _warn_skipped(skipped):
    if skipped:
        shown = ", ".join(f"{row['path']!r}" for row in skipped[:5])
        warnings.warn(
            f"Left {len(skipped)} image(s) that cannot be decoded out of the metrics "
            f"(num_skipped, and skipped in the metrics name them): {shown}"
            f"{' ...' if len(skipped) > 5 else ''}. Replace or delete the files.",
            stacklevel=3,
        )

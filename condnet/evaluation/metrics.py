"""Hierarchy-aware metrics: accuracy per level, hierarchical F1, routing and calibration."""

import numpy as np

from condnet.evaluation.mistakes import mistake_scores, tree_levels


def evaluate_predictions(
    hierarchy, labels, class_probabilities, group_probabilities=None, route=None
):
    """Score a conditional model's predictions against the hierarchy.

    Everything is computed with numpy and returned as plain Python values, so the
    result can be written with `json.dump` as it is.

    The predicted class is the argmax of `class_probabilities`. The predicted
    group is the argmax of `group_probabilities` (the gate); without them it is
    the group of the predicted class, and its confidence is the summed
    probability of that group's classes. `level_accuracy` always follows the
    predicted class's path, so it never rises from one level to the next.

    Args:
        hierarchy: `Hierarchy`. The tree the labels and columns refer to.
        labels: array of shape `(num_samples,)` with class indices, or one-hot
            rows of shape `(num_samples, num_classes)`.
        class_probabilities: array of shape `(num_samples, num_classes)`, in the
            hierarchy's class order.
        group_probabilities: optional array of shape `(num_samples, num_groups)`:
            the gate's output. Defaults to `None`.
        route: optional int array of shape `(num_samples,)`: the group whose
            expert each sample was sent to. Defaults to `None`, which takes the
            predicted group.

    Two group scores answer two questions (see `GLOSSARY`): `group_accuracy`
    scores the group of the final class (the share of samples whose predicted
    class lies in their true group), for any model; `gate_accuracy`, present
    only with `group_probabilities`, scores the gate's own top group. Under
    hard routing without hedging they are equal (the class comes from the
    chosen expert); under the soft mixture a peaked expert of a less likely
    group can win the final argmax, so they can differ. `group_confusion`,
    `per_group` and the group calibration error follow the predicted group
    (the gate's, else the final class's).

    Returns:
        A dict with `num_samples`, `accuracy`, `group_accuracy`,
        `gate_accuracy` (with `group_probabilities` only), `level_accuracy`,
        `hierarchical_precision`, `hierarchical_recall`, `hierarchical_f1`,
        `mistake_distance`, `mistakes`, `top_k_distance`
        (`condnet.evaluation.mistakes.mistake_scores`), `routing`, `per_class`, `per_group`,
        `expected_calibration_error`, `group_confusion`, `class_confusion`,
        `routing_matrix`, `groups` and `classes`.

    Example:

    ```python
    metrics = evaluate_predictions(hierarchy, y_test, class_probabilities)
    metrics["hierarchical_f1"]
    ```
    """
    labels, class_probabilities, group_probabilities, route = _check_inputs(
        hierarchy, labels, class_probabilities, group_probabilities, route
    )
    predictions = class_probabilities.argmax(-1)
    true_groups = hierarchy.class_to_group[labels]
    group_predictions, group_confidences = _predicted_groups(
        hierarchy, class_probabilities, group_probabilities
    )
    route = group_predictions if route is None else route
    class_confusion = confusion_matrix(labels, predictions, hierarchy.num_classes)
    group_confusion = confusion_matrix(true_groups, group_predictions, hierarchy.num_groups)
    routing_matrix = confusion_matrix(true_groups, route, hierarchy.num_groups)
    return {
        "num_samples": int(len(labels)),
        "accuracy": _mean(predictions == labels),
        "group_accuracy": _mean(hierarchy.class_to_group[predictions] == true_groups),
        **_gate_accuracy(group_probabilities, true_groups),
        "level_accuracy": _level_accuracy(hierarchy, labels, predictions),
        **hierarchical_scores(hierarchy, labels, predictions),
        **mistake_scores(hierarchy, labels, class_probabilities, group_probabilities),
        "routing": _routing(hierarchy, true_groups, route),
        "per_class": _per_label_scores(class_confusion, hierarchy.classes),
        "per_group": _per_label_scores(group_confusion, hierarchy.groups),
        "expected_calibration_error": {
            "group": expected_calibration_error(
                group_confidences, group_predictions == true_groups
            ),
            "class": expected_calibration_error(class_probabilities.max(-1), predictions == labels),
        },
        "group_confusion": group_confusion.tolist(),
        "class_confusion": class_confusion.tolist(),
        "routing_matrix": routing_matrix.tolist(),
        "groups": list(hierarchy.groups),
        "classes": list(hierarchy.classes),
    }


GLOSSARY = {
    "accuracy": "share of images whose final class is right",
    "group_accuracy": "share of images whose final class lies in their true group (for any "
    "model, flat or conditional)",
    "gate_accuracy": "share of images whose gate's top group is their true group (models with "
    "a gate only); equals group_accuracy under hard routing without hedging, can differ under "
    "the soft mixture",
    "level_accuracy": "accuracy at each depth of the tree, following the final class's path",
    "hierarchical_f1": "F1 over the nodes of the predicted and true paths (Kiritchenko et "
    "al., 2006): a wrong class in the right group earns partial credit",
    "mistake_distance": "how far the wrong answers miss: the mean height of the lowest common "
    "ancestor of the true and predicted class (Bertinetto et al., 2020); 1 = the right group, "
    "wrong class, 2 = another group (in a two-level tree)",
    "top_k_distance": "the mean distance of the k most probable classes to the true one "
    "(0 for the true class itself), averaged over every image",
    "back-off": "answer with the deepest node the model is sure of: the class when its "
    "probability reaches the class threshold, else the group when the group's does, else "
    "unsure; coverage = the share of images answered at a level, accuracy = of those answers",
    "expected_calibration_error": "mean gap between confidence and accuracy over 15 "
    "confidence bins (0 = confidences mean what they say)",
    "wrong_expert_share": "share of images whose expert is not their true group's",
    "within_group_accuracy": "share of images whose class is right when it is chosen among "
    "their true group's classes only: the score with a perfect gate (the true group's expert; "
    "for a flat model, its scores within the true group). Beside the group accuracy it says "
    "how much of a gap to the flat baseline is the gate's and how much the experts'",
}


# === Reusable scores ===


def within_group_accuracy(hierarchy, labels, class_probabilities):
    """Accuracy when each image's class is chosen among its true group's classes only.

    The score with a perfect gate: for a conditional model scored as the soft
    mixture, that of the true group's expert; for a flat classifier, that of
    its scores restricted to the true group. Hard-routed outputs hold no
    scores for a misrouted image's true group, so score the soft mixture
    (every expert runs) of a conditional model.

    Args:
        hierarchy: `Hierarchy`.
        labels: int array of true class indices (or one-hot rows).
        class_probabilities: array `(num_samples, num_classes)`.

    Returns:
        A float in [0, 1].
    """
    labels = hierarchy.check_labels(labels)
    probabilities = _check_probabilities(
        class_probabilities, "class_probabilities", len(labels), "class", hierarchy.classes
    )
    groups = hierarchy.class_to_group
    inside = groups[None, :] == groups[labels][:, None]
    return _mean(np.where(inside, probabilities, -np.inf).argmax(-1) == labels)


def hierarchical_scores(hierarchy, labels, predictions):
    """Hierarchical precision, recall and F1 (Kiritchenko et al., 2006).

    Each class stands for the set of nodes on its path, root excluded. The
    scores are micro-averaged over samples: `hP = sum|P & T| / sum|P|` and
    `hR = sum|P & T| / sum|T|`, with P the predicted and T the true class's set.
    In a two-level tree, a wrong class in the right group scores 1/2.

    Args:
        hierarchy: `Hierarchy`.
        labels: int array of true class indices.
        predictions: int array of predicted class indices, same length.

    Returns:
        A dict with `hierarchical_precision`, `hierarchical_recall` and
        `hierarchical_f1`, as floats.
    """
    labels, predictions = _check_pair(
        hierarchy.check_labels(labels), hierarchy.check_labels(predictions)
    )
    nodes, lengths = _level_nodes(hierarchy)
    on_true_path = np.arange(len(nodes))[:, None] < lengths[labels]
    shared = np.sum((nodes[:, labels] == nodes[:, predictions]) & on_true_path)
    precision = shared / lengths[predictions].sum()
    recall = shared / lengths[labels].sum()
    f1 = 2 * precision * recall / (precision + recall) if shared else 0.0
    return {
        "hierarchical_precision": float(precision),
        "hierarchical_recall": float(recall),
        "hierarchical_f1": float(f1),
    }


def confusion_matrix(true, predicted, n):
    """An `(n, n)` int array: row = true index, column = predicted index."""
    true, predicted = _check_pair(np.asarray(true), np.asarray(predicted))
    for name, values in (("true", true), ("predicted", predicted)):
        if values.min() < 0 or values.max() >= n:
            raise ValueError(
                f"confusion_matrix needs indices in [0, {n}). Pass n larger than "
                f"the largest index. Received: {name} in [{values.min()}, "
                f"{values.max()}] with n={n}"
            )
    cells = true.astype("int64") * n + predicted.astype("int64")
    return np.bincount(cells, minlength=n * n).reshape(n, n)


def expected_calibration_error(confidences, correct, num_bins=15):
    """Expected calibration error over `num_bins` equal-width bins of [0, 1].

    The weighted mean, over bins, of |accuracy - mean confidence|: 0 for a
    model whose confidence matches how often it is right.

    Args:
        confidences: float array: the probability of each predicted label.
        correct: bool array of the same length: whether that label was right.
        num_bins: int. Number of bins. Defaults to 15.
    """
    if not isinstance(num_bins, int | np.integer) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int. Received: num_bins={num_bins!r}")
    confidences, correct = _check_pair(
        np.asarray(confidences, dtype="float64"), np.asarray(correct, dtype="float64")
    )
    bins = np.clip(np.ceil(confidences * num_bins).astype("int64") - 1, 0, num_bins - 1)
    gaps = np.bincount(bins, weights=correct - confidences, minlength=num_bins)
    return float(np.abs(gaps).sum() / len(confidences))


# === Pieces of the report ===


def _predicted_groups(hierarchy, class_probabilities, group_probabilities):
    """The predicted group of each sample and the confidence in it."""
    if group_probabilities is not None:
        return group_probabilities.argmax(-1), group_probabilities.max(-1)
    groups = hierarchy.class_to_group[class_probabilities.argmax(-1)]
    summed = np.stack(
        [class_probabilities[:, hierarchy.group_slice(g)].sum(-1) for g in hierarchy.groups],
        axis=-1,
    )
    return groups, np.clip(summed[np.arange(len(groups)), groups], 0.0, 1.0)


def _gate_accuracy(group_probabilities, true_groups):
    """`{"gate_accuracy": ...}` of the gate's top group, or {} without a gate."""
    if group_probabilities is None:
        return {}
    return {"gate_accuracy": _mean(group_probabilities.argmax(-1) == true_groups)}


def _level_nodes(hierarchy):
    """Per level, an id of each class's ancestor there (of the class itself below
    a shallow leaf), and the length of each class's path."""
    lengths = [len(hierarchy.path(name)) for name in hierarchy.classes]
    return tree_levels(hierarchy)[1], np.array(lengths)


def _level_accuracy(hierarchy, labels, predictions):
    nodes, _ = _level_nodes(hierarchy)
    return [_mean(level[labels] == level[predictions]) for level in nodes]


def _routing(hierarchy, true_groups, route):
    counts = np.bincount(route, minlength=hierarchy.num_groups)
    return {
        "samples_per_expert": {g: int(n) for g, n in zip(hierarchy.groups, counts)},
        "wrong_expert_share": _mean(route != true_groups),
    }


def _per_label_scores(confusion, names):
    """Precision, recall, F1 and support per row of a confusion matrix (0 where
    a label is never predicted or never true)."""
    hits, predicted, support = np.diag(confusion), confusion.sum(0), confusion.sum(1)
    precision, recall = _divide(hits, predicted), _divide(hits, support)
    f1 = _divide(2 * precision * recall, precision + recall)
    return {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(names, precision, recall, f1, support)
    }


def _divide(numerator, denominator):
    out = np.zeros(len(numerator), dtype="float64")
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def _mean(values):
    return float(np.mean(values))


# === Input checks ===


def _check_inputs(hierarchy, labels, class_probabilities, group_probabilities, route):
    labels = hierarchy.check_labels(labels)
    if not labels.size:
        raise ValueError(
            "evaluate_predictions needs at least one sample. Received: labels with 0 entries"
        )
    n = len(labels)
    class_probabilities = _check_probabilities(
        class_probabilities, "class_probabilities", n, "class", hierarchy.classes
    )
    if group_probabilities is not None:
        group_probabilities = _check_probabilities(
            group_probabilities, "group_probabilities", n, "group", hierarchy.groups
        )
    if route is not None:
        route = _check_route(route, n, hierarchy.num_groups)
    return labels, class_probabilities, group_probabilities, route


def _check_probabilities(values, name, num_samples, kind, names):
    values = np.asarray(values, dtype="float64")
    if values.ndim != 2 or values.shape[1] != len(names):
        raise ValueError(
            f"{name} must have one column per {kind}: the hierarchy has "
            f"{len(names)} {kind} names {_preview(names)}, so the expected shape is "
            f"({num_samples}, {len(names)}). Received: {name} with shape {values.shape}"
        )
    if values.shape[0] != num_samples:
        raise ValueError(
            f"{name} must have one row per label ({num_samples} labels). "
            f"Received: {name} with shape {values.shape}"
        )
    if not np.all(np.isfinite(values)) or values.min() < -1e-3 or values.max() > 1 + 1e-3:
        raise ValueError(
            f"{name} must hold probabilities in [0, 1]; apply a softmax to logits "
            f"first. Received: {name} with values in [{values.min()}, {values.max()}]"
        )
    return values


def _check_route(route, num_samples, num_groups):
    route = np.asarray(route)
    if route.shape != (num_samples,):
        raise ValueError(
            f"route must hold one group index per sample, shape ({num_samples},); "
            "pass the gate's probabilities as group_probabilities instead. "
            f"Received: route with shape {route.shape}"
        )
    if not np.issubdtype(route.dtype, np.integer):
        raise TypeError(f"route must hold integer group indices. Received: dtype {route.dtype}")
    if route.min() < 0 or route.max() >= num_groups:
        raise ValueError(
            f"route must hold group indices in [0, {num_groups}). Received: route "
            f"with values in [{route.min()}, {route.max()}]"
        )
    return route


def _check_pair(first, second):
    first, second = first.reshape(-1), second.reshape(-1)
    if len(first) != len(second) or not len(first):
        raise ValueError(
            "Both arrays must hold one entry per sample, at least one. Received: "
            f"lengths {len(first)} and {len(second)}"
        )
    return first, second


def _preview(names, limit=10):
    return str(list(names[:limit]))[:-1] + (", ...]" if len(names) > limit else "]")

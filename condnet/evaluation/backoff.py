"""Back off to the group when unsure: answer with the deepest node the model is sure of.

Each level of the tree (the groups, any subgroups, the classes) has a
threshold. An image is answered with its most probable class when that
class's probability reaches the class threshold, else with its most probable
group when that group's probability reaches the group threshold, and so on
up; an image sure at no level is answered "unsure". A node's probability is
the sum of its classes' probabilities; a conditional model's groups are its
gate's, and its class probabilities are P(group) x P(class | group).

`choose_thresholds` picks, level by level from the classes up, the lowest
threshold whose answers reach a target accuracy on the images given (the
validation split): the answers given at every level, and so all of them
together, then have at least that accuracy there.
"""

import math

import numpy as np

from condnet.evaluation.mistakes import level_names, tree_levels

UNSURE = "unsure"
CURVE_POINTS = 20


# === Probabilities per level ===


def level_probabilities(hierarchy, class_probabilities, group_probabilities=None):
    """The probability of every node at each level, from the groups down to the classes.

    Args:
        hierarchy: `Hierarchy`.
        class_probabilities: array `(num_samples, num_classes)`.
        group_probabilities: optional array `(num_samples, num_groups)`: a
            conditional model's gate. With it, each group's class
            probabilities are rescaled to sum to the gate's probability of the
            group (hard routing leaves the chosen expert's distribution, which
            sums to 1, and zeros elsewhere). Defaults to `None`: a flat model,
            whose group probabilities are sums over their classes.

    Returns:
        A list with one array `(num_samples, nodes at that level)` per level.
    """
    classes = _probabilities(class_probabilities, "class_probabilities", hierarchy.num_classes)
    groups = None
    if group_probabilities is not None:
        groups = _probabilities(group_probabilities, "group_probabilities", hierarchy.num_groups)
        _same_rows(classes, groups)
        classes = _joint(hierarchy, classes, groups)
    names, nodes = tree_levels(hierarchy)
    levels = [classes @ _membership(row, len(level)) for row, level in zip(nodes, names)]
    if groups is not None:
        levels[0] = groups
    return levels


def _joint(hierarchy, classes, groups):
    """P(class) = P(group) x P(class | group), P(class | group) from the classes given."""
    membership = _membership(hierarchy.class_to_group, hierarchy.num_groups)
    sums = (classes @ membership)[:, hierarchy.class_to_group]
    within = np.divide(classes, sums, out=np.zeros_like(classes), where=sums > 0)
    return within * groups[:, hierarchy.class_to_group]


def _membership(node_of_class, num_nodes):
    membership = np.zeros((len(node_of_class), num_nodes))
    membership[np.arange(len(node_of_class)), node_of_class] = 1.0
    return membership


# === Answers ===


def back_off(hierarchy, class_probabilities, thresholds, group_probabilities=None):
    """The deepest node each image is sure of, given a threshold per level.

    Args:
        hierarchy: `Hierarchy`.
        class_probabilities: array `(num_samples, num_classes)`.
        thresholds: dict `level name -> threshold` (`level_names`: `"group"`,
            `"class"`, ...): a probability in [0, 1], or None for a level that
            never answers.
        group_probabilities: optional gate output (see `level_probabilities`).

    Returns:
        A dict with one entry per image in each value: `depth` (an int
        array: 0 = unsure, 1 = a group, ..., `hierarchy.depth` = a class),
        `node` (its index at that level, -1 when unsure), `confidence` (its
        probability, NaN when unsure), `answer` (its name, or "unsure") and
        `level` (the level's name, or "unsure").

    Example:

    ```python
    answers = back_off(hierarchy, probabilities, {"group": 0.8, "class": 0.9})
    answers["answer"]  # ['pug', 'dog', 'unsure', ...]
    ```
    """
    levels = level_probabilities(hierarchy, class_probabilities, group_probabilities)
    cuts = _threshold_values(hierarchy, thresholds)
    n = len(levels[0])
    depth, node, confidence = np.zeros(n, "int64"), np.full(n, -1), np.full(n, np.nan)
    for level in reversed(range(len(levels))):
        best, sure = levels[level].argmax(-1), levels[level].max(-1)
        answers = (depth == 0) & (sure >= cuts[level])
        depth[answers], node[answers], confidence[answers] = level + 1, best[answers], sure[answers]
    names, levels = tree_levels(hierarchy)[0], (UNSURE, *level_names(len(levels)))
    return {
        "depth": depth,
        "node": node,
        "confidence": confidence,
        "answer": [names[d - 1][i] if d else UNSURE for d, i in zip(depth.tolist(), node.tolist())],
        "level": [levels[d] for d in depth.tolist()],
    }


def answer_fields(answers, row):
    """What a prediction row says of the back-off answer (`back_off`) of image `row`:
    `answer`, `answer_level` (a level name or "unsure") and `answer_confidence` (None
    when unsure)."""
    confidence = float(answers["confidence"][row])
    return {
        "answer": answers["answer"][row],
        "answer_level": answers["level"][row],
        "answer_confidence": None if math.isnan(confidence) else confidence,
    }


# === Choosing the thresholds ===


def choose_thresholds(
    hierarchy, labels, class_probabilities, target_accuracy=0.95, group_probabilities=None
):
    """Per level, the lowest threshold whose answers reach `target_accuracy` on these images.

    From the classes up: the class threshold is the lowest one at which the
    images answered with a class are right at least `target_accuracy` of
    the time; among the images left, the group threshold is chosen likewise,
    and so on. The lowest such threshold answers the most images at that
    level. A level where no threshold reaches the target (or no image is
    left) gets None: it never answers. Choose on images the model did not
    train on (the validation split).

    Args:
        hierarchy: `Hierarchy`.
        labels: int array of true class indices (or one-hot rows).
        class_probabilities: array `(num_samples, num_classes)`.
        target_accuracy: float in (0, 1]. Defaults to 0.95.
        group_probabilities: optional gate output (see `level_probabilities`).

    Returns:
        A dict `level name -> threshold or None`, from the groups down.
    """
    target = check_target(target_accuracy)
    labels = _labels(hierarchy, labels)
    levels = level_probabilities(hierarchy, class_probabilities, group_probabilities)
    _same_rows(levels[0], labels)
    nodes = tree_levels(hierarchy)[1]
    left = np.ones(len(labels), bool)
    cuts = [None] * len(levels)
    for level in reversed(range(len(levels))):
        sure = levels[level].max(-1)
        right = levels[level].argmax(-1) == nodes[level][labels]
        cuts[level] = lowest_threshold(sure[left], right[left], target)
        if cuts[level] is not None:
            left &= sure < cuts[level]
    return dict(zip(level_names(len(levels)), cuts))


def lowest_threshold(confidences, correct, target):
    """The lowest confidence `t` such that the images with confidence >= t are right at
    least `target` of the time, or None when no `t` reaches it. Images of equal
    confidence are taken together."""
    confidences = np.asarray(confidences, dtype="float64")
    if not len(confidences):
        return None
    order = np.argsort(-confidences, kind="stable")
    ordered = confidences[order]
    hits = np.cumsum(np.asarray(correct, bool)[order])
    counts = np.arange(1, len(ordered) + 1)
    ends = np.append(ordered[1:] < ordered[:-1], True)  # the last image of each tie
    reached = ends & (hits >= target * counts - 1e-9)
    if not reached.any():
        return None
    return float(ordered[np.flatnonzero(reached)[-1]])


# === Scores ===


def backoff_scores(hierarchy, labels, class_probabilities, thresholds, group_probabilities=None):
    """Accuracy and coverage at each depth of the back-off answers.

    Returns:
        A dict: `levels`, one entry per level from the groups down with its
        `level`, `threshold`, `coverage` (the share of images answered at
        that level), `accuracy` (of those answers; None when none) and
        `coverage_at_least` (answered at that level or deeper); `unsure` (the
        share answered at no level), `coverage` (the share answered at all)
        and `accuracy` (of every answer given, each at its own level; None
        when none).
    """
    labels = _labels(hierarchy, labels)
    thresholds = check_thresholds(hierarchy, thresholds)
    answers = back_off(hierarchy, class_probabilities, thresholds, group_probabilities)
    _same_rows(answers["depth"], labels)
    nodes = tree_levels(hierarchy)[1]
    right = np.zeros(len(labels), bool)
    levels = []
    for level, name in enumerate(level_names(len(nodes))):
        here = answers["depth"] == level + 1
        right[here] = answers["node"][here] == nodes[level][labels[here]]
        levels.append(
            {
                "level": name,
                "threshold": thresholds[name],
                "coverage": _mean(here),
                "accuracy": _mean(right[here]) if here.any() else None,
                "coverage_at_least": _mean(answers["depth"] >= level + 1),
            }
        )
    answered = answers["depth"] > 0
    return {
        "levels": levels,
        "unsure": _mean(~answered),
        "coverage": _mean(answered),
        "accuracy": _mean(right[answered]) if answered.any() else None,
    }


def risk_coverage(
    hierarchy, labels, class_probabilities, group_probabilities=None, points=CURVE_POINTS
):
    """The risk-coverage curve of each level: answering only the most confident images.

    At coverage c, the share c of images most confident at that level is
    answered with its most probable node there; the risk is the share of
    those answers that are wrong.

    Returns:
        A dict `level name -> {"coverage": [...], "risk": [...], "area": a}`,
        with `points` coverages evenly spaced up to 1 and `a` the area under
        the whole curve (the mean risk over every coverage; lower is better).
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ValueError(f"points must be a positive int. Received: points={points!r}")
    labels = _labels(hierarchy, labels)
    levels = level_probabilities(hierarchy, class_probabilities, group_probabilities)
    _same_rows(levels[0], labels)
    nodes = tree_levels(hierarchy)[1]
    curves = {}
    for level, name in enumerate(level_names(len(levels))):
        right = levels[level].argmax(-1) == nodes[level][labels]
        order = np.argsort(-levels[level].max(-1), kind="stable")
        risks = 1 - np.cumsum(right[order]) / np.arange(1, len(labels) + 1)
        coverages = [(i + 1) / points for i in range(points)]
        shown = [risks[max(math.ceil(c * len(labels)), 1) - 1] for c in coverages]
        curves[name] = {
            "coverage": [round(c, 4) for c in coverages],
            "risk": [round(float(r), 4) for r in shown],
            "area": round(float(risks.mean()), 4),
        }
    return curves


def backoff_summary(
    hierarchy, labels, class_probabilities, thresholds=None, group_probabilities=None
):
    """What `evaluate` and the report show of one model: its `risk_coverage` curves, and
    its `backoff_scores` at `thresholds` when given."""
    summary = {
        "risk_coverage": risk_coverage(hierarchy, labels, class_probabilities, group_probabilities)
    }
    if thresholds is not None:
        scores = backoff_scores(
            hierarchy, labels, class_probabilities, thresholds, group_probabilities
        )
        summary = {**scores, **summary}
    return summary


# === Input checks ===


def check_target(target_accuracy):
    """A target accuracy: a number in (0, 1]."""
    if isinstance(target_accuracy, bool) or not isinstance(target_accuracy, int | float):
        raise TypeError(
            "The target accuracy must be a number in (0, 1], e.g. 0.95. "
            f"Received: target_accuracy={target_accuracy!r}"
        )
    if not 0 < target_accuracy <= 1:  # also false for NaN
        raise ValueError(
            "The target accuracy must be a number in (0, 1], e.g. 0.95 (the share of the "
            f"answers given that are right). Received: target_accuracy={target_accuracy!r}"
        )
    return float(target_accuracy)


def check_thresholds(hierarchy, thresholds):
    """A dict with one threshold per level (`level_names`), each a number in [0, 1] or None;
    returned as a new dict in level order."""
    names = level_names(len(tree_levels(hierarchy)[1]))
    if not isinstance(thresholds, dict):
        raise TypeError(
            f"thresholds must be a dict with one threshold per level, {list(names)}. "
            f"Received: thresholds={thresholds!r:.200}"
        )
    if set(thresholds) != set(names):
        raise ValueError(
            f"thresholds must name each level of the hierarchy once: {list(names)} (from the "
            f"groups down). Received: thresholds for {sorted(map(str, thresholds))}"
        )
    for name in names:
        value = thresholds[name]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and not (number and 0 <= value <= 1):
            raise ValueError(
                f"The {name} threshold must be a probability in [0, 1], or None for a level "
                f"that never answers. Received: thresholds[{name!r}]={value!r:.80}"
            )
    return {name: None if thresholds[name] is None else float(thresholds[name]) for name in names}


def _threshold_values(hierarchy, thresholds):
    checked = check_thresholds(hierarchy, thresholds)
    return [np.inf if value is None else value for value in checked.values()]


def _probabilities(values, name, width):
    values = np.asarray(values, dtype="float64")
    if values.ndim != 2 or values.shape[1] != width:
        raise ValueError(
            f"{name} must have shape (num_samples, {width}): one column per node of the "
            f"hierarchy. Received: {name} with shape {values.shape}"
        )
    if not np.all(np.isfinite(values)) or (values.size and values.min() < -1e-3):
        raise ValueError(
            f"{name} must hold probabilities (finite, >= 0); apply a softmax to logits first. "
            f"Received: {name} with values in [{values.min()}, {values.max()}]"
        )
    return values


def _labels(hierarchy, labels):
    labels = hierarchy.check_labels(labels)
    if not labels.size:
        raise ValueError("Back-off needs at least one labelled image. Received: 0 labels")
    return labels


def _same_rows(first, second):
    if len(first) != len(second):
        raise ValueError(
            "Every input must hold one row per image. Received: "
            f"{len(first)} and {len(second)} rows"
        )


def _mean(values):
    return float(np.mean(values))

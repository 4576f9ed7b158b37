"""How far a mistake misses: the hierarchical distance between a predicted and a true class.

The distance of two classes is the height of their lowest common ancestor
(Bertinetto et al., "Making Better Mistakes", CVPR 2020): 0 for the same
class, 1 for two classes of one group in a two-level tree, 2 for classes of
different groups; in deeper trees, the number of levels (counted from the
classes up) at which the two paths differ. A class that sits higher than
others (a shallow leaf) stands for itself on every level below it.
"""

import numpy as np

TOP_K = (1, 5)


def level_names(depth):
    """The names of a tree's levels, from the top: `("group", "class")` for two levels,
    `("group", "subgroup", "class")` for three, `"subgroup 1"`, ... below that."""
    if depth == 2:
        return ("group", "class")
    if depth == 3:
        return ("group", "subgroup", "class")
    return ("group", *(f"subgroup {i}" for i in range(1, depth - 1)), "class")


def tree_levels(hierarchy):
    """The nodes at each level of the tree, from the groups down to the classes.

    Returns:
        `(names, nodes)`: `names[level]` lists the node names at that level in
        the hierarchy's order; `nodes` is an int array `(depth, num_classes)`
        whose `[level, c]` is the index, in `names[level]`, of class `c`'s
        ancestor at that level (the class itself below a shallow leaf).
    """
    paths = list(_paths(hierarchy.to_dict()))
    names, nodes = [], []
    for level in range(max(len(path) for path in paths)):
        keys = [path[: level + 1] if len(path) > level else path for path in paths]
        index = {}
        nodes.append([index.setdefault(key, len(index)) for key in keys])
        names.append([key[-1] for key in index])
    return names, np.array(nodes, dtype="int64")


def _paths(tree, above=()):
    """The label path of every class, in the hierarchy's order (depth first)."""
    for name, child in tree.items():
        if isinstance(child, dict):
            yield from _paths(child, (*above, name))
        else:
            yield from ((*above, name, leaf) for leaf in child)


def lca_distance(hierarchy, labels, predictions):
    """The height of the lowest common ancestor of each true and predicted class.

    Args:
        hierarchy: `Hierarchy`.
        labels: int array of true class indices.
        predictions: int array of predicted class indices, same length.

    Returns:
        An int array, one distance per sample: 0 where the class is right, up
        to `hierarchy.depth` where only the root is shared.

    Example:

    ```python
    hierarchy = Hierarchy({"cat": ["persian", "siamese"], "dog": ["beagle", "pug"]})
    lca_distance(hierarchy, [0, 0, 0], [0, 1, 3])  # array([0, 1, 2])
    ```
    """
    labels = hierarchy.check_labels(labels)
    predictions = hierarchy.check_labels(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(
            "labels and predictions must hold one class index per sample each. "
            f"Received: {len(labels)} labels and {len(predictions)} predictions"
        )
    nodes = tree_levels(hierarchy)[1]
    return np.sum(nodes[:, labels] != nodes[:, predictions], axis=0)


def mistake_scores(hierarchy, labels, class_probabilities, group_probabilities=None, top_k=TOP_K):
    """How far the mistakes miss, as in "Making Better Mistakes" (Bertinetto et al., 2020).

    The classes are ranked by probability. A conditional model gives its
    gate's `group_probabilities`: classes with equal probability (those of
    groups whose expert did not run are all 0 under hard routing) are then
    ranked by their group's gate probability.

    Args:
        hierarchy: `Hierarchy`.
        labels: int array of true class indices (or one-hot rows).
        class_probabilities: array `(num_samples, num_classes)`.
        group_probabilities: optional array `(num_samples, num_groups)`.
            Defaults to `None`.
        top_k: the k of `top_k_distance`; a k above the number of classes
            counts every class. Defaults to `(1, 5)`.

    Returns:
        A dict with `mistake_distance` (the mean distance of the wrong top
        predictions; None when none is wrong), `mistakes` (their number) and
        `top_k_distance` (`{"1": ..., "5": ...}`: the mean, over samples, of
        the mean distance of the k most probable classes to the true one).
    """
    labels = hierarchy.check_labels(labels)
    ks = _check_top_k(top_k)
    ranked = ranked_classes(hierarchy, class_probabilities, group_probabilities, len(labels))
    ranked = ranked[:, : min(max(ks), hierarchy.num_classes)]
    distances = np.stack([lca_distance(hierarchy, labels, column) for column in ranked.T], 1)
    wrong = ranked[:, 0] != labels
    return {
        "mistake_distance": float(distances[wrong, 0].mean()) if wrong.any() else None,
        "mistakes": int(wrong.sum()),
        "top_k_distance": {str(k): float(distances[:, :k].mean()) for k in ks},
    }


def ranked_classes(hierarchy, class_probabilities, group_probabilities=None, num_samples=None):
    """Class indices of each row, most probable first (ties: the group's probability
    first, then the hierarchy's order)."""
    probabilities = _probabilities(class_probabilities, hierarchy.num_classes, num_samples)
    if group_probabilities is None:
        tie_break = np.zeros_like(probabilities)
    else:
        groups = _probabilities(group_probabilities, hierarchy.num_groups, len(probabilities))
        tie_break = groups[:, hierarchy.class_to_group]
    return np.lexsort((-tie_break, -probabilities), axis=-1)


def milder_mistakes(conditional, flat):
    """One line saying which model's mistakes miss by less (`mistake_distance` of each),
    or None when either has no figure."""
    mine, theirs = conditional.get("mistake_distance"), flat.get("mistake_distance")
    if mine is None or theirs is None:
        return None
    figures = (
        f"the conditional model's mistakes miss by {mine:.3f} levels on average against "
        f"{theirs:.3f} for the flat "
        "baseline (the height of the lowest common ancestor of the true and predicted class: "
        "1 = the right group, wrong class)"
    )
    if round(mine, 3) == round(theirs, 3):
        return f"Mistakes: the two models' mistakes are as mild; {figures}."
    milder = "the conditional model" if mine < theirs else "the flat baseline"
    return f"Milder mistakes: {milder}; {figures}."


# === Input checks ===


def _probabilities(values, width, num_samples):
    values = np.asarray(values, dtype="float64")
    if values.ndim != 2 or values.shape[1] != width:
        raise ValueError(
            f"Probabilities must have one column per node of the hierarchy ({width}). "
            f"Received: an array of shape {values.shape}"
        )
    if num_samples is not None and len(values) != num_samples:
        raise ValueError(
            f"Probabilities must have one row per label ({num_samples} labels). "
            f"Received: an array of shape {values.shape}"
        )
    return values


def _check_top_k(top_k):
    ks = tuple(top_k)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int | np.integer) for k in ks):
        raise TypeError(f"top_k must be positive ints. Received: top_k={top_k!r}")
    if min(ks) < 1:
        raise ValueError(f"top_k must be positive ints. Received: top_k={top_k!r}")
    return ks

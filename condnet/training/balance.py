"""Balancing the outputs a model gained: a logit offset for new groups and new classes.

A model grown with new classes (`condnet extend`) trains on the images of the
new classes and a replay sample of the old ones, and its new outputs rarely
fire exactly as often as they should: with a small replay, old images are given
a new class. On the data this project benchmarks, the grown expert ranked the
old classes as well as before, and the whole loss of old-class accuracy came
from new classes taking old images (the bias of class-incremental learning; Wu
et al., "Large Scale Incremental Learning", CVPR 2019, correct it with two
parameters fitted on held-out data).

Here, one offset is subtracted from the logits of the new classes of the grown
experts, and one from the gate logits of the new groups. Both are chosen on a
validation set, on a grid, by their balanced accuracy (the mean of each class's
recall, so that every class counts alike however many images it has): the
offsets nearest 0 within one standard error of the best (`choose_offsets`),
then written into the classifiers' biases: the model stays an ordinary model,
and the experts and gate outputs that were there before are untouched. An offset
is positive where the new outputs took old images, negative where they answered
too rarely.
"""

import keras
import numpy as np

# Offsets tried for each of the two logits (0 among them).
GRID = np.arange(-2.0, 8.001, 0.25)
_EPSILON = 1e-12


def routed_classes(groups, experts, hierarchy, shifts=(None, None)):
    """The hard-routed class of each row: the gate's argmax group, then that group's
    argmax class. `shifts` is `(per-group logit offsets, per-class logit offsets)`,
    subtracted from the log-probabilities (None: no offset)."""
    group_shift, class_shift = shifts
    gate = np.log(groups + _EPSILON)
    if group_shift is not None:
        gate = gate - group_shift
    route = np.argmax(gate, axis=1)
    scores = np.log(experts + _EPSILON)
    if class_shift is not None:
        scores = scores - class_shift
    outside = hierarchy.class_to_group[None, :] != route[:, None]
    return np.argmax(np.where(outside, -np.inf, scores), axis=1)


def balanced_accuracy(predicted, labels):
    """The mean over the classes present in `labels` of the share of their rows
    predicted right."""
    present = np.unique(labels)
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in present]))


def choose_offsets(groups, experts, labels, hierarchy, new_groups, new_classes, grid=GRID):
    """The `(group offset, class offset)` chosen by the one-standard-error rule, and the
    balanced accuracies behind the choice.

    Every pair of the grid is scored; the chosen pair is the one nearest (0, 0) whose
    balanced accuracy is within one standard error of the best pair's (the rule of
    Breiman et al., "Classification and Regression Trees", 1984; Hastie et al., "The
    Elements of Statistical Learning", section 7.10): an offset moves the outputs only
    when the validation images show a gain larger than their own noise. On a few
    dozen validation images per new class, the best offset of a nearly flat curve
    took CIFAR-10's new classes 14 points down on test images for a validation gain
    of 1 point (benchmarks/RESULTS.md).

    `new_groups` (num_groups,) and `new_classes` (num_classes,) are boolean masks of the
    outputs that take the offset; a mask with no True keeps its offset at 0. Returns
    `(chosen, scores)`, `scores` holding the balanced accuracy `"without"` offsets,
    `"with"` the chosen ones, the `"best"` one of the grid and its `"standard_error"`.
    """
    if len(labels) == 0:
        raise ValueError("Offsets are chosen on validation images; received none.")
    group_grid = grid if np.any(new_groups) else [0.0]
    class_grid = grid if np.any(new_classes) else [0.0]
    plain = routed_classes(groups, experts, hierarchy)
    scored = {(0.0, 0.0): balanced_accuracy(plain, labels)}  # as trained, whatever the grid
    best = (scored[(0.0, 0.0)], plain)
    for group_offset in group_grid:
        for class_offset in class_grid:
            pair = (float(group_offset), float(class_offset))
            if pair in scored:  # (0, 0), scored above
                continue
            shifts = (group_offset * new_groups, class_offset * new_classes)
            predicted = routed_classes(groups, experts, hierarchy, shifts)
            scored[pair] = balanced_accuracy(predicted, labels)
            if scored[pair] > best[0] + 1e-9:
                best = (scored[pair], predicted)
    error = balanced_accuracy_error(best[1], labels)
    near = [pair for pair, score in scored.items() if score >= best[0] - error - 1e-9]
    # Nearest 0 first; then the higher score; then the larger offsets (new outputs
    # answering less: the usual bias of outputs trained beside a small replay).
    chosen = min(near, key=lambda p: (abs(p[0]) + abs(p[1]), -scored[p], -sum(p)))
    return chosen, {
        "without": scored[(0.0, 0.0)],
        "with": scored[chosen],
        "best": best[0],
        "standard_error": error,
    }


def balanced_accuracy_error(predicted, labels):
    """The standard error of `balanced_accuracy(predicted, labels)`: each class's recall
    a binomial share of its rows, the classes independent."""
    present = np.unique(labels)
    recalls = np.array([np.mean(predicted[labels == c] == c) for c in present])
    sizes = np.array([np.sum(labels == c) for c in present])
    return float(np.sqrt(np.sum(recalls * (1 - recalls) / sizes)) / len(present))


def has_output_bias(part, units):
    """Whether `part`'s last weight is a bias of its `units` outputs (the bias of a final
    Dense classifier), the weight `shift_bias` moves."""
    return bool(part.weights) and tuple(part.weights[-1].shape) == (units,)


def shift_bias(part, columns, offset):
    """Subtract `offset` from the bias of `part`'s classifier (its last weight, the bias
    of its final Dense layer) at `columns`."""
    bias = part.weights[-1]
    if len(bias.shape) != 1:
        raise ValueError(
            f"{part.name!r} ends without a bias (its last weight has shape {bias.shape}): "
            "there is no output logit to shift. Give its final Dense layer use_bias=True."
        )
    value = np.array(keras.ops.convert_to_numpy(bias))
    value[list(columns)] -= offset
    bias.assign(value.astype(value.dtype))

import keras
import numpy as np
import pytest

from condnet.hierarchy import Hierarchy
from condnet.testing import cats_and_dogs_model, random_data
from condnet.training import balance

# Groups a (classes p, q, n: n is new) and b (r, s); one image of each class.
HIERARCHY = Hierarchy({"a": ["p", "q", "n"], "b": ["r", "s"]})
GATE = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.2, 0.8], [0.1, 0.9]])
LABELS = np.array([0, 1, 2, 3, 4])  # p, q, n, r, s


def _experts(new_share):
    """Expert a gives the new class `new_share` of every row, its own class of a's rows
    0.3 more than the other old one; expert b is always right."""
    experts = np.zeros((5, 5))
    for row, label in enumerate(LABELS):
        own = label if label < 3 else 0
        experts[row, :3] = [(1 - new_share) / 2] * 2 + [new_share]
        if label < 2:
            experts[row, own] += 0.15
            experts[row, 1 - own] -= 0.15
        experts[row, 3 + (label == 4)] = 1.0
    return experts


def test_routed_classes_take_the_gate_s_group_then_that_group_s_best_class():
    experts = _experts(0.2)
    assert balance.routed_classes(GATE, experts, HIERARCHY).tolist() == [0, 1, 0, 3, 4]
    # An offset of the gate's logits sends the rows of a to b.
    shifts = (np.array([3.0, 0.0]), None)
    assert balance.routed_classes(GATE, experts, HIERARCHY, shifts).tolist() == [3, 3, 3, 3, 4]


def test_balanced_accuracy_counts_every_class_alike():
    labels = np.array([0, 0, 0, 0, 1])
    assert balance.balanced_accuracy(np.array([0, 0, 0, 0, 0]), labels) == 0.5
    assert balance.balanced_accuracy(np.array([0, 0, 0, 1, 1]), labels) == 0.875


def test_an_offset_stops_a_new_class_from_taking_the_old_classes_images():
    experts = _experts(0.5)  # the new class wins every row of group a
    predicted = balance.routed_classes(GATE, experts, HIERARCHY)
    assert predicted[:3].tolist() == [2, 2, 2]
    new_classes = np.array([False, False, True, False, False])
    (group_offset, class_offset), scores = balance.choose_offsets(
        GATE, experts, LABELS, HIERARCHY, np.zeros(2, bool), new_classes
    )
    assert group_offset == 0.0 and class_offset > 0
    # One image per class, every one right: no noise, the best offset is taken.
    assert scores == {"without": 0.6, "with": 1.0, "best": 1.0, "standard_error": 0.0}
    shifted = balance.routed_classes(GATE, experts, HIERARCHY, (None, class_offset * new_classes))
    assert shifted.tolist() == LABELS.tolist()


def test_without_new_outputs_the_offsets_stay_zero():
    experts = _experts(0.2)
    offsets, scores = balance.choose_offsets(
        GATE, experts, LABELS, HIERARCHY, np.zeros(2, bool), np.zeros(5, bool)
    )
    assert offsets == (0.0, 0.0) and scores["without"] == scores["with"]


def test_shifting_a_bias_shifts_the_routed_answers_as_the_offsets_do():
    """The offsets chosen on arrays, written into the biases, give the model the answers
    the arrays gave: the same columns, the same sign."""
    model = cats_and_dogs_model(routing="hard")  # groups cat (2 classes), dog (3)
    x, _ = random_data(256)
    model(x[:2])
    hierarchy = model.hierarchy
    groups, experts = (keras.ops.convert_to_numpy(t) for t in model.dense_outputs(x)[:2])
    new_groups, new_classes = np.array([False, True]), np.array([False, True, False, False, True])
    shifts = (1.5 * new_groups, 2.0 * new_classes)
    expected = balance.routed_classes(groups, experts, hierarchy, shifts)
    assert not np.array_equal(expected, balance.routed_classes(groups, experts, hierarchy))
    balance.shift_bias(model.gate, [1], 1.5)
    balance.shift_bias(model.experts["cat"], [1], 2.0)
    balance.shift_bias(model.experts["dog"], [2], 2.0)
    shifted = (keras.ops.convert_to_numpy(t) for t in model.dense_outputs(x)[:2])
    np.testing.assert_array_equal(balance.routed_classes(*shifted, hierarchy), expected)


def test_a_classifier_without_a_bias_has_no_logit_to_shift():
    inputs = keras.Input((4,))
    no_bias = keras.Model(inputs, keras.layers.Dense(3, use_bias=False)(inputs), name="plain")
    with_bias = keras.Model(inputs, keras.layers.Dense(3)(inputs), name="biased")
    assert not balance.has_output_bias(no_bias, 3)
    assert balance.has_output_bias(with_bias, 3) and not balance.has_output_bias(with_bias, 4)
    with pytest.raises(ValueError, match="'plain' ends without a bias"):
        balance.shift_bias(no_bias, [0], 1.0)


def test_a_gain_within_the_noise_keeps_the_offsets_at_zero():
    # 40 images per class: new class n takes 2 of the 40 images of p and q without an
    # offset; an offset wins them back (balanced accuracy +0.02), a gain within one
    # standard error, so the rule keeps the outputs as trained.
    hierarchy, gate, experts, labels = _noisy_group(taken=2)
    new_classes = np.array([False, False, True, False, False])
    offsets, scores = balance.choose_offsets(
        gate, experts, labels, hierarchy, np.zeros(2, bool), new_classes
    )
    assert scores["best"] > scores["without"] and scores["standard_error"] > 0
    assert scores["best"] - scores["without"] <= scores["standard_error"]
    assert offsets == (0.0, 0.0) and scores["with"] == scores["without"]


def test_a_gain_beyond_the_noise_moves_the_offset_no_further_than_the_noise_needs():
    # n takes 12 images of p and of q: the best offset wins them all back, a smaller one
    # wins most; the rule takes the smallest within one standard error of the best.
    hierarchy, gate, experts, labels = _noisy_group(taken=12)
    new_classes = np.array([False, False, True, False, False])
    (group_offset, class_offset), scores = balance.choose_offsets(
        gate, experts, labels, hierarchy, np.zeros(2, bool), new_classes
    )
    assert scores["best"] - scores["without"] > scores["standard_error"]
    assert group_offset == 0.0 and class_offset > 0
    assert scores["best"] - scores["standard_error"] <= scores["with"] < scores["best"]

    def score(offset):
        shifts = (None, offset * new_classes)
        predicted = balance.routed_classes(gate, experts, hierarchy, shifts)
        return balance.balanced_accuracy(predicted, labels)

    best_offset = max(balance.GRID, key=lambda offset: (score(offset), -abs(offset)))
    assert class_offset < best_offset  # not the best point: the nearest within the noise
    for offset in balance.GRID[(balance.GRID >= 0) & (balance.GRID < class_offset)]:
        assert score(offset) < scores["best"] - scores["standard_error"]


def _noisy_group(taken, per_class=40, wrong=16):
    """Group a (p, q, new n) and b (r, s), `per_class` images each, routed right. Expert a
    gives the new class n the first `taken` rows of p and of q (by a margin growing with
    the row); the last `wrong` rows of p, q, r and s go to the other old class of their
    group, so recalls are near 0.6 and the standard error is a few points; n's own rows
    are right."""
    labels = np.repeat(np.arange(5), per_class)
    gate = np.where(labels[:, None] < 3, [0.9, 0.1], [0.1, 0.9])
    experts = np.zeros((len(labels), 5))
    for row, label in enumerate(labels):
        index, columns = row % per_class, (slice(0, 3) if label < 3 else slice(3, 5))
        experts[row, columns] = 0.1
        experts[row, label] = 0.8
        if label != 2 and index >= per_class - wrong:
            other = {0: 1, 1: 0, 3: 4, 4: 3}[label]
            experts[row, label], experts[row, other] = 0.1, 0.8
        elif label < 2 and index < taken:
            margin = 0.02 * (index + 1)
            experts[row, label], experts[row, 2] = 0.45 - margin / 2, 0.45 + margin / 2
    return HIERARCHY, gate, experts, labels

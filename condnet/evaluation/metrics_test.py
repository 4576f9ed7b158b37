import json

import numpy as np
import pytest

from condnet.evaluation.metrics import (
    confusion_matrix,
    evaluate_predictions,
    expected_calibration_error,
    hierarchical_scores,
    within_group_accuracy,
)
from condnet.hierarchy import Hierarchy

PETS = Hierarchy({"cat": ["persian", "siamese"], "dog": ["beagle", "pug", "boxer"]})
# Unbalanced, three levels: cat, dog, wolf have paths of 3 nodes; rose, tulip of 2.
LIFE = Hierarchy({"animal": {"pet": ["cat", "dog"], "wild": ["wolf"]}, "plant": ["rose", "tulip"]})


def one_hot(indices, num_columns, confidence=1.0):
    """Rows that put `confidence` on `indices` and spread the rest evenly."""
    rest = (1.0 - confidence) / (num_columns - 1)
    rows = np.full((len(indices), num_columns), rest)
    rows[np.arange(len(indices)), indices] = confidence
    return rows


def pets_metrics(**kwargs):
    # True: persian, siamese, beagle, pug. Predicted: persian, persian, pug, siamese.
    return evaluate_predictions(PETS, [0, 1, 2, 3], one_hot([0, 0, 3, 1], 5), **kwargs)


# === hierarchical_scores ===


def test_hierarchical_scores_wrong_class_right_group_scores_half():
    scores = hierarchical_scores(PETS, [0], [1])
    assert scores == {
        "hierarchical_precision": 0.5,
        "hierarchical_recall": 0.5,
        "hierarchical_f1": 0.5,
    }


def test_hierarchical_scores_count_ancestor_sets_in_unbalanced_tree():
    # cat->dog shares {animal, pet}; cat->rose nothing; rose->tulip {plant};
    # wolf->wolf all 3. Shared 6, predicted sets 3+2+2+3=10, true sets 3+3+2+3=11.
    scores = hierarchical_scores(LIFE, [0, 0, 3, 2], [1, 3, 4, 2])
    np.testing.assert_allclose(scores["hierarchical_precision"], 6 / 10)
    np.testing.assert_allclose(scores["hierarchical_recall"], 6 / 11)
    np.testing.assert_allclose(scores["hierarchical_f1"], 4 / 7)


def test_hierarchical_scores_all_wrong_groups_score_zero():
    assert hierarchical_scores(PETS, [0, 2], [3, 1])["hierarchical_f1"] == 0.0


def test_hierarchical_scores_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="lengths 2 and 1"):
        hierarchical_scores(PETS, [0, 1], [1])


# === confusion_matrix ===


def test_confusion_matrix_counts_true_rows_predicted_columns():
    matrix = confusion_matrix([0, 0, 1, 2], [0, 1, 1, 0], 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 0]])


def test_confusion_matrix_rejects_index_out_of_range():
    with pytest.raises(ValueError, match=r"Received: predicted in \[0, 3\] with n=3"):
        confusion_matrix([0, 1], [0, 3], 3)


# === expected_calibration_error ===


def test_expected_calibration_error_weights_bins_by_size():
    # Bin (14/15, 1]: accuracy 1/2, confidence 0.95 -> gap 0.45 on 2 of 3 samples.
    # Bin (4/15, 5/15]: accuracy 0, confidence 0.3 -> gap 0.3 on 1 of 3 samples.
    error = expected_calibration_error([0.95, 0.95, 0.3], [True, False, False])
    np.testing.assert_allclose(error, 0.45 * 2 / 3 + 0.3 / 3)


@pytest.mark.parametrize(
    "confidences, correct",
    [([1.0, 1.0], [True, True]), ([0.5, 0.5], [True, False]), ([0.0], [False])],
)
def test_expected_calibration_error_is_zero_when_calibrated(confidences, correct):
    assert expected_calibration_error(confidences, correct) == 0.0


def test_expected_calibration_error_rejects_bad_num_bins():
    with pytest.raises(ValueError, match="Received: num_bins=0"):
        expected_calibration_error([0.5], [True], num_bins=0)


# === evaluate_predictions ===


def test_evaluate_predictions_accuracies_without_gate():
    metrics = pets_metrics()
    assert metrics["num_samples"] == 4
    assert metrics["accuracy"] == 0.25
    # Groups of the predicted classes: cat, cat, dog, cat vs cat, cat, dog, dog.
    assert metrics["group_accuracy"] == 0.75
    assert metrics["level_accuracy"] == [0.75, 0.25]
    assert metrics["hierarchical_precision"] == 0.5
    assert metrics["routing"] == {
        "samples_per_expert": {"cat": 3, "dog": 1},
        "wrong_expert_share": 0.25,
    }


def test_evaluate_predictions_gate_accuracy_follows_the_gate():
    gate = one_hot([1, 1, 1, 1], 2)  # sends both cats to the dogs
    metrics = pets_metrics(group_probabilities=gate)
    assert metrics["gate_accuracy"] == 0.5
    assert metrics["group_accuracy"] == 0.75  # the predicted classes' groups, as without a gate
    assert "gate_accuracy" not in pets_metrics()  # a flat model has no gate


def test_evaluate_predictions_group_confusion_follows_the_gate():
    gate = one_hot([1, 0, 1, 1], 2)  # sends the siamese to the dogs
    metrics = pets_metrics(group_probabilities=gate)
    assert metrics["group_confusion"] == [[1, 1], [0, 2]]
    assert metrics["routing_matrix"] == [[1, 1], [0, 2]]
    assert metrics["routing"]["samples_per_expert"] == {"cat": 1, "dog": 3}
    # The class path still decides the levels.
    assert metrics["level_accuracy"] == [0.75, 0.25]


def test_evaluate_predictions_route_overrides_the_gate():
    metrics = pets_metrics(group_probabilities=one_hot([0, 0, 1, 1], 2), route=[1, 1, 1, 1])
    assert metrics["gate_accuracy"] == 1.0
    assert metrics["routing"]["wrong_expert_share"] == 0.5
    assert metrics["routing_matrix"] == [[0, 2], [0, 2]]


def test_evaluate_predictions_per_class_and_per_group_scores():
    metrics = pets_metrics()
    persian = metrics["per_class"]["persian"]
    np.testing.assert_allclose(
        [persian["precision"], persian["recall"], persian["f1"]], [0.5, 1.0, 2 / 3]
    )
    assert persian["support"] == 1
    assert metrics["per_class"]["siamese"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 1,
    }
    assert metrics["per_class"]["boxer"]["support"] == 0
    assert metrics["per_group"]["dog"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }


def test_evaluate_predictions_confusion_matrices():
    metrics = pets_metrics()
    assert metrics["class_confusion"][1] == [1, 0, 0, 0, 0]
    assert metrics["class_confusion"][3] == [0, 1, 0, 0, 0]
    assert metrics["group_confusion"] == [[2, 0], [1, 1]]


def test_evaluate_predictions_levels_of_a_deeper_tree():
    metrics = evaluate_predictions(LIFE, [0, 0, 3, 2], one_hot([1, 3, 4, 2], 5))
    assert metrics["level_accuracy"] == [0.75, 0.5, 0.25]
    assert metrics["group_accuracy"] == 0.75
    np.testing.assert_allclose(metrics["hierarchical_recall"], 6 / 11)


def test_evaluate_predictions_calibration_per_level():
    metrics = evaluate_predictions(PETS, [0, 1, 2, 3], one_hot([0, 0, 3, 1], 5, 0.6))
    ece = metrics["expected_calibration_error"]
    # Class confidence 0.6 everywhere (one bin), 1 of 4 right: |0.25 - 0.6|.
    np.testing.assert_allclose(ece["class"], 0.35)
    # Without a gate the group confidence sums the group's class probabilities:
    # 0.7 for the cat guesses (2 of 3 right), 0.8 for the right dog guess.
    np.testing.assert_allclose(ece["group"], (abs(2 - 2.1) + abs(1 - 0.8)) / 4)


def test_evaluate_predictions_is_json_serialisable():
    metrics = pets_metrics(group_probabilities=one_hot([1, 0, 1, 1], 2, 0.9))
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics
    assert metrics["classes"] == PETS.classes and metrics["groups"] == PETS.groups


def test_evaluate_predictions_accepts_one_hot_labels():
    metrics = evaluate_predictions(PETS, one_hot([0, 1, 2, 3], 5), one_hot([0, 0, 3, 1], 5))
    assert metrics["accuracy"] == 0.25


# === Errors ===


def test_evaluate_predictions_rejects_wrong_number_of_class_columns():
    with pytest.raises(
        ValueError,
        match=r"one column per class.*expected shape is \(4, 5\)\. "
        r"Received: class_probabilities with shape \(4, 3\)",
    ):
        evaluate_predictions(PETS, [0, 1, 2, 3], one_hot([0, 0, 1, 1], 3))


def test_evaluate_predictions_rejects_wrong_number_of_rows():
    with pytest.raises(ValueError, match=r"one row per label \(4 labels\)"):
        evaluate_predictions(PETS, [0, 1, 2, 3], one_hot([0, 1], 5))


def test_evaluate_predictions_rejects_wrong_number_of_group_columns():
    with pytest.raises(ValueError, match=r"group_probabilities with shape \(4, 3\)"):
        pets_metrics(group_probabilities=one_hot([0, 0, 1, 1], 3))


def test_evaluate_predictions_rejects_logits():
    with pytest.raises(ValueError, match="apply a softmax"):
        evaluate_predictions(PETS, [0], [[2.0, -1.0, 0.0, 0.0, 0.0]])


def test_evaluate_predictions_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"out of range. Received: labels containing \[7\]"):
        evaluate_predictions(PETS, [0, 7], one_hot([0, 1], 5))


def test_evaluate_predictions_rejects_no_samples():
    with pytest.raises(ValueError, match="at least one sample"):
        evaluate_predictions(PETS, [], np.zeros((0, 5)))


@pytest.mark.parametrize(
    "route, error, message",
    [
        ([0, 1], ValueError, r"route with shape \(2,\)"),
        ([0, 1, 2, 0], ValueError, r"indices in \[0, 2\)"),
        ([0.0, 1.0, 1.0, 0.0], TypeError, "integer group indices"),
    ],
)
def test_evaluate_predictions_rejects_bad_route(route, error, message):
    with pytest.raises(error, match=message):
        pets_metrics(route=np.array(route))


def test_gate_and_group_accuracies_are_told_apart():
    from condnet.hierarchy import Hierarchy

    hierarchy = Hierarchy({"cat": ["persian", "siamese"], "dog": ["pug", "boxer", "beagle"]})
    labels = np.array([0, 0, 2])
    # Row 0: the gate says cat (0.6) but a peaked dog expert wins the soft mixture.
    gate = np.array([[0.6, 0.4], [0.9, 0.1], [0.2, 0.8]])
    classes = np.array(
        [[0.3, 0.3, 0.4, 0.0, 0.0], [0.8, 0.1, 0.1, 0.0, 0.0], [0.1, 0.1, 0.8, 0.0, 0.0]]
    )
    metrics = evaluate_predictions(hierarchy, labels, classes, group_probabilities=gate)
    assert metrics["gate_accuracy"] == 1.0
    np.testing.assert_allclose(metrics["group_accuracy"], 2 / 3)  # the final class's group
    assert "predicted_class_group_accuracy" not in metrics  # one name per number


# === within_group_accuracy ===


def test_within_group_accuracy_chooses_among_the_true_group_only():
    # True: persian (cat), beagle (dog), pug (dog). Each row's top class is in the wrong
    # group; within the true group, rows 0 and 1 put the true class first, row 2 does not.
    probabilities = np.array(
        [
            [0.3, 0.1, 0.5, 0.05, 0.05],  # top beagle; among cats persian wins: right
            [0.6, 0.05, 0.2, 0.1, 0.05],  # top persian; among dogs beagle wins: right
            [0.5, 0.1, 0.3, 0.05, 0.05],  # top persian; among dogs beagle beats pug: wrong
        ]
    )
    labels = [0, 2, 3]
    assert evaluate_predictions(PETS, labels, probabilities)["accuracy"] == 0.0
    assert within_group_accuracy(PETS, labels, probabilities) == pytest.approx(2 / 3)


def test_within_group_accuracy_of_a_hard_routed_row_sent_elsewhere_is_not_a_hit():
    # Hard routing leaves a misrouted row no scores in its true group: that row is wrong
    # (the first class of the group wins the tie at 0), which is why runs score the mixture.
    routed_to_cats = np.array([[0.0, 1.0, 0.0, 0.0, 0.0]])
    assert within_group_accuracy(PETS, [3], routed_to_cats) == 0.0


def test_within_group_accuracy_checks_its_inputs():
    with pytest.raises(ValueError, match="one column per class.*Received: class_probabilities"):
        within_group_accuracy(PETS, [0], np.ones((1, 3)) / 3)

import numpy as np
import pytest

from condnet.evaluation.backoff import (
    answer_fields,
    back_off,
    backoff_scores,
    choose_thresholds,
    level_probabilities,
    lowest_threshold,
    risk_coverage,
)
from condnet.hierarchy import Hierarchy

PETS = Hierarchy({"cat": ["persian", "siamese"], "dog": ["beagle", "pug", "boxer"]})
NESTED = Hierarchy(
    {
        "animals": {"pets": ["cat", "dog"], "wild": ["fox", "wolf"]},
        "vehicles": ["car", "bus"],
    }
)


def _random_run(seed=0, n=400):
    """Probabilities that are right more often the more confident they are."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    sharpness = rng.uniform(0, 6, n)
    logits = rng.normal(size=(n, 5)) + sharpness[:, None] * np.eye(5)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return labels, probabilities


def test_level_probabilities_sum_a_flat_model_s_classes_per_group():
    classes = np.array([[0.1, 0.2, 0.3, 0.3, 0.1]])
    groups, fine = level_probabilities(PETS, classes)
    np.testing.assert_allclose(groups, [[0.3, 0.7]])
    np.testing.assert_allclose(fine, classes)


def test_level_probabilities_of_a_hard_route_multiply_the_gate_and_the_expert():
    classes = np.array([[0.0, 0.0, 0.5, 0.25, 0.25]])  # the dog expert's distribution
    groups, fine = level_probabilities(PETS, classes, np.array([[0.2, 0.8]]))
    np.testing.assert_allclose(groups, [[0.2, 0.8]])
    np.testing.assert_allclose(fine, [[0.0, 0.0, 0.4, 0.2, 0.2]])


def test_back_off_answers_the_deepest_level_it_is_sure_of():
    classes = np.array(
        [
            [0.0, 0.0, 0.95, 0.05, 0.0],  # sure of beagle
            [0.0, 0.0, 0.5, 0.45, 0.05],  # sure of dog, not of the breed
            [0.3, 0.2, 0.2, 0.2, 0.1],  # sure of nothing
        ]
    )
    answers = back_off(PETS, classes, {"group": 0.9, "class": 0.9})
    assert answers["answer"] == ["beagle", "dog", "unsure"]
    np.testing.assert_array_equal(answers["depth"], [2, 1, 0])
    assert answer_fields(answers, 1) == {
        "answer": "dog",
        "answer_level": "group",
        "answer_confidence": pytest.approx(1.0),
    }
    assert answer_fields(answers, 2)["answer_confidence"] is None
    never = back_off(PETS, classes, {"group": None, "class": 0.9})
    assert never["answer"] == ["beagle", "unsure", "unsure"]


def test_back_off_nested_groups_stop_at_the_subgroup():
    classes = np.array([[0.45, 0.45, 0.05, 0.0, 0.05, 0.0]])  # cat or dog: a pet
    answers = back_off(NESTED, classes, {"group": 0.9, "subgroup": 0.9, "class": 0.9})
    assert answers["answer"] == ["pets"]
    assert answer_fields(answers, 0)["answer_level"] == "subgroup"


def test_chosen_thresholds_reach_the_target_accuracy_on_the_images_they_were_chosen_on():
    labels, probabilities = _random_run()
    for target in (0.9, 0.95, 0.99):
        thresholds = choose_thresholds(PETS, labels, probabilities, target)
        scores = backoff_scores(PETS, labels, probabilities, thresholds)
        assert scores["accuracy"] >= target
        for level in scores["levels"]:
            assert level["accuracy"] is None or level["accuracy"] >= target
        # the lowest such threshold: one step lower, the class answers miss the target
        cut = thresholds["class"]
        confidences = probabilities.max(-1)
        assert scores["levels"][1]["coverage"] < 1
        below = confidences[confidences < cut].max()
        chosen = confidences >= below
        assert np.mean(probabilities[chosen].argmax(-1) == labels[chosen]) < target


def test_backoff_scores_give_coverage_and_accuracy_at_each_depth():
    classes = np.array(
        [
            [0.0, 0.0, 0.95, 0.05, 0.0],  # beagle (true beagle): right class
            [0.0, 0.0, 0.05, 0.95, 0.0],  # pug (true boxer): wrong class
            [0.0, 0.0, 0.5, 0.45, 0.05],  # dog (true pug): right group
            [0.05, 0.0, 0.5, 0.45, 0.0],  # dog (true persian): wrong group
            [0.3, 0.2, 0.2, 0.2, 0.1],  # unsure
        ]
    )
    scores = backoff_scores(PETS, [2, 4, 3, 0, 0], classes, {"group": 0.9, "class": 0.9})
    group, fine = scores["levels"]
    assert (fine["level"], fine["coverage"], fine["accuracy"]) == ("class", 0.4, 0.5)
    assert (group["level"], group["coverage"], group["accuracy"]) == ("group", 0.4, 0.5)
    assert group["coverage_at_least"] == pytest.approx(0.8)
    assert scores["unsure"] == pytest.approx(0.2) and scores["coverage"] == pytest.approx(0.8)
    assert scores["accuracy"] == pytest.approx(0.5)


def test_lowest_threshold_takes_ties_together_and_none_when_unreachable():
    # Two images at 0.9, one right: taken together they are at 0.5.
    assert lowest_threshold([0.95, 0.9, 0.9], [True, True, False], 0.9) == 0.95
    assert lowest_threshold([0.95, 0.9, 0.9], [True, True, False], 0.6) == 0.9
    assert lowest_threshold([0.8, 0.7], [False, True], 0.9) is None
    assert lowest_threshold([], [], 0.9) is None


def test_a_level_that_cannot_reach_the_target_never_answers():
    classes = np.array([[0.0, 0.0, 0.9, 0.1, 0.0]] * 4)
    thresholds = choose_thresholds(PETS, [2, 3, 3, 0], classes, 0.9)
    assert thresholds == {"group": None, "class": None}
    assert backoff_scores(PETS, [2, 3, 3, 0], classes, thresholds)["coverage"] == 0.0


def test_risk_coverage_starts_with_the_most_confident_images():
    classes = np.array(
        [[0.0, 0.0, 0.9, 0.1, 0.0], [0.0, 0.0, 0.1, 0.8, 0.1], [0.6, 0.4, 0.0, 0.0, 0.0]] * 2
    )
    labels = [2, 2, 0] * 2  # the 0.8 pug is wrong; the rest right
    curves = risk_coverage(PETS, labels, classes, points=3)
    assert curves["class"]["coverage"] == pytest.approx([0.3333, 0.6667, 1.0], abs=1e-4)
    assert curves["class"]["risk"] == pytest.approx([0.0, 0.5, 1 / 3], abs=1e-4)
    assert curves["group"]["risk"] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: choose_thresholds(PETS, [0], np.eye(5)[:1], target_accuracy=1.5),
            ValueError,
            r"number in \(0, 1\].*Received: target_accuracy=1.5",
        ),
        (
            lambda: choose_thresholds(PETS, [0], np.eye(5)[:1], target_accuracy="high"),
            TypeError,
            "Received: target_accuracy='high'",
        ),
        (
            lambda: back_off(PETS, np.eye(5)[:1], {"class": 0.9}),
            ValueError,
            r"name each level .*\['group', 'class'\].*Received: thresholds for \['class'\]",
        ),
        (
            lambda: back_off(PETS, np.eye(5)[:1], {"group": 2, "class": 0.9}),
            ValueError,
            r"group threshold must be a probability in \[0, 1\].*Received: thresholds\['group'\]=2",
        ),
        (
            lambda: back_off(PETS, np.eye(5)[:1], [0.9, 0.9]),
            TypeError,
            r"Received: thresholds=\[0.9, 0.9\]",
        ),
        (
            lambda: back_off(PETS, np.ones((1, 4)), {"group": 0.9, "class": 0.9}),
            ValueError,
            r"class_probabilities must have shape \(num_samples, 5\).*\(1, 4\)",
        ),
        (
            lambda: choose_thresholds(PETS, [0, 1], np.eye(5)[:1]),
            ValueError,
            "one row per image. Received: 1 and 2 rows",
        ),
    ],
)
def test_backoff_errors_say_what_was_received(call, error, message):
    with pytest.raises(error, match=message):
        call()

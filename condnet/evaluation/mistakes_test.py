import numpy as np
import pytest

from condnet.evaluation.metrics import evaluate_predictions
from condnet.evaluation.mistakes import (
    lca_distance,
    level_names,
    milder_mistakes,
    mistake_scores,
    tree_levels,
)
from condnet.hierarchy import Hierarchy

PETS = Hierarchy({"cat": ["persian", "siamese"], "dog": ["beagle", "pug", "boxer"]})
NESTED = Hierarchy(
    {
        "animals": {"pets": ["cat", "dog"], "wild": ["fox", "wolf"]},
        "vehicles": {"road": ["car", "bus"], "air": ["plane", "kite"]},
    }
)


def test_lca_distance_two_levels_counts_the_right_group_as_one():
    labels = [0, 0, 0, 3]
    predictions = [0, 1, 2, 4]  # right; same group; another group; same group
    np.testing.assert_array_equal(lca_distance(PETS, labels, predictions), [0, 1, 2, 1])


def test_lca_distance_nested_groups_counts_levels_from_the_classes_up():
    cat, dog, fox, car = (NESTED.class_index(n) for n in ("cat", "dog", "fox", "car"))
    distances = lca_distance(NESTED, [cat] * 4, [cat, dog, fox, car])
    np.testing.assert_array_equal(distances, [0, 1, 2, 3])  # class, subgroup, group, root


def test_lca_distance_a_shallow_class_stands_for_itself_below():
    tree = Hierarchy({"a": {"x": ["x1", "x2"], "y": ["y1", "y2"]}, "b": ["b1", "b2"]})
    x1, x2, y1, b1, b2 = (tree.class_index(n) for n in ("x1", "x2", "y1", "b1", "b2"))
    np.testing.assert_array_equal(
        lca_distance(tree, [x1, x1, b1, b1], [x2, y1, b2, x1]), [1, 2, 2, 3]
    )


def test_tree_levels_names_the_nodes_of_each_level():
    names, nodes = tree_levels(NESTED)
    assert names[0] == ["animals", "vehicles"]
    assert names[1] == ["pets", "wild", "road", "air"]
    assert names[2] == NESTED.classes
    np.testing.assert_array_equal(nodes[1], [0, 0, 1, 1, 2, 2, 3, 3])
    assert level_names(3) == ("group", "subgroup", "class")
    assert level_names(4) == ("group", "subgroup 1", "subgroup 2", "class")


def test_mistake_scores_mean_distance_of_errors_and_top_k():
    probabilities = np.array(
        [
            [0.6, 0.3, 0.1, 0.0, 0.0],  # true persian: right; top-2 persian, siamese
            [0.1, 0.0, 0.2, 0.6, 0.1],  # true beagle: pug, a sibling (1)
            [0.1, 0.7, 0.0, 0.0, 0.2],  # true boxer: siamese, another group (2)
        ]
    )
    scores = mistake_scores(PETS, [0, 2, 4], probabilities, top_k=(1, 2))
    assert scores["mistakes"] == 2
    assert scores["mistake_distance"] == pytest.approx(1.5)
    assert scores["top_k_distance"]["1"] == pytest.approx((0 + 1 + 2) / 3)
    # top-2: (0 + 1) / 2, (1 + 0) / 2, (2 + 0) / 2
    assert scores["top_k_distance"]["2"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_mistake_scores_none_without_a_mistake_and_k_above_the_classes_counts_all():
    probabilities = np.eye(5)[[0, 3]]
    scores = mistake_scores(PETS, [0, 3], probabilities, top_k=(1, 50))
    assert scores["mistake_distance"] is None and scores["mistakes"] == 0
    # every class: persian -> 0, 1, 2, 2, 2; pug -> 2, 2, 1, 0, 1
    assert scores["top_k_distance"]["50"] == pytest.approx((7 / 5 + 6 / 5) / 2)


def test_mistake_scores_rank_classes_a_hard_route_left_at_zero_by_their_gate():
    # Hard routing: only the dog expert ran; the cat classes are 0 but the gate says 0.4.
    classes = np.array([[0.0, 0.0, 0.5, 0.3, 0.2]])
    groups = np.array([[0.4, 0.6]])
    ranked = mistake_scores(PETS, [0], classes, groups, top_k=(4,))
    flat = mistake_scores(PETS, [0], classes, top_k=(4,))
    # with the gate: beagle, pug, boxer, then a cat (distance 0 for persian first)
    assert ranked["top_k_distance"]["4"] == pytest.approx((2 + 2 + 2 + 0) / 4)
    assert flat["top_k_distance"]["4"] == pytest.approx((2 + 2 + 2 + 0) / 4)  # hierarchy order


def test_evaluate_predictions_reports_the_mistake_distance():
    probabilities = np.eye(5)[[1, 0, 3]]
    metrics = evaluate_predictions(PETS, [0, 0, 0], probabilities)
    assert metrics["mistake_distance"] == pytest.approx((1 + 2) / 2)
    assert metrics["mistakes"] == 2 and set(metrics["top_k_distance"]) == {"1", "5"}


def test_milder_mistakes_names_the_model_whose_errors_miss_less():
    line = milder_mistakes({"mistake_distance": 1.2}, {"mistake_distance": 1.6})
    assert line.startswith(
        "Milder mistakes: the conditional model; the conditional model's mistakes miss by 1.200"
    )
    flat = milder_mistakes({"mistake_distance": 1.9}, {"mistake_distance": 1.1})
    assert flat.startswith("Milder mistakes: the flat baseline; the conditional model's")
    assert "1.900 levels on average against 1.100 for the flat baseline" in flat
    assert "as mild" in milder_mistakes({"mistake_distance": 1.5}, {"mistake_distance": 1.5})
    assert milder_mistakes({"mistake_distance": None}, {"mistake_distance": 1.0}) is None


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: lca_distance(PETS, [0, 1], [0]), ValueError, "Received: 2 labels and 1"),
        (lambda: lca_distance(PETS, [0], [9]), ValueError, "out of range"),
        (
            lambda: mistake_scores(PETS, [0], np.ones((1, 3)) / 3),
            ValueError,
            r"one column per node .*\(5\). Received: an array of shape \(1, 3\)",
        ),
        (
            lambda: mistake_scores(PETS, [0], np.eye(5)[:1], top_k=(0,)),
            ValueError,
            r"top_k must be positive ints. Received: top_k=\(0,\)",
        ),
        (
            lambda: mistake_scores(PETS, [0], np.eye(5)[:1], top_k=(1.5,)),
            TypeError,
            r"Received: top_k=\(1.5,\)",
        ),
    ],
)
def test_mistake_errors_say_what_was_received(call, error, message):
    with pytest.raises(error, match=message):
        call()

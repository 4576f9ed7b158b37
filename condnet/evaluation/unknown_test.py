import numpy as np
import pytest

from condnet.evaluation.unknown import (
    auroc,
    check_false_alarm_rate,
    choose_unknown_thresholds,
    detection_rate,
    flag_unknown,
    highest_threshold,
    unknown_fields,
    unknown_scores,
)
from condnet.hierarchy import Hierarchy

TREE = Hierarchy({"cat": ["persian", "siamese"], "dog": ["beagle", "pug", "boxer"]})


def test_unknown_scores_are_the_chosen_expert_s_maximum_softmax():
    # hard routing: the chosen expert's own softmax; soft: P(group) x P(class | group)
    classes = np.array(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.4, 0.3, 0.3],
            [0.3, 0.1, 0.3, 0.2, 0.1],  # soft: cat 0.4 (0.75 / 0.25), dog 0.6 (0.5 ...)
        ]
    )
    scored = unknown_scores(TREE, classes, route=np.array([0, 1, 1]))
    np.testing.assert_allclose(scored["score"], [0.9, 0.4, 0.5])
    np.testing.assert_array_equal(scored["route"], [0, 1, 1])
    routed_to_cat = unknown_scores(TREE, classes[2:], route=np.array([0]))
    np.testing.assert_allclose(routed_to_cat["score"], [0.75])


def test_flat_unknown_scores_are_the_maximum_over_every_class_in_its_group():
    classes = np.array([[0.1, 0.2, 0.3, 0.15, 0.25], [0.6, 0.1, 0.1, 0.1, 0.1]])
    scored = unknown_scores(TREE, classes)
    np.testing.assert_allclose(scored["score"], [0.3, 0.6])
    np.testing.assert_array_equal(scored["route"], [1, 0])


def test_an_image_with_no_prediction_has_no_score_and_is_not_flagged():
    classes = np.array([[np.nan] * 5, [0.0, 0.0, 0.4, 0.3, 0.3]])
    scored = unknown_scores(TREE, classes, route=np.array([-1, 1]))
    assert np.isnan(scored["score"][0])
    flagged = flag_unknown(TREE, scored, {"cat": 0.5, "dog": 0.5})
    np.testing.assert_array_equal(flagged, [False, True])
    assert unknown_fields(scored, flagged, 0) == {"unknown": None, "unknown_score": None}
    assert unknown_fields(scored, flagged, 1) == {"unknown": True, "unknown_score": 0.4}


def test_flag_unknown_uses_each_expert_s_own_threshold():
    scored = {"score": np.array([0.6, 0.6, 0.3]), "route": np.array([0, 1, 1])}
    flagged = flag_unknown(TREE, scored, {"cat": 0.7, "dog": 0.5})
    np.testing.assert_array_equal(flagged, [True, False, True])
    never = flag_unknown(TREE, scored, {"cat": None, "dog": None})
    assert not never.any()


def test_thresholds_flag_at_most_the_false_alarm_rate_per_expert():
    rng = np.random.default_rng(0)
    cat = rng.dirichlet([1, 1], 40)
    dog = rng.dirichlet([1, 1, 1], 60)
    classes = np.zeros((100, 5))
    classes[:40, :2], classes[40:, 2:] = cat, dog
    route = np.array([0] * 40 + [1] * 60)
    thresholds = choose_unknown_thresholds(TREE, classes, route, false_alarm_rate=0.05)
    flagged = flag_unknown(TREE, unknown_scores(TREE, classes, route), thresholds)
    assert flagged[:40].sum() == 2 and flagged[40:].sum() == 3  # 5% of 40 and of 60
    np.testing.assert_allclose(thresholds["dog"], np.sort(dog.max(-1))[3])
    assert choose_unknown_thresholds(TREE, classes[:40], route[:40])["dog"] is None  # no image


def test_highest_threshold_takes_ties_together_and_never_flags_more():
    assert highest_threshold([0.2, 0.5, 0.5, 0.5, 0.9], 0.4) == 0.5  # flags 0.2 only
    assert highest_threshold([0.3, 0.4], 0.0) == 0.3  # flags nothing
    assert highest_threshold([], 0.05) is None


def test_auroc_from_ranks_with_ties_counting_half():
    assert auroc([0.9, 0.8, 0.7], [0.1, 0.2]) == 1.0
    assert auroc([0.1, 0.2], [0.9, 0.8, 0.7]) == 0.0
    assert auroc([0.5, 0.5], [0.5]) == 0.5
    # pairs (unknown below known): 0.3<0.4, 0.3<0.6, 0.5<0.6; 0.5 vs 0.4 not: 3 of 4
    assert auroc([0.4, 0.6], [0.3, 0.5]) == 0.75


def test_detection_rate_at_the_false_alarm_rate_of_the_known_images():
    known = np.linspace(0.5, 1.0, 20)  # 5% of 20: the lowest one may be flagged
    unknown = np.array([0.1, 0.5, 0.52, 0.9])
    assert detection_rate(known, unknown, 0.05) == 0.75  # below 0.526: 0.1, 0.5, 0.52
    assert detection_rate(known, unknown, 0.0) == 0.25  # below 0.5: 0.1


@pytest.mark.parametrize("rate", [1.0, -0.1, float("nan"), "0.05", True])
def test_a_bad_false_alarm_rate_is_refused_with_what_was_received(rate):
    with pytest.raises(ValueError, match=r"must be a number in \[0, 1\).*Received: false_alarm"):
        check_false_alarm_rate(rate)


def test_bad_inputs_are_refused_with_what_was_received():
    with pytest.raises(ValueError, match=r"shape \(num_samples, 5\).*shape \(2, 3\)"):
        unknown_scores(TREE, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"route must hold one group index per image.*\(1,\)"):
        unknown_scores(TREE, np.zeros((2, 5)), route=np.array([0]))
    with pytest.raises(ValueError, match=r"0 to 1, or -1.*Received: route"):
        unknown_scores(TREE, np.zeros((1, 5)), route=np.array([2]))
    scored = {"score": np.array([0.5]), "route": np.array([0])}
    with pytest.raises(ValueError, match=r"each group of the hierarchy once: \['cat', 'dog'\]"):
        flag_unknown(TREE, scored, {"cat": 0.5})
    with pytest.raises(ValueError, match=r"Received: thresholds\['dog'\]=2"):
        flag_unknown(TREE, scored, {"cat": 0.5, "dog": 2})
    with pytest.raises(TypeError, match=r"one threshold per group.*Received: thresholds=0.5"):
        flag_unknown(TREE, scored, 0.5)
    with pytest.raises(ValueError, match="unknown_scores must hold at least one finite score"):
        auroc([0.5], [np.nan])

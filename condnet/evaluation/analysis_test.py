"""Tests of the report's analysis: the verdict, where the gap is, the gallery's examples."""

import numpy as np
import pytest

from condnet.evaluation.analysis import (
    PER_KIND,
    across_classes,
    baseline_verdict,
    gallery_examples,
    gap_sources,
)
from condnet.evaluation.report_test import HIERARCHY, example_of


def test_galleries_take_examples_round_robin_over_the_classes():
    examples = [example_of("persian")] * 10 + [example_of("pug")] * 10 + [example_of("beagle")] * 2
    chosen = across_classes(examples, PER_KIND)
    assert [e["true"] for e in chosen] == ["persian", "pug", "beagle"] * 2 + ["persian", "pug"]
    assert across_classes(examples, PER_KIND) == chosen  # the same every time


def test_gallery_examples_of_a_flat_classifier_take_the_group_of_its_class():
    predictions = {
        "paths": ["a.png", "b.png"],
        "labels": np.array([0, 3]),  # persian, pug
        "classes": np.eye(5)[[2, 3]] * 0.9,  # beagle (a dog), pug
    }
    rows = gallery_examples(HIERARCHY, predictions)
    assert [(r["expert"], r["true_group"], r["predicted"]) for r in rows] == [
        ("dog", "cat", "beagle"),
        ("dog", "dog", "pug"),
    ]
    routed = gallery_examples(HIERARCHY, {**predictions, "route": np.array([0, 0])})
    assert [r["expert"] for r in routed] == ["cat", "cat"]  # the expert that ran


def test_gap_sources_splits_the_gap_between_the_gate_and_the_experts():
    conditional = {"group_accuracy": 0.915, "within_group_accuracy": 0.692}
    flat = {"group_accuracy": 0.930, "within_group_accuracy": 0.693}
    line = gap_sources(conditional, flat)
    assert "right group for 0.9150 of the images against 0.9300" in line and "(-0.0150)" in line
    assert "right class for 0.6920 against 0.6930 (-0.0010)" in line
    assert line.endswith("The larger loss is the gate's.")
    experts_lose = gap_sources({**conditional, "within_group_accuracy": 0.6}, flat)
    assert experts_lose.endswith("The larger loss is the experts'.")
    both_ahead = gap_sources({"group_accuracy": 0.95, "within_group_accuracy": 0.7}, flat)
    assert "larger loss" not in both_ahead
    assert gap_sources({"group_accuracy": 0.9}, flat) is None
    documents = gap_sources(conditional, flat, "documents")
    assert "right group for 0.9150 of the documents against 0.9300" in documents


@pytest.mark.parametrize(
    "gate_part, experts_part, ending",
    [
        (-0.015, -0.001, " The larger loss is the gate's."),
        (-0.015, -0.093, " The larger loss is the experts'."),
        (-0.0117, -0.0117, " The gate and the experts lose as much (-0.0117 each)."),
        (-0.0115, 0.0, " The loss is the gate's: the experts are not behind."),
        (0.02, -0.03, " The loss is the experts': the gate is not behind."),
        (0.02, 0.001, "(+0.0010)."),
    ],
)
def test_gap_sources_names_the_part_that_is_behind(gate_part, experts_part, ending):
    flat = {"group_accuracy": 0.9383, "within_group_accuracy": 0.8883}
    conditional = {
        "group_accuracy": flat["group_accuracy"] + gate_part,
        "within_group_accuracy": flat["within_group_accuracy"] + experts_part,
    }
    line = gap_sources(conditional, flat)
    assert line.endswith(ending)
    assert line.count("loss") <= 1 and line.count("lose") <= 1


def test_gap_sources_reads_equal_printed_numbers_as_equal():
    # 0.95 - 0.9383 and 0.9 - 0.8883 differ in the last bits of a float.
    conditional = {"group_accuracy": 0.9383, "within_group_accuracy": 0.8883}
    flat = {"group_accuracy": 0.95, "within_group_accuracy": 0.9}
    assert (0.9383 - 0.95) != (0.8883 - 0.9)
    line = gap_sources(conditional, flat)
    assert "(-0.0117); given the true group" in line and "(-0.0117)." in line
    assert line.endswith("The gate and the experts lose as much (-0.0117 each).")


BOUND = "sqrt(p(1-p)/n) x sqrt(2): a simple bound"


@pytest.mark.parametrize("gain, side", [(0.048, "ahead of"), (-0.048, "behind")])
def test_baseline_verdict_calls_a_small_difference_within_noise(gain, side):
    # p = 0.9 on 200 images: standard error sqrt(0.09 / 200) x sqrt(2) = 0.0300.
    conditional = {"accuracy": 0.9 + gain / 2, "macs_per_image": 100}
    flat = {"accuracy": 0.9 - gain / 2, "macs_per_image": 100}
    verdict = baseline_verdict(conditional, flat, num_samples=200)
    assert verdict == (
        f"The conditional model is 0.0480 accuracy {side} the flat baseline at 1.00x its MACs "
        "per image, within noise: less than two standard errors (standard error of the "
        f"difference 0.0300 on 200 images, {BOUND})."
    )


@pytest.mark.parametrize("gain, words", [(0.048, "beats"), (-0.048, "loses to")])
def test_baseline_verdict_keeps_its_words_beyond_two_standard_errors(gain, words):
    # The same gap on 2,000 images: standard error 0.0095, the gap 5.1 of them.
    conditional, flat = {"accuracy": 0.9 + gain / 2}, {"accuracy": 0.9 - gain / 2}
    verdict = baseline_verdict(conditional, flat, num_samples=2000)
    assert verdict == (
        f"The conditional model {words} the flat baseline by 0.0480 accuracy (5.1 standard "
        f"errors; standard error of the difference 0.0095 on 2000 images, {BOUND})."
    )


def test_baseline_verdict_without_a_count_says_nothing_of_noise():
    verdict = baseline_verdict({"accuracy": 0.948}, {"accuracy": 0.9})
    assert verdict == "The conditional model beats the flat baseline by 0.0480 accuracy."
    tie = baseline_verdict({"accuracy": 0.902}, {"accuracy": 0.9}, num_samples=600)
    assert tie.startswith("The conditional model ties the flat baseline (+0.0020; standard ")

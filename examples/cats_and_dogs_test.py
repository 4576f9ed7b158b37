import importlib.util
import re
from pathlib import Path

import pytest


def _example():
    path = Path(__file__).with_name("cats_and_dogs.py")
    spec = importlib.util.spec_from_file_location("cats_and_dogs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cats_and_dogs_example_trains_then_predicts_each_breed_with_its_routed_model(capsys):
    # How accurate the example gets is its own printout's business, not a test's: one
    # short epoch is enough to check what it does.
    example = _example()
    results = example.main(epochs=1, samples=64, verbose=0)
    printed = capsys.readouterr().out
    routed = re.findall(r"routed to the (\w+) model \(p=[\d.]+\) -> (\w+)", printed)
    assert len(routed) == 5
    for group, breed in routed:  # hard routing: the breed comes from the routed model
        assert breed in example.HIERARCHY[group]
    accuracy, group_accuracy = results["accuracy"], results["group_accuracy"]
    line = f"hard-routed accuracy: {accuracy:.3f}, cat/dog accuracy: {group_accuracy:.3f}"
    assert line in printed
    assert accuracy <= group_accuracy  # a right breed lies in the right group under hard routing


def test_cats_and_dogs_example_builds_the_question_architecture():
    model = _example().build_model()
    assert model.gate_tap == "conv_04"
    assert model.expert_taps == {"cat": "conv_03", "dog": "conv_02"}
    assert model.experts["dog"].input_shape[1:] == (8, 8, 16)  # conv_02 of 32x32 input

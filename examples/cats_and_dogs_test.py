import importlib.util
from pathlib import Path

import pytest


def _example():
    path = Path(__file__).with_name("cats_and_dogs.py")
    spec = importlib.util.spec_from_file_location("cats_and_dogs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cats_and_dogs_example_trains_and_routes(capsys):
    results = _example().main(epochs=4, samples=800, verbose=0)
    printed = capsys.readouterr().out
    assert results["group_accuracy"] > 0.8
    assert results["accuracy"] > 0.5  # chance is 0.2
    assert printed.count("routed to the") == 5
    assert "hard-routed accuracy" in printed


def test_cats_and_dogs_example_builds_the_question_architecture():
    model = _example().build_model()
    assert model.gate_tap == "conv_04"
    assert model.expert_taps == {"cat": "conv_03", "dog": "conv_02"}
    assert model.experts["dog"].input_shape[1:] == (8, 8, 16)  # conv_02 of 32x32 input

import numpy as np
import pytest

from condnet.evaluation.baseline import flat_baseline
from condnet.evaluation.cost import count_macs, routed_macs
from condnet.hierarchy import Hierarchy
from condnet.testing import cats_and_dogs_model
from condnet.vision.image_model import build_image_model

HIERARCHY = Hierarchy({"vehicles": ["car", "truck", "ship"], "animals": ["cat", "dog"]})


@pytest.mark.parametrize("placement", ["branch", "top"])
def test_flat_baseline_costs_at_most_the_routed_path_and_close_to_it(placement):
    model = build_image_model(
        HIERARCHY, image_size=32, filters=(8, 16, 32, 32), expert_placement=placement
    )
    baseline = flat_baseline(model, (32, 32, 3))
    budget = routed_macs(model, (32, 32, 3))["routed"]
    macs = count_macs(baseline, (32, 32, 3))
    assert macs <= budget
    if placement == "branch":  # widths can grow: the baseline reaches the budget closely
        assert macs > 0.93 * budget
    assert baseline.output.shape[-1] == HIERARCHY.num_classes


def test_flat_baseline_starts_from_the_conditional_trunk_weights():
    model = build_image_model(HIERARCHY, image_size=32, filters=(8, 16, 32, 32))
    baseline = flat_baseline(model, (32, 32, 3))
    trunk = next(layer for layer in baseline.layers if layer.name == model.trunk.name)
    for mine, theirs in zip(trunk.get_weights(), model.trunk.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    trunk.set_weights([w * 0 for w in trunk.get_weights()])  # a copy, not shared
    assert any(np.abs(w).sum() > 0 for w in model.trunk.get_weights())


def test_flat_baseline_outputs_probabilities():
    model = build_image_model(HIERARCHY, image_size=32, filters=(8, 16, 32, 32))
    baseline = flat_baseline(model, (32, 32, 3))
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    probabilities = np.asarray(baseline.predict(images, verbose=0))
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


def test_flat_baseline_needs_a_conditional_model():
    with pytest.raises(TypeError, match="flat twin of a condnet.ConditionalModel"):
        flat_baseline(object(), (8,))


def test_flat_baseline_of_a_model_without_trunk_copies_its_expert():
    baseline = flat_baseline(cats_and_dogs_model(), (8,))
    assert baseline.output.shape[-1] == 5


def test_flat_baseline_needs_a_functional_expert():
    from condnet import ConditionalModel
    from condnet.testing import mlp

    model = ConditionalModel(
        {"a": ["x"], "b": ["y"]}, gate=mlp(2, name="gate"), experts={"a": None, "b": None}
    )
    with pytest.raises(ValueError, match=r"needs at least one expert.*'a': None"):
        flat_baseline(model, (8,))

import keras
import numpy as np
import pytest

from condnet.hierarchy import Hierarchy
from condnet.training.upcycle import upcycle, upcycle_source
from condnet.vision.image_model import build_image_model

HIERARCHY = Hierarchy({"vehicles": ["car", "truck", "ship"], "animals": ["cat", "dog"]})
NESTED = Hierarchy(
    {
        "vehicles": ["car", "truck", "ship"],
        "animals": {"pets": ["cat", "dog"], "wild": ["fox", "owl"]},
    }
)


def _images(count=8, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


def _trained_source(model, hierarchy):
    source = upcycle_source(model, (32, 32, 3))
    source.compile("adam", "sparse_categorical_crossentropy")
    labels = np.arange(8) % hierarchy.num_classes
    source.fit(_images(), labels, epochs=2, batch_size=4, verbose=0)
    return source


def _class_probabilities(model, images):
    return keras.ops.convert_to_numpy(model(images)["experts"])


@pytest.mark.parametrize("placement", ["branch", "top"])
def test_upcycled_experts_answer_as_the_flat_source_does_within_their_group(placement):
    model = build_image_model(
        HIERARCHY, image_size=32, filters=(8, 16, 16), expert_placement=placement
    )
    source = _trained_source(model, HIERARCHY)
    gate_before = model.gate.get_weights()
    images = _images(seed=1)
    flat = keras.ops.convert_to_numpy(source(images))
    within = np.concatenate(
        [
            flat[:, c] / flat[:, c].sum(axis=1, keepdims=True)
            for c in map(HIERARCHY.group_slice, HIERARCHY.groups)
        ],
        axis=1,
    )
    assert not np.allclose(_class_probabilities(model, images), within, atol=1e-3)
    upcycle(model, source)
    np.testing.assert_allclose(_class_probabilities(model, images), within, atol=1e-5)
    for mine, kept in zip(model.gate.get_weights(), gate_before):
        np.testing.assert_array_equal(mine, kept)  # the gate starts fresh


def test_upcycling_reaches_the_experts_of_a_nested_group():
    model = build_image_model(NESTED, image_size=32, filters=(8, 16, 16))
    source = _trained_source(model, NESTED)
    upcycle(model, source)
    images = _images(seed=2)
    flat = keras.ops.convert_to_numpy(source(images))
    pets = model.experts["animals"].experts["pets"]
    features = model.tap_features(images)[model.expert_taps["animals"]]
    probabilities = keras.ops.convert_to_numpy(pets(features))
    columns = [NESTED.classes.index(name) for name in ("cat", "dog")]
    within = flat[:, columns] / flat[:, columns].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, within, atol=1e-5)


def test_upcycling_copies_the_trunk_and_keeps_the_source_separate():
    model = build_image_model(HIERARCHY, image_size=32, filters=(8, 16, 16))
    source = _trained_source(model, HIERARCHY)
    upcycle(model, source)
    trunk = source.get_layer(model.trunk.name)
    for mine, theirs in zip(model.trunk.get_weights(), trunk.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    trunk.set_weights([w * 0 for w in trunk.get_weights()])
    assert any(np.abs(w).sum() > 0 for w in model.trunk.get_weights())


def test_separate_experts_are_refused_with_the_reason():
    model = build_image_model(HIERARCHY, image_size=32, filters=(8, 8), expert_placement="separate")
    with pytest.raises(ValueError, match="ends in Functional.*branch, taps or top"):
        upcycle_source(model, (32, 32, 3))


def test_experts_of_other_layouts_are_refused_with_both_layouts():
    model = build_image_model(HIERARCHY, image_size=32, filters=(8, 16, 16))
    source = upcycle_source(model, (32, 32, 3))
    other = build_image_model(HIERARCHY, image_size=32, filters=(8, 16, 24))
    with pytest.raises(ValueError, match="same layers.*Received: expert"):
        upcycle(other, source)


def test_upcycle_source_needs_a_conditional_model():
    with pytest.raises(TypeError, match="Received: Sequential"):
        upcycle_source(keras.Sequential([keras.layers.Dense(2)]), (4,))

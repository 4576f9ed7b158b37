import inspect
import re
import warnings

import keras
import numpy as np
import pytest

from condnet.evaluation.evaluate_test import colour_model
from condnet.models.ensemble import Ensemble


def test_an_ensemble_of_built_members_is_built_and_saves_without_a_warning(tmp_path):
    members = [colour_model(), colour_model()]
    members[1]._name = "second"  # one archive holds them all: names must differ
    ensemble = Ensemble(members[0].hierarchy, members)
    assert ensemble.built
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ensemble.save(tmp_path / "ensemble.keras")
    assert not [w for w in caught if "not yet been built" in str(w.message)]
    loaded = keras.models.load_model(tmp_path / "ensemble.keras", safe_mode=True)
    images = np.full((1, 8, 8, 3), (250, 0, 0), "float32")
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0)["classes"],
        ensemble.predict(images, verbose=0)["classes"],
        atol=1e-6,
    )


# === Members that read documents ===

POSTS = {
    "blue": "sky sea ocean lake",
    "green": "grass leaf forest moss",
    "orange": "carrot pumpkin sunset amber",
    "red": "blood cherry brick ruby",
}


def text_member(sequence_length, trunk="bag", vocabulary_size=20, name=None):
    """A text ConditionalModel over the colour tree, its own vectorizer adapted on POSTS."""
    from condnet.data.text import make_vectorizer
    from condnet.evaluation.evaluate_test import TREE
    from condnet.text.text_model import build_text_model

    texts = [f"{words} the a of" for words in POSTS.values()]
    vectorizer = make_vectorizer(texts, vocabulary_size, sequence_length)
    size = vectorizer.vocabulary_size()
    name = name or f"{trunk}_{sequence_length}"
    return build_text_model(TREE, size, sequence_length, trunk, preprocessor=vectorizer, name=name)


DOCUMENTS = ["the sky and the sea", "a cherry brick", "moss on a leaf", "pumpkin", "unseen words"]


def test_an_ensemble_of_text_members_reads_documents_with_each_members_vectorizer(tmp_path):
    members = [text_member(16, "bag", vocabulary_size=10), text_member(24, "cnn")]
    ensemble = Ensemble(members[0].hierarchy, members)
    mean = np.mean([m.predict(DOCUMENTS, verbose=0)["classes"] for m in members], axis=0)
    outputs = ensemble.predict(DOCUMENTS, verbose=0)
    np.testing.assert_allclose(outputs["classes"], mean, atol=1e-6)
    ids = ensemble.preprocessor(DOCUMENTS)  # member 0's 16 ids, then member 1's 24
    assert ids.shape == (5, 40) and ensemble.preprocessor.get_config() == {
        "output_sequence_length": 40
    }
    np.testing.assert_array_equal(ids[:, 16:], members[1].preprocess(DOCUMENTS))
    np.testing.assert_allclose(ensemble.predict(ids, verbose=0)["classes"], mean, atol=1e-6)
    called = ensemble(keras.ops.convert_to_tensor(ids))["classes"]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(called), mean, atol=1e-5)
    ensemble.save(tmp_path / "ensemble.keras")
    loaded = keras.models.load_model(tmp_path / "ensemble.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(DOCUMENTS, verbose=0)["classes"], mean, atol=1e-6)
    np.testing.assert_array_equal(loaded.preprocessor(DOCUMENTS), ids)


def test_an_ensemble_refuses_members_that_read_images_and_documents():
    members = [colour_model(), text_member(16)]
    expected = (
        rf"\['bag_16'\] read documents .*, \[{re.escape(repr(members[0].name))}\] read images"
    )
    with pytest.raises(ValueError, match=expected):
        Ensemble(members[0].hierarchy, members)


def _name_number(model):
    base, _, number = model.name.rpartition("_")
    return int(number) if base and number.isdigit() else 0


@pytest.mark.parametrize(
    "members, member_weights, message",
    [
        ([], None, r"at least one member. Received: members=\[\]"),
        (1, [1.0, -1.0], r"member_weights must be 1 non-negative.*\[1.0, -1.0\]"),
    ],
)
def test_an_ensemble_is_refused_before_any_keras_model_is_made(members, member_weights, message):
    members = [colour_model() for _ in range(members or 0)]
    hierarchy = colour_model().hierarchy
    first = Ensemble(hierarchy, [colour_model()])
    with pytest.raises(ValueError, match=message):
        Ensemble(hierarchy, members, member_weights)
    # Refused before keras.Model.__init__: the refused ensemble took no automatic name.
    assert _name_number(Ensemble(hierarchy, [colour_model()])) == _name_number(first) + 1


def test_ensemble_documents_every_argument():
    for parameter in list(inspect.signature(Ensemble.__init__).parameters.values())[1:]:
        stars = "**" if parameter.kind is parameter.VAR_KEYWORD else ""
        assert f"\n        {stars}{parameter.name}: " in Ensemble.__doc__


def test_ensemble_predict_refuses_unknown_arguments_as_a_conditional_model_does():
    member = colour_model()
    ensemble = Ensemble(member.hierarchy, [member])
    images = np.full((1, 8, 8, 3), (250, 0, 0), "float32")
    with pytest.raises(TypeError, match=r"Received unknown arguments: \['routd'\]"):
        member.predict(images, verbose=0, routd=True)
    with pytest.raises(TypeError, match=r"Ensemble.predict takes .*unknown arguments: \['routd'\]"):
        ensemble.predict(images, verbose=0, routd=True)


# === The mean of the members ===

IMAGES = np.array([[[[250, 0, 0]]], [[[0, 250, 0]]], [[[0, 0, 250]]]], "float32")
IMAGES = np.tile(IMAGES, (1, 8, 8, 1))  # plain red, green and blue images


def flat_member(seed=0, name="flat"):
    """A flat Keras classifier over the colour tree's four classes (random weights)."""
    inputs = keras.Input((8, 8, 3))
    mean = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    dense = keras.layers.Dense(4, activation="softmax")
    outputs = dense(mean)
    kernel = np.random.default_rng(seed).normal(0, 2, (3, 4)).astype("float32")
    dense.set_weights([kernel, np.zeros(4, "float32")])
    return keras.Model(inputs, outputs, name=name)


def test_an_ensemble_predicts_the_weighted_mean_of_its_members_and_groups_that_sum_it():
    members = [colour_model(), flat_member()]
    ensemble = Ensemble(members[0].hierarchy, members, member_weights=[3, 1])
    mean = 0.75 * members[0].predict(IMAGES, verbose=0)["classes"]
    mean += 0.25 * members[1].predict(IMAGES, verbose=0)
    outputs = ensemble.predict(IMAGES, verbose=0)
    np.testing.assert_allclose(outputs["classes"], mean, atol=1e-6)
    groups = ensemble.hierarchy.class_to_group
    summed = np.stack([mean[:, groups == g].sum(axis=1) for g in range(2)], axis=1)
    np.testing.assert_allclose(outputs["groups"], summed, atol=1e-6)
    np.testing.assert_array_equal(outputs["route"], summed.argmax(axis=1))
    called = ensemble(keras.ops.convert_to_tensor(IMAGES))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(called["classes"]), mean, atol=1e-5)


def test_an_ensemble_with_weights_and_a_flat_member_reloads_safely_with_both(tmp_path):
    members = [colour_model(), flat_member()]
    ensemble = Ensemble(members[0].hierarchy, members, member_weights=[1, 3])
    ensemble.save(tmp_path / "ensemble.keras")
    loaded = keras.models.load_model(tmp_path / "ensemble.keras", safe_mode=True)
    assert isinstance(loaded, Ensemble) and loaded.member_weights == [0.25, 0.75]
    assert loaded.hierarchy == ensemble.hierarchy
    assert [m.name for m in loaded.members] == [m.name for m in members]
    np.testing.assert_allclose(
        loaded.predict(IMAGES, verbose=0)["classes"],
        ensemble.predict(IMAGES, verbose=0)["classes"],
        atol=1e-6,
    )


def test_an_ensembles_routing_is_its_conditional_members_and_setting_it_sets_theirs():
    hard, soft = colour_model(routing="hard"), colour_model(routing="soft")
    soft._name = "second"
    ensemble = Ensemble(hard.hierarchy, [hard, soft, flat_member()])
    assert ensemble.routing == "mixed" and ensemble.routes_at_inference
    ensemble.routing = "soft"
    assert (hard.routing, soft.routing, ensemble.routing) == ("soft", "soft", "soft")
    assert Ensemble(hard.hierarchy, [flat_member()]).routing is None


def test_an_ensemble_refuses_a_member_of_another_hierarchy():
    from condnet import Hierarchy

    member = colour_model()
    other = Hierarchy({"cool": ["blue", "green"], "warm": ["orange", "pink", "red"]})
    with pytest.raises(ValueError, match=r"Member 0 \(.*\) has another hierarchy than the"):
        Ensemble(other, [member])


def test_a_text_ensembles_token_ids_sit_side_by_side_member_zero_first():
    members = [text_member(6, "bag", name="short"), text_member(10, "bag", name="long")]
    ensemble = Ensemble(members[0].hierarchy, members)
    ids = ensemble.preprocessor(DOCUMENTS)
    assert ids.shape == (5, 16) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids[:, :6], members[0].preprocess(DOCUMENTS))
    np.testing.assert_array_equal(ids[:, 6:], members[1].preprocess(DOCUMENTS))
    assert ensemble.member_input_shapes((None, 16)) == [(None, 6), (None, 10)]

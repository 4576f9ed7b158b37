import keras
import numpy as np
import pytest

from condnet.evaluation.unknown import UnknownDetector, check_unknown_thresholds
from condnet.evaluation.unknown_features import (
    feature_readers,
    feature_scores,
    fit_statistics,
    read_features,
)
from condnet.hierarchy import Hierarchy

TREE = Hierarchy({"cat": ["persian", "siamese"], "dog": ["beagle", "pug", "boxer"]})


def _classifier(units, name="head"):
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, activation="relu")(inputs)
    outputs = keras.layers.Dense(units, activation="softmax")(hidden)
    return keras.Model(inputs, outputs, name=name)


def _clusters(rng, centres, per_class=200, spread=0.1):
    """Features around each centre (one class each) and their labels."""
    features = np.concatenate([c + spread * rng.normal(size=(per_class, 2)) for c in centres])
    return features, np.repeat(np.arange(len(centres)), per_class)


def test_energy_is_the_log_sum_exp_of_the_logits_whose_softmax_the_model_outputs():
    model = _classifier(3)
    readers = feature_readers(model)
    images = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    features = read_features(model, readers, images)
    _, _, kernel, bias = readers["flat"]
    logits = features["flat"] @ kernel + bias
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(softmax, keras.ops.convert_to_numpy(model(images)), atol=1e-5)
    energy = feature_scores(TREE, readers, features, np.zeros(5, "int64"), {}, "energy")
    np.testing.assert_allclose(energy, np.log(np.exp(logits).sum(-1)), rtol=1e-6)
    top = feature_scores(TREE, readers, features, np.zeros(5, "int64"), {}, "max_logit")
    np.testing.assert_allclose(top, logits.max(-1))


def test_gated_energy_adds_the_log_of_the_gate_s_probability_of_the_routed_group():
    rng = np.random.default_rng(2)
    readers = {
        g: (None, None, rng.normal(size=(3, len(TREE.classes_of(g)))), rng.normal(size=1))
        for g in TREE.groups
    }
    features = {g: rng.normal(size=(4, 3)) for g in TREE.groups}
    route = np.array([0, 1, 1, -1])
    groups = np.array([[0.9, 0.1], [0.4, 0.6], [1.0, 0.0], [0.5, 0.5]])
    energy = feature_scores(TREE, readers, features, route, {}, "energy")
    gated = feature_scores(TREE, readers, features, route, {}, "gated_energy", groups=groups)
    np.testing.assert_allclose(gated[:2], energy[:2] + np.log([0.9, 0.6]))
    assert np.isfinite(gated[2]) and gated[2] < energy[2] - 80  # a probability rounded to 0
    assert np.isnan(gated[3])  # no route, no score
    with pytest.raises(ValueError, match="pass the model's `groups` output"):
        feature_scores(TREE, readers, features, route, {}, "gated_energy")


def test_a_calibrated_head_s_logits_are_divided_by_its_temperature():
    from condnet.evaluation.calibration import _tempered_part

    head = _classifier(3)
    calibrated = _tempered_part(head, (None, 4), 2.0)
    images = np.random.default_rng(3).normal(size=(5, 4)).astype("float32")
    readers = feature_readers(calibrated)
    features = read_features(calibrated, readers, images)
    _, _, kernel, bias = readers["flat"]
    logits = features["flat"] @ kernel + bias
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(softmax, keras.ops.convert_to_numpy(calibrated(images)), atol=1e-5)
    _, _, raw_kernel, raw_bias = feature_readers(head)["flat"]
    np.testing.assert_allclose(logits, (features["flat"] @ raw_kernel + raw_bias) / 2.0)


def test_readers_follow_a_head_nested_in_the_model():
    head = _classifier(3)
    inputs = keras.Input((4,))
    outer = keras.Model(inputs, head(keras.layers.Identity()(inputs)))
    images = np.ones((2, 4), "float32")
    nested = read_features(outer, feature_readers(outer), images)["flat"]
    direct = read_features(head, feature_readers(head), images)["flat"]
    np.testing.assert_allclose(nested, direct, rtol=1e-6)
    assert nested.shape == (2, 6)  # what the last Dense reads


def test_features_are_read_without_the_model_s_augmentation():
    inputs = keras.Input((4, 4, 1))
    flipped = keras.layers.RandomFlip(seed=0)(inputs)  # a flat baseline augments inside
    pooled = keras.layers.Flatten()(flipped)
    hidden = keras.layers.Dense(6, activation="relu")(pooled)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    images = np.arange(64, dtype="float32").reshape(4, 4, 4, 1)
    readers = feature_readers(model)
    first, second = (read_features(model, readers, images)["flat"] for _ in range(2))
    np.testing.assert_array_equal(first, second)  # no random flip between two reads
    _, features, _, _ = readers["flat"]
    unflipped = keras.ops.convert_to_numpy(features(images, training=False))
    np.testing.assert_allclose(first, unflipped, rtol=1e-6)


def test_mahalanobis_fits_class_means_per_expert_and_scores_the_routed_one():
    rng = np.random.default_rng(0)
    cat, cat_labels = _clusters(rng, [(0, 0), (4, 0)])  # persian, siamese
    dog, dog_labels = _clusters(rng, [(0, 4), (4, 4), (8, 4)])  # beagle, pug, boxer
    readers = {"cat": (None, None, None, None), "dog": (None, None, None, None)}
    features = {"cat": np.concatenate([cat, dog]), "dog": np.concatenate([cat, dog])}
    labels = np.concatenate([cat_labels, dog_labels + 2])
    fitted = fit_statistics(TREE, readers, features, labels)
    np.testing.assert_allclose(fitted["dog/means"], [(0, 4), (4, 4), (8, 4)], atol=0.05)
    assert fitted["cat/means"].shape == (2, 2)  # only the cat expert's classes
    probe = np.array([[4.0, 0.0], [2.0, 0.0], [4.0, 4.0], [4.0, 4.0]])
    route = np.array([0, 0, 1, -1])
    scores = feature_scores(
        TREE, readers, {"cat": probe, "dog": probe}, route, fitted, "mahalanobis"
    )
    assert scores[0] > -5 > scores[1]  # at siamese's mean; half way between two cat classes
    assert scores[2] > -5  # pug's mean, in the dog expert's space
    assert np.isnan(scores[3])  # no route, no score


def test_detector_flags_below_each_expert_s_threshold_of_its_own_score():
    rng = np.random.default_rng(1)
    model = _classifier(5)
    images = rng.normal(size=(40, 4)).astype("float32")
    readers = feature_readers(model)
    features = read_features(model, readers, images)["flat"]
    labels = rng.integers(0, 5, size=40)
    fitted = fit_statistics(TREE, readers, {"flat": features}, labels)
    outputs = {"classes": keras.ops.convert_to_numpy(model(images))}
    never = UnknownDetector(TREE, {"cat": None, "dog": None}, "mahalanobis", fitted)
    scored, flagged = never(model, images, outputs)
    assert np.all(scored["score"] <= 0) and not flagged.any()  # minus a squared distance
    cut = float(np.median(scored["score"]))
    half = UnknownDetector(TREE, {"cat": cut, "dog": cut}, "mahalanobis", fitted)
    np.testing.assert_array_equal(half(model, images, outputs)[1], scored["score"] < cut)


def test_feature_score_thresholds_and_statistics_are_checked_with_what_was_received():
    assert check_unknown_thresholds(TREE, {"cat": -250.0, "dog": None}, "energy")["cat"] == -250
    with pytest.raises(ValueError, match=r"\(softmax score\) must be a probability"):
        check_unknown_thresholds(TREE, {"cat": -250.0, "dog": None})
    with pytest.raises(ValueError, match="Received: score='cosine'"):
        UnknownDetector(TREE, {"cat": 0.5, "dog": 0.5}, "cosine")
    with pytest.raises(ValueError, match="needs each expert's class means"):
        UnknownDetector(TREE, {"cat": -1.0, "dog": -1.0}, "mahalanobis")
    inputs = keras.Input((4,))
    pooled = keras.Model(inputs, keras.layers.Softmax()(inputs), name="no_dense")
    with pytest.raises(ValueError, match="output comes from a Softmax. Use score='softmax'"):
        feature_readers(pooled)

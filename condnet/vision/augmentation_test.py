import keras
import numpy as np
import pytest

from condnet.vision.augmentation import (
    AUGMENT_POLICIES,
    choose_augmentation,
    make_augmentation,
    resolve_policy,
)


def _images(seed=0, size=12):
    return np.random.default_rng(seed).uniform(0, 255, (4, size, size, 3)).astype("float32")


def _largest(factor):
    return float(np.max(np.abs(factor)))


def _layer_names(augmentation):
    return [type(layer).__name__ for layer in augmentation.layers]


# === Policies ===


@pytest.mark.parametrize(
    "policy, names",
    [
        ("none", ["Identity"]),
        ("light", ["RandomTranslation"]),
        (
            "standard",
            ["RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast"],
        ),
        (
            "strong",
            ["RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast"],
        ),
    ],
)
def test_make_augmentation_policies_build_their_layers(policy, names):
    assert _layer_names(make_augmentation(policy)) == names


def test_make_augmentation_stronger_policies_have_larger_factors():
    light, standard, strong = (make_augmentation(p) for p in ("light", "standard", "strong"))
    assert light.layers[0].height_factor == 0.05
    assert _largest(standard.layers[1].factor) < _largest(strong.layers[1].factor)  # rotation
    assert _largest(standard.layers[2].height_factor) < _largest(strong.layers[2].height_factor)
    assert standard.layers[0].mode == strong.layers[0].mode == "horizontal"


def test_make_augmentation_none_is_identity_in_training():
    augmentation = make_augmentation("none")
    images = _images()
    output = keras.ops.convert_to_numpy(augmentation(images, training=True))
    np.testing.assert_allclose(output, images)


def test_make_augmentation_explicit_factors_override_the_policy():
    no_flip = make_augmentation("standard", flip=None)
    assert _layer_names(no_flip)[0] == "RandomRotation"
    no_rotation = make_augmentation("strong", rotation=0, zoom=0.3)
    assert "RandomRotation" not in _layer_names(no_rotation)
    assert no_rotation.get_layer(index=1).height_factor == 0.3
    flipped = make_augmentation("light", flip="horizontal", contrast=0.2)
    assert _layer_names(flipped) == ["RandomFlip", "RandomTranslation", "RandomContrast"]
    assert "RandomFlip" not in _layer_names(make_augmentation("standard", flip=False))
    off = make_augmentation("none", flip="vertical", rotation=0, zoom=0, translation=0)
    assert off.layers[0].mode == "vertical"


def test_make_augmentation_auto_never_flips_or_rotates():
    for size in (8, 28, 32, 64, (48, 224), None):
        names = _layer_names(make_augmentation("auto", image_size=size))
        assert "RandomFlip" not in names and "RandomRotation" not in names


def test_make_augmentation_auto_leaves_small_images_alone():
    assert resolve_policy("auto", image_size=28) == "none"
    assert resolve_policy("auto", image_size=(64, 16)) == "none"
    assert resolve_policy("auto", image_size=32) == "light"
    assert resolve_policy("auto") == "light"
    assert _layer_names(make_augmentation(image_size=28)) == ["Identity"]
    assert _layer_names(make_augmentation(image_size=64)) == ["RandomTranslation"]


def test_make_augmentation_is_identity_outside_training():
    augmentation = make_augmentation("strong", contrast=0.5)
    images = _images()
    unchanged = keras.ops.convert_to_numpy(augmentation(images, training=False))
    np.testing.assert_allclose(unchanged, images)
    changed = keras.ops.convert_to_numpy(augmentation(images, training=True))
    assert changed.shape == images.shape
    assert np.abs(changed - images).mean() > 1.0


def test_make_augmentation_seeds_layers_apart():
    augmentation = make_augmentation("standard", seed=7)
    assert [layer.seed for layer in augmentation.layers] == [7, 8, 9, 10, 11]
    no_flip = make_augmentation("standard", flip=None, seed=7)
    assert [layer.seed for layer in no_flip.layers] == [7, 8, 9, 10]


def test_make_augmentation_saves_and_loads_inside_a_model(tmp_path):
    inputs = keras.Input((12, 12, 3))
    x = make_augmentation("standard", seed=1)(inputs)
    x = keras.layers.Rescaling(1 / 255)(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    images = _images(seed=2)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded.predict(images, verbose=0)),
        keras.ops.convert_to_numpy(model.predict(images, verbose=0)),
        rtol=1e-5,
        atol=1e-5,
    )
    augmentation = loaded.get_layer("augmentation")
    assert _layer_names(augmentation) == _layer_names(make_augmentation("standard"))
    assert augmentation.layers[1].factor == model.get_layer("augmentation").layers[1].factor


def test_make_augmentation_error_unknown_policy_names_it():
    with pytest.raises(ValueError, match=r"one of \['auto', 'none'.*Received: policy='heavy'"):
        make_augmentation("heavy")
    assert AUGMENT_POLICIES == ("auto", "none", "light", "standard", "strong")


def test_make_augmentation_error_unknown_flip():
    with pytest.raises(ValueError, match="`flip` must be one of.*Received: flip='both'"):
        make_augmentation(flip="both")


@pytest.mark.parametrize("name, value", [("rotation", 1.0), ("zoom", -0.1), ("contrast", 3)])
def test_make_augmentation_error_factor_out_of_range(name, value):
    with pytest.raises(ValueError, match=rf"\[0, 1\).*Received: {name}={value}"):
        make_augmentation(**{name: value})


def test_make_augmentation_error_factor_of_wrong_type():
    with pytest.raises(TypeError, match=r"Received: translation=\(0.1, 0.2\) of type tuple"):
        make_augmentation(translation=(0.1, 0.2))


# === choose_augmentation ===


def _tiny_model(augmentation, size=8):
    inputs = keras.Input((size, size, 1))
    x = keras.layers.Rescaling(1 / 255)(augmentation(inputs))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _policy_of(model):
    names = [type(layer).__name__ for layer in model.get_layer("augmentation").layers]
    return "light" if names == ["RandomTranslation"] else "none" if names == ["Identity"] else "?"


def _bright_side_images(num_samples, size=8, seed=0):
    """Class 0: the left half is bright; class 1: the right half. A flip swaps them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, num_samples)
    x = rng.uniform(0, 60, (num_samples, size, size, 1)).astype("float32")
    for image, label in zip(x, labels):
        image[:, : size // 2] += 180 if label == 0 else 0
        image[:, size // 2 :] += 180 if label == 1 else 0
    return x, labels.astype("int32")


@pytest.mark.parametrize("winner, scores", [("light", (0.4, 0.7)), ("none", (0.9, 0.6))])
def test_choose_augmentation_picks_the_higher_validation_score(winner, scores):
    x, y = _bright_side_images(16)
    given = dict(zip(("none", "light"), scores))
    policy, found = choose_augmentation(
        _tiny_model, (x, y), (x, y), epochs=1, score=lambda model, data: given[_policy_of(model)]
    )
    assert policy == winner
    assert found == given


def test_choose_augmentation_ties_go_to_the_first_candidate():
    x, y = _bright_side_images(16)
    policy, scores = choose_augmentation(
        _tiny_model, (x, y), (x, y), candidates=("light", "none"), score=lambda m, d: 0.5
    )
    assert policy == "light" and scores == {"light": 0.5, "none": 0.5}


@pytest.mark.slow
def test_choose_augmentation_rejects_flips_when_they_swap_classes():
    train = _bright_side_images(256, seed=1)
    validation = _bright_side_images(128, seed=2)
    policy, scores = choose_augmentation(
        _tiny_model,
        train,
        validation,
        candidates=("none", "strong"),
        epochs=5,
        seed=3,
        overrides={"rotation": 0, "zoom": 0, "translation": 0, "contrast": 0},
        batch_size=32,
    )
    assert policy == "none"
    assert scores["none"] > 0.9 and scores["strong"] < scores["none"] - 0.2


def test_choose_augmentation_error_names_a_missing_metric():
    x, y = _bright_side_images(8)
    with pytest.raises(ValueError, match=r"no metric 'group_accuracy'.*\['accuracy', 'loss'\]"):
        choose_augmentation(_tiny_model, (x, y), (x, y), epochs=1, metric="group_accuracy")


@pytest.mark.parametrize("candidates", [("none", "auto"), ("none", "medium"), "light", ()])
def test_choose_augmentation_error_bad_candidates(candidates):
    with pytest.raises(ValueError, match="Received: candidates="):
        choose_augmentation(_tiny_model, None, None, candidates=candidates)

import keras
import numpy as np
import pytest

from condnet.vision.augmentation import make_augmentation


def _images(seed=0, size=12):
    return np.random.default_rng(seed).uniform(0, 255, (4, size, size, 3)).astype("float32")


def _layer_names(augmentation):
    return [type(layer).__name__ for layer in augmentation.layers]


def test_make_augmentation_builds_the_requested_layers():
    assert _layer_names(make_augmentation()) == [
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomContrast",
    ]
    partial = make_augmentation(flip=None, rotation=0, zoom=0.2, translation=None, contrast=0)
    assert _layer_names(partial) == ["RandomZoom"]
    assert partial.layers[0].height_factor == 0.2
    vertical = make_augmentation(flip="vertical", rotation=0, zoom=0, translation=0, contrast=0)
    assert vertical.layers[0].mode == "vertical"


def test_make_augmentation_is_identity_outside_training():
    augmentation = make_augmentation(rotation=0.2, zoom=0.2, translation=0.2, contrast=0.5)
    images = _images()
    unchanged = keras.ops.convert_to_numpy(augmentation(images, training=False))
    np.testing.assert_allclose(unchanged, images)
    changed = keras.ops.convert_to_numpy(augmentation(images, training=True))
    assert changed.shape == images.shape
    assert np.abs(changed - images).mean() > 1.0


def test_make_augmentation_with_everything_off_is_identity():
    augmentation = make_augmentation(flip=None, rotation=None, zoom=0, translation=0, contrast=0)
    assert _layer_names(augmentation) == ["Identity"]
    images = _images()
    output = keras.ops.convert_to_numpy(augmentation(images, training=True))
    np.testing.assert_allclose(output, images)


def test_make_augmentation_seeds_layers_apart():
    augmentation = make_augmentation(seed=7)
    assert [layer.seed for layer in augmentation.layers] == [7, 8, 9, 10, 11]
    assert [layer.seed for layer in make_augmentation(flip=None, seed=7).layers] == [7, 8, 9, 10]


def test_make_augmentation_saves_and_loads_inside_a_model(tmp_path):
    inputs = keras.Input((12, 12, 3))
    x = make_augmentation(seed=1)(inputs)
    x = keras.layers.Rescaling(1 / 255)(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    images = _images(seed=2)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded.predict(images, verbose=0)),
        keras.ops.convert_to_numpy(model.predict(images, verbose=0)),
        rtol=1e-5,
        atol=1e-5,
    )
    augmentation = loaded.get_layer("augmentation")
    assert _layer_names(augmentation) == _layer_names(make_augmentation())
    assert augmentation.layers[1].factor == model.get_layer("augmentation").layers[1].factor


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

import keras
import numpy as np
import pytest
from keras import layers

from condnet.vision.preprocessing import PREPROCESS_MODES, CaffePreprocess, preprocessing_layer


def _images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (2, *shape)).astype("float32")


def _predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


# === preprocessing_layer ===


@pytest.mark.parametrize("mode", ["caffe", "torch"])
def test_preprocessing_layer_matches_keras_preprocess_input(mode):
    x = _images((4, 4, 3))
    expected = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=mode)
    np.testing.assert_allclose(
        _predict(preprocessing_layer(mode), x), expected, rtol=1e-5, atol=1e-5
    )


def test_preprocessing_layer_scales_to_unit_and_symmetric_ranges():
    x = np.array([[[[0.0, 127.5, 255.0]]]], "float32")
    np.testing.assert_allclose(_predict(preprocessing_layer("unit"), x), [[[[0, 0.5, 1]]]])
    np.testing.assert_allclose(_predict(preprocessing_layer("symmetric"), x), [[[[-1, 0, 1]]]])
    tf_mode = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode="tf")
    np.testing.assert_allclose(_predict(preprocessing_layer("symmetric"), x), tf_mode)
    assert preprocessing_layer("none") is None


@pytest.mark.parametrize("mode", ["unit", "symmetric", "caffe", "torch"])
def test_preprocessing_layer_round_trips_through_safe_load(mode, tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, preprocessing_layer(mode)(inputs))
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    x = _images((4, 4, 3))
    np.testing.assert_allclose(_predict(loaded, x), _predict(model, x), rtol=1e-6)


def test_preprocessing_layer_error_unknown_mode_lists_modes():
    with pytest.raises(ValueError, match=r"one of \['none', 'unit'.*Received: preprocess='tf'"):
        preprocessing_layer("tf")
    assert PREPROCESS_MODES == ("none", "unit", "symmetric", "caffe", "torch")


def test_preprocessing_layer_error_imagenet_modes_need_rgb():
    with pytest.raises(ValueError, match="3 channels of RGB.*have 1.*channels=1"):
        preprocessing_layer("torch", channels=1)


# === CaffePreprocess ===


def test_caffe_preprocess_channels_first_flips_axis_1():
    x = _images((4, 4, 3))
    channels_first = np.transpose(x, (0, 3, 1, 2))
    outputs = _predict(CaffePreprocess(data_format="channels_first"), channels_first)
    expected = _predict(CaffePreprocess(data_format="channels_last"), x)
    np.testing.assert_allclose(outputs, np.transpose(expected, (0, 3, 1, 2)), rtol=1e-6)


def test_caffe_preprocess_round_trips_through_safe_load(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = CaffePreprocess(name="caffe_preprocess")(inputs)
    model = keras.Model(inputs, layers.Conv2D(2, 3)(x))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("caffe_preprocess"), CaffePreprocess)
    x = _images((8, 8, 3))
    np.testing.assert_allclose(_predict(loaded, x), _predict(model, x), rtol=1e-6)


def test_caffe_preprocess_rejects_non_rgb_images():
    with pytest.raises(ValueError, match=r"3 channels.*input_shape=\(None, 8, 8, 1\)"):
        CaffePreprocess()(keras.Input((8, 8, 1)))


def test_caffe_preprocess_rejects_unknown_data_format():
    with pytest.raises(ValueError, match="Received: data_format=nhwc"):
        CaffePreprocess(data_format="nhwc")

import keras
import numpy as np
import pytest
from keras import layers

from condnet.vision.backbones import (
    CaffePreprocess,
    application_trunk,
    default_taps,
    freeze,
    small_cnn,
    unfreeze_top,
)


def _images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (2, *shape)).astype("float32")


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable)


def _predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


# === small_cnn ===


def test_small_cnn_taps_are_block_outputs():
    trunk = small_cnn((32, 32, 3), filters=(8, 16, 32))
    shapes = {name: tuple(trunk.get_layer(name).output.shape) for name in default_taps(trunk)}
    assert shapes == {
        "conv_01": (None, 16, 16, 8),
        "conv_02": (None, 8, 8, 16),
        "conv_03": (None, 4, 4, 32),
    }
    assert trunk.output is trunk.get_layer("conv_03").output


def test_small_cnn_rejects_an_input_too_small_for_its_blocks():
    with pytest.raises(ValueError, match=r"at least 16.*input_shape=\(8, 8, 3\)"):
        small_cnn((8, 8, 3), filters=(4, 4, 4, 4))


@pytest.mark.parametrize("filters", [(), (8, 0), (8, 2.5)])
def test_small_cnn_rejects_bad_filters(filters):
    with pytest.raises(ValueError, match="positive ints, one per block"):
        small_cnn(filters=filters)


# === application_trunk ===
# Tests that build keras.applications models are marked slow: on JAX the first
# build of each compiles its initializers (about a minute in all on 2 cores).

# name as a user might spell it -> (channels of the last feature map, caffe preprocessing)
_APPLICATIONS = {
    "mobilenetv3small": (576, False),
    "EfficientNetB0": (1280, False),
    "RESNET50": (2048, True),
    "VGG16": (512, True),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_APPLICATIONS))
def test_application_trunk_builds_each_application(name):
    channels, caffe = _APPLICATIONS[name]
    trunk = application_trunk(name, input_shape=(32, 32, 3))
    assert tuple(trunk.input.shape) == (None, 32, 32, 3)
    assert tuple(trunk.output.shape) == (None, 1, 1, channels)
    assert any(isinstance(layer, CaffePreprocess) for layer in trunk.layers) == caffe
    assert default_taps(trunk)[-1] == trunk.layers[-1].name


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, taps",
    [
        ("ResNet50", ["pool1_pool", "conv2_block3_out", "conv3_block4_out"]),
        ("VGG16", ["block1_pool", "block2_pool", "block3_pool"]),
        ("EfficientNetB0", ["block2a_expand_activation", "block3a_expand_activation"]),
    ],
)
def test_default_taps_are_stage_outputs(name, taps):
    trunk = application_trunk(name, input_shape=(32, 32, 3))
    assert default_taps(trunk)[: len(taps)] == taps
    assert len(default_taps(trunk)) == 5


def test_default_taps_returns_the_deepest():
    trunk = small_cnn((32, 32, 3), filters=(4, 4, 4))
    assert default_taps(trunk, num_taps=2) == ["conv_02", "conv_03"]
    with pytest.raises(ValueError, match="from 1 to 3.*Received: num_taps=4"):
        default_taps(trunk, num_taps=4)


def test_default_taps_needs_a_fixed_input_size():
    trunk = small_cnn((None, None, 3), filters=(4, 4))
    with pytest.raises(ValueError, match=r"fixed input size.*\(None, None, None, 3\)"):
        default_taps(trunk)


def test_default_taps_needs_a_functional_model():
    with pytest.raises(TypeError, match="functional model.*Sequential"):
        default_taps(keras.Sequential([keras.Input((4,)), layers.Dense(2)]))


def test_application_trunk_unknown_name_lists_supported_names():
    with pytest.raises(ValueError, match="Unknown application 'ResNet18'.*ResNet50, .*VGG16"):
        application_trunk("ResNet18")


def test_application_trunk_rejects_small_images():
    with pytest.raises(ValueError, match=r"at least 32.*input_shape=\(16, 16, 3\)"):
        application_trunk("VGG16", input_shape=(16, 16, 3))


def test_application_trunk_missing_weights_file_is_named(tmp_path):
    path = tmp_path / "missing.weights.h5"
    with pytest.raises(ValueError, match=f"{path} does not exist"):
        application_trunk("VGG16", input_shape=(32, 32, 3), weights=path)


def test_application_trunk_rejects_other_weights():
    with pytest.raises(ValueError, match=r"\.weights\.h5 or \.h5 file.*weights=model\.keras"):
        application_trunk("VGG16", weights="model.keras")
    with pytest.raises(TypeError, match="Received: weights=3 of type int"):
        application_trunk("VGG16", weights=3)


@pytest.mark.slow
def test_application_trunk_loads_a_local_weights_file(tmp_path):
    saved = application_trunk("MobileNetV3Small", input_shape=(32, 32, 3))
    path = tmp_path / "trunk.weights.h5"
    saved.save_weights(path)
    loaded = application_trunk("MobileNetV3Small", input_shape=(32, 32, 3), weights=path)
    fresh = application_trunk("MobileNetV3Small", input_shape=(32, 32, 3))
    for mine, theirs in zip(loaded.weights, saved.weights):
        np.testing.assert_array_equal(_numpy(mine), _numpy(theirs))
    kernels = [_numpy(model.get_layer("conv").kernel) for model in (fresh, saved)]
    assert not np.allclose(*kernels)
    x = _images((32, 32, 3))
    # Random-init MobileNetV3 features are tiny (~1e-11): compare relatively.
    np.testing.assert_allclose(_predict(loaded, x), _predict(saved, x), rtol=1e-5, atol=0)


@pytest.mark.slow
def test_application_trunk_loads_weights_saved_from_keras_applications(tmp_path):
    # The trunk adds only weightless CaffePreprocess to the application, so a
    # file saved from the plain application loads, and preprocessing matches.
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16.weights.h5"
    base.save_weights(path)
    trunk = application_trunk("vgg16", input_shape=(32, 32, 3), weights=path)
    x = _images((32, 32, 3))
    expected = _predict(base, keras.applications.vgg16.preprocess_input(x.copy()))
    np.testing.assert_allclose(_predict(trunk, x), expected, rtol=1e-4, atol=1e-4)


# === CaffePreprocess ===


def test_caffe_preprocess_matches_keras_preprocess_input():
    x = _images((4, 4, 3))
    expected = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode="caffe")
    np.testing.assert_allclose(_predict(CaffePreprocess(), x), expected, rtol=1e-6)


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


# === Transfer learning ===


def test_freeze_leaves_no_trainable_weights():
    trunk = freeze(small_cnn((16, 16, 3), filters=(4, 4)))
    assert trunk.trainable_weights == []
    assert len(trunk.non_trainable_weights) == len(trunk.weights)


def test_unfreeze_top_trains_top_layers_and_keeps_batchnorm_frozen():
    trunk = unfreeze_top(freeze(small_cnn((16, 16, 3), filters=(4, 4, 4))), 2)
    trainable = [layer.name for layer in trunk.layers if layer.trainable_weights]
    assert trainable == ["conv_02_conv", "conv_03_conv"]
    assert len(trunk.trainable_weights) == 2
    x = _images((16, 16, 3))
    # Frozen BatchNormalization uses its moving statistics even when training.
    training = keras.ops.convert_to_numpy(trunk(x, training=True))
    np.testing.assert_allclose(training, _predict(trunk, x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_unfreeze_top_counts_layers_from_the_output_of_an_application():
    trunk = unfreeze_top(application_trunk("ResNet50", input_shape=(32, 32, 3)), 3)
    trainable = [layer.name for layer in trunk.layers if layer.trainable_weights]
    assert trainable == ["conv5_block3_1_conv", "conv5_block3_2_conv", "conv5_block3_3_conv"]


def test_unfreeze_top_rejects_more_layers_than_the_trunk_has():
    trunk = small_cnn((16, 16, 3), filters=(4, 4))
    with pytest.raises(ValueError, match="from 0 to 2.*Received: num_layers=3"):
        unfreeze_top(trunk, 3)

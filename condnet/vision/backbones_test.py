import keras
import numpy as np
import pytest

from condnet.vision import backbones
from condnet.vision.backbones import (
    APPLICATIONS,
    application_preprocess,
    application_trunk,
    backbone_kind,
    freeze,
    is_pretrained,
    make_trunk,
    small_cnn,
    tunable_layers,
    unfreeze_top,
)
from condnet.vision.preprocessing import CaffePreprocess, preprocessing_layer
from condnet.vision.taps import default_taps


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

# name as a user might spell it -> (channels of the last feature map, preprocessing layer);
# MobileNetV2 is built below, and every application's preprocessing is checked without a build.
_APPLICATIONS = {
    "mobilenetv3small": (576, None),
    "EfficientNetB0": (1280, None),
    "RESNET50": (2048, CaffePreprocess),
    "VGG16": (512, CaffePreprocess),
}


def test_applications_are_every_keras_applications_image_model():
    public = [n for n in dir(keras.applications) if n[:1].isupper()]
    assert sorted(public) == list(APPLICATIONS)
    assert len(APPLICATIONS) >= 40 and "MobileNetV2" in APPLICATIONS


@pytest.mark.parametrize("name", APPLICATIONS)
def test_application_preprocessing_matches_its_preprocess_input(name):
    module_name = getattr(keras.applications, name).__module__.rsplit(".", 1)[-1]
    preprocess_input = getattr(keras.applications, module_name).preprocess_input
    x = _images((4, 4, 3))
    expected = keras.ops.convert_to_numpy(preprocess_input(x.copy()))
    mode = application_preprocess(name)
    outputs = x if mode is None else _predict(preprocessing_layer(mode), x)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_APPLICATIONS))
def test_application_trunk_builds_each_application(name):
    channels, preprocess = _APPLICATIONS[name]
    trunk = application_trunk(name, input_shape=(32, 32, 3))
    assert tuple(trunk.input.shape) == (None, 32, 32, 3)
    assert tuple(trunk.output.shape) == (None, 1, 1, channels)
    if preprocess is None:
        assert "preprocess" not in [layer.name for layer in trunk.layers]
    else:
        assert isinstance(trunk.get_layer("preprocess"), preprocess)
    assert default_taps(trunk)[-1] == trunk.layers[-1].name


@pytest.mark.slow
def test_application_trunk_repeats_grayscale_into_rgb(tmp_path):
    gray = application_trunk("MobileNetV2", input_shape=(32, 32, 1))
    assert tuple(gray.input.shape) == (None, 32, 32, 1)
    assert gray.get_layer("gray_to_rgb").output.shape[-1] == 3
    assert gray.get_layer("preprocess").get_config()["offset"] == -1.0  # [-1, 1] for MobileNetV2
    rgb = application_trunk("MobileNetV2", input_shape=(32, 32, 3))
    gray.save_weights(tmp_path / "gray.weights.h5")
    rgb.load_weights(tmp_path / "gray.weights.h5")  # the same weighted layers
    x = _images((32, 32, 1))
    expected = _predict(rgb, np.repeat(x, 3, axis=-1))
    np.testing.assert_allclose(_predict(gray, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_application_trunk_ends_at_output():
    trunk = application_trunk("ResNet50", input_shape=(32, 32, 3), output="conv3_block4_out")
    assert trunk.layers[-1].name == "conv3_block4_out"
    assert tuple(trunk.output.shape) == (None, 4, 4, 512)
    with pytest.raises(ValueError, match="no layer 'conv3_block9_out'.*conv3_block4_out"):
        application_trunk("ResNet50", input_shape=(32, 32, 3), output="conv3_block9_out")


def test_application_trunk_unknown_name_lists_close_and_supported_names():
    with pytest.raises(
        ValueError, match="'ResNet18'. Close matches: ResNet152, ResNet101, ResNet50.*VGG16"
    ):
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


# === Any backbone ===


@pytest.mark.parametrize(
    "backbone, kind",
    [
        ("small_cnn", "small_cnn"),
        ("mobilenetv2", "application"),
        ("ConvNeXtTiny", "application"),
        ("models/mine.keras", "file"),
        ("legacy.H5", "file"),
        ("kaggle://keras/resnetv2/keras/resnet_v2_50_imagenet", "preset"),
        ("hf://someone/preset", "preset"),
    ],
)
def test_backbone_kind_tells_names_paths_and_presets_apart(backbone, kind):
    assert backbone_kind(backbone) == kind


def test_backbone_kind_of_a_model_and_a_preset_directory(tmp_path):
    assert backbone_kind(small_cnn((16, 16, 3), filters=(4,))) == "model"
    assert backbone_kind(tmp_path) == "preset"


def test_backbone_kind_unknown_name_lists_close_matches(monkeypatch):
    monkeypatch.setattr(backbones, "hub_presets", lambda: ())
    message = r"Unknown backbone 'MobilNetV2'. Close matches: MobileNetV2.*pip install keras-hub"
    with pytest.raises(ValueError, match=message + r".*Received: backbone='MobilNetV2'"):
        backbone_kind("MobilNetV2")
    with pytest.raises(TypeError, match="Received: backbone=3 of type int"):
        backbone_kind(3)


def test_make_trunk_dispatches_small_cnn_and_cuts_it():
    trunk = make_trunk("small_cnn", (16, 16, 3), filters=(4, 8), output="conv_01")
    assert trunk.layers[-1].name == "conv_01"
    assert tuple(trunk.output.shape) == (None, 8, 8, 4)


@pytest.mark.parametrize(
    "backbone, options, message",
    [
        ("small_cnn", {"weights": "imagenet"}, "small_cnn trains from scratch"),
        ("mine.keras", {"weights": "imagenet"}, "carries its own weights.*weights='imagenet'"),
        ("VGG16", {"preprocess": "caffe"}, "brings its own preprocessing.*preprocess='caffe'"),
    ],
)
def test_make_trunk_rejects_options_that_do_not_apply(backbone, options, message):
    with pytest.raises(ValueError, match=message):
        make_trunk(backbone, (32, 32, 3), **options)


def test_is_pretrained_for_files_models_presets_and_weights(tmp_path):
    assert not is_pretrained("small_cnn") and not is_pretrained("ResNet50")
    assert is_pretrained("ResNet50", weights="imagenet")
    assert is_pretrained("mine.keras") and is_pretrained(tmp_path)


# === Transfer learning ===


def test_freeze_leaves_no_trainable_weights():
    trunk = freeze(small_cnn((16, 16, 3), filters=(4, 4)))
    assert trunk.trainable_weights == []
    assert len(trunk.non_trainable_weights) == len(trunk.weights)


class _Block(keras.layers.Layer):
    """A layer that makes its sublayer in build(), as a keras-hub Transformer block does."""

    def build(self, input_shape):
        self.dense = keras.layers.Dense(2)
        self.dense.build(input_shape)

    def call(self, x):
        return self.dense(x)


def test_freeze_reaches_the_sublayers_of_a_layer_restored_frozen():
    block = _Block.from_config(_Block(trainable=False).get_config())  # as a copy restores it
    inputs = keras.Input((3,))
    model = keras.Model(inputs, block(inputs))
    freeze(block)
    assert model.trainable_weights == []  # the Dense made in build() is frozen too


def test_unfreeze_top_counts_a_layer_made_of_layers_as_one():
    inputs = keras.Input((3,))
    trunk = keras.Model(inputs, keras.layers.Dense(2, name="top")(_Block(name="block")(inputs)))
    assert [layer.name for layer in tunable_layers(trunk)] == ["block", "top"]
    unfreeze_top(freeze(trunk), 2)  # as many as tunable_layers counts: no error
    assert len(trunk.trainable_weights) == 4


def test_unfreeze_top_trains_top_layers_and_keeps_batchnorm_frozen():
    trunk = unfreeze_top(freeze(small_cnn((16, 16, 3), filters=(4, 4, 4))), 2)
    trainable = [layer.name for layer in trunk.layers if layer.trainable_weights]
    assert trainable == ["conv_03_conv", "conv_03_2_conv"]  # two convolutions a block
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
    trunk = small_cnn((16, 16, 3), filters=(4, 4))  # two blocks of two convolutions
    with pytest.raises(ValueError, match="from 0 to 4.*Received: num_layers=5"):
        unfreeze_top(trunk, 5)

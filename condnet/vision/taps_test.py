import keras
import pytest
from keras import layers

from condnet.vision.backbones import application_trunk, small_cnn
from condnet.vision.taps import check_layer, default_cut, default_taps


def _classifier(per_class_conv=False, classes=5):
    """conv -> pool -> residual block -> [per-class conv] -> global pooling -> softmax."""
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = layers.MaxPooling2D(name="stem_pool")(x)
    y = layers.Conv2D(8, 3, padding="same", name="block_conv")(x)
    x = layers.Add(name="block_out")([x, y])
    if per_class_conv:
        x = layers.Conv2D(classes, 3, padding="same", name="class_conv")(x)
        x = layers.Activation("relu", name="class_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = (
        layers.Dense(classes, activation="softmax", name="predictions")(x)
        if not per_class_conv
        else (layers.Activation("softmax", name="predictions")(x))
    )
    return keras.Model(inputs, x, name="classifier")


# === default_taps ===


def test_default_taps_returns_the_deepest():
    trunk = small_cnn((32, 32, 3), filters=(4, 4, 4))
    assert default_taps(trunk, num_taps=2) == ["conv_02", "conv_03"]
    with pytest.raises(ValueError, match="from 1 to 3.*Received: num_taps=4"):
        default_taps(trunk, num_taps=4)


def test_default_taps_never_tap_inside_a_residual_branch():
    classifier = _classifier()
    trunk = keras.Model(classifier.inputs, classifier.get_layer("block_out").output)
    assert default_taps(trunk) == ["stem_pool", "block_out"]  # not block_conv


def test_default_taps_needs_a_fixed_input_size():
    trunk = small_cnn((None, None, 3), filters=(4, 4))
    with pytest.raises(ValueError, match=r"fixed input size.*\(None, None, None, 3\)"):
        default_taps(trunk)


def test_default_taps_needs_a_functional_model():
    with pytest.raises(TypeError, match="functional model.*Sequential"):
        default_taps(keras.Sequential([keras.Input((4,)), layers.Dense(2)]))


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


# === default_cut ===


def test_default_cut_stops_before_global_pooling():
    assert default_cut(_classifier()) == "block_out"


def test_default_cut_skips_a_per_class_convolution():
    assert default_cut(_classifier(per_class_conv=True, classes=5)) == "block_out"


def test_default_cut_of_a_headless_model_is_its_output():
    trunk = small_cnn((16, 16, 3), filters=(4, 4))
    assert default_cut(trunk) == "conv_02"


def test_default_cut_of_a_flattening_model_is_refused():
    inputs = keras.Input((8, 8, 3))
    x = layers.Dense(4, name="dense")(layers.Flatten(name="flatten")(inputs))
    model = keras.Model(inputs, layers.Dense(2, name="out")(x), name="mlp")
    with pytest.raises(ValueError, match="has no feature map.*backbone_output=LAYER_NAME"):
        default_cut(model)


# === check_layer ===


def test_check_layer_lists_close_names_and_stage_outputs():
    model = _classifier()
    assert check_layer(model, "block_out").name == "block_out"
    message = r"no layer 'block_ot'.*Close names: \['block_out'.*stage outputs.*\['stem_pool'"
    with pytest.raises(ValueError, match=message + r".*Received: backbone_output='block_ot'"):
        check_layer(model, "block_ot")

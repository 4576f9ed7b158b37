import keras
import numpy as np
import pytest

from condnet import Hierarchy
from condnet.vision.image_model import backbone_of, build_image_model, classifier_head, taps_of

SEVEN = {
    "airplane": ["airplane"],
    "ship": ["ship"],
    "road": ["automobile", "truck"],
    "pets": ["cat", "dog"],
}


@pytest.mark.parametrize(
    "placement, gate_tap, expert_tap",
    [
        ("auto", "conv_03", "conv_03"),
        ("branch", "conv_03", "conv_03"),
        ("taps", "conv_04", "conv_03"),
        ("top", "conv_04", "conv_04"),
        ("separate", "image", "image"),
    ],
)
def test_expert_placement_chooses_where_experts_branch(placement, gate_tap, expert_tap):
    model = build_image_model(
        Hierarchy(SEVEN), image_size=32, filters=(4, 4, 4, 4), expert_placement=placement
    )
    assert model.gate_tap == gate_tap
    assert set(model.expert_taps.values()) == {expert_tap}
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    classes = keras.ops.convert_to_numpy(model(x)["classes"])
    np.testing.assert_allclose(classes.sum(1), 1.0, atol=1e-5)


def test_branch_placement_gives_each_expert_its_own_last_block():
    model = build_image_model(
        Hierarchy(SEVEN), image_size=32, filters=(4, 8, 16, 32), expert_placement="branch"
    )
    assert set(model.trunk.output) == {"conv_03"}  # the trunk stops before the last block
    assert "conv_04_conv" not in [layer.name for layer in backbone_of(model).layers]
    expert = model.experts["pets"]
    convs = [layer for layer in expert.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [conv.filters for conv in convs] == [30, 30]  # the last block, a sixteenth narrower
    assert expert.output_shape == (None, 2)
    gate_convs = [layer for layer in model.gate.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [conv.filters for conv in gate_convs] == [8]  # a quarter of the last block
    pets, road = model.experts["pets"], model.experts["road"]
    assert pets.layers[1].kernel is not road.layers[1].kernel  # not shared between experts


def test_branch_placement_needs_small_cnn():
    with pytest.raises(ValueError, match="needs backbone='small_cnn'.*MobileNetV3Small"):
        build_image_model(Hierarchy(SEVEN), backbone="MobileNetV3Small", expert_placement="branch")


def test_single_class_groups_get_no_expert():
    model = build_image_model(Hierarchy(SEVEN), image_size=32, filters=(4, 4, 4, 4))
    assert model.experts["airplane"] is None and model.experts["ship"] is None
    assert model.experts["road"].output_shape[-1] == 2
    assert backbone_of(model).name == "backbone"


def test_unknown_placement_and_small_cnn_weights_are_rejected():
    with pytest.raises(ValueError, match="expert_placement must be one of"):
        build_image_model(Hierarchy(SEVEN), expert_placement="middle")
    with pytest.raises(ValueError, match="small_cnn trains from scratch"):
        build_image_model(Hierarchy(SEVEN), weights="imagenet")


def test_deeper_trees_get_nested_conditional_experts(tmp_path):
    from condnet import ConditionalModel

    deep = {
        "vehicles": {"air": ["airplane"], "road": ["automobile", "truck"]},
        "animals": {"pets": ["cat", "dog"], "wild": ["deer", "horse"], "frogs": ["frog"]},
    }
    model = build_image_model(Hierarchy(deep), image_size=32, filters=(4, 4, 4, 4), routing="hard")
    inner = model.experts["animals"]
    assert isinstance(inner, ConditionalModel) and inner.hierarchy.groups == [
        "pets",
        "wild",
        "frogs",
    ]
    assert inner.experts["frogs"] is None
    x = np.random.default_rng(1).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    routed = model.predict(x, verbose=0)
    dense = model.predict(x, verbose=0, routed=False)
    np.testing.assert_allclose(routed["classes"], dense["classes"], atol=1e-5)
    np.testing.assert_allclose(routed["classes"].sum(1), 1.0, atol=1e-5)
    model.save(tmp_path / "deep.keras")
    loaded = keras.models.load_model(tmp_path / "deep.keras")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0)["classes"], routed["classes"], atol=1e-5
    )


def _user_classifier(tmp_path):
    """A user's small trained-looking classifier saved as .keras: three stages, then a head."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for index, filters in enumerate((8, 16, 16), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(name=f"stage_{index}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    path = tmp_path / "user.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def test_a_users_model_file_is_a_backbone_with_taps(tmp_path):
    path = _user_classifier(tmp_path)
    model = build_image_model(
        Hierarchy(SEVEN), backbone=str(path), image_size=32, expert_placement="taps"
    )
    assert taps_of(model) == {
        "gate": "stage_3",
        "experts": {group: "stage_2" for group in SEVEN},
        "available": ["stage_1", "stage_2", "stage_3"],
    }
    assert "dense" not in [layer.name for layer in backbone_of(model).layers]
    x = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    classes = model.predict(x, verbose=0)["classes"]
    model.save(tmp_path / "conditional.keras")
    loaded = keras.models.load_model(tmp_path / "conditional.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0)["classes"], classes, atol=1e-5)


def test_a_users_model_backbone_can_be_cut_earlier(tmp_path):
    path = _user_classifier(tmp_path)
    model = build_image_model(
        Hierarchy(SEVEN), backbone=str(path), image_size=32, backbone_output="stage_2"
    )
    assert taps_of(model)["available"] == ["stage_1", "stage_2"]
    pooled = backbone_of(model).output
    assert model.gate_tap == "features" and pooled.shape[-1] == 16  # stage_2's width


def _layer_types(model):
    return {type(layer).__name__ for layer in model.layers} - {"InputLayer"}


def test_a_pretrained_backbone_gets_light_heads_on_its_pooled_features(tmp_path):
    path = _user_classifier(tmp_path)
    model = build_image_model(Hierarchy(SEVEN), backbone=str(path), image_size=32)
    assert model.gate_tap == "features"
    assert set(model.expert_taps.values()) == {"features"}
    assert model.trunk.output["features"].shape == (None, 16)  # stage_3 pooled
    assert _layer_types(model.gate) == {"Dropout", "Dense"}
    assert _layer_types(model.experts["pets"]) == {"Dropout", "Dense"}
    assert model.experts["pets"].output_shape == (None, 2)
    x = np.random.default_rng(4).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    routed = model.predict(x, verbose=0, routed=True)
    features = model.trunk(x)  # the heads read the features alone, as cached training feeds them
    from_features = keras.ops.convert_to_numpy(model(features)["experts"])
    np.testing.assert_allclose(from_features, model.predict(x, verbose=0)["experts"], atol=1e-5)
    model.save(tmp_path / "heads.keras")
    loaded = keras.models.load_model(tmp_path / "heads.keras", safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0)["classes"], routed["classes"], atol=1e-5
    )


def _dense_units(head):
    return [layer.units for layer in head.layers if isinstance(layer, keras.layers.Dense)]


def test_light_heads_get_a_hidden_layer_unless_asked_otherwise(tmp_path):
    from condnet.vision.image_model import HEAD_UNITS

    path = _user_classifier(tmp_path)
    tree = Hierarchy(SEVEN)
    model = build_image_model(tree, backbone=str(path), image_size=32)
    assert _dense_units(model.gate) == [HEAD_UNITS, tree.num_groups]
    assert _dense_units(model.experts["pets"]) == [HEAD_UNITS, 2]
    plain = build_image_model(tree, backbone=str(path), image_size=32, head_units=0)
    assert _dense_units(plain.experts["pets"]) == [2]
    small = build_image_model(tree, image_size=32, filters=(4, 4), head_units=8)
    assert _dense_units(small.experts["pets"]) == [8, 2]  # any placement, when asked
    branch = build_image_model(tree, image_size=32, filters=(4, 4))
    assert _dense_units(branch.experts["pets"]) == [2]  # auto: none on branch experts
    with pytest.raises(ValueError, match="head_units must be an int >= 0 or 'auto'"):
        build_image_model(tree, image_size=32, head_units=-1)


@pytest.mark.parametrize(
    ("backbone", "weights", "placement"),
    [("small_cnn", None, "branch"), ("MobileNetV3Small", None, "taps")],
)
def test_auto_placement_keeps_branches_for_trunks_trained_from_scratch(
    backbone, weights, placement
):
    from condnet.vision.image_model import resolve_placement

    assert resolve_placement("auto", backbone, weights) == placement
    assert resolve_placement("auto", "MobileNetV3Small", "imagenet") == "heads"


def test_taps_of_separate_placement_has_no_backbone():
    model = build_image_model(
        Hierarchy(SEVEN), image_size=32, filters=(4, 4), expert_placement="separate"
    )
    assert taps_of(model)["available"] == [] and model.gate_tap == "image"


def test_a_users_model_rejects_weights_and_branch(tmp_path):
    path = str(_user_classifier(tmp_path))
    with pytest.raises(ValueError, match="carries its own weights"):
        build_image_model(Hierarchy(SEVEN), backbone=path, image_size=32, weights="imagenet")
    with pytest.raises(ValueError, match="needs backbone='small_cnn'"):
        build_image_model(Hierarchy(SEVEN), backbone=path, expert_placement="branch")


def test_classifier_head_pools_token_features():
    head = classifier_head((5, 8), 3, "head", dropout=0.0)
    x = np.random.default_rng(3).normal(size=(2, 5, 8)).astype("float32")
    assert any(isinstance(layer, keras.layers.GlobalAveragePooling1D) for layer in head.layers)
    assert head(x).shape == (2, 3)

"""Conditional image classifiers built from a backbone name: trunk, gate and expert heads."""

import keras
from keras import layers

from condnet.backbones import application_trunk, default_taps, small_cnn
from condnet.conditional_model import ConditionalModel

PLACEMENTS = ("taps", "top", "separate")


def build_image_model(
    hierarchy,
    backbone="small_cnn",
    image_size=64,
    channels=3,
    weights=None,
    expert_placement="taps",
    augmentation=None,
    routing="soft",
    filters=(32, 64, 128, 256),
    dropout=0.3,
    **kwargs,
):
    """A ConditionalModel for images: a backbone trunk, a gate head, one head per group.

    Args:
        hierarchy: `Hierarchy`. Groups and classes.
        backbone: str. `"small_cnn"` (from scratch) or a `keras.applications`
            name (`"MobileNetV3Small"`, `"EfficientNetB0"`, `"ResNet50"`,
            `"VGG16"`). Defaults to `"small_cnn"`.
        image_size: int or (height, width). Defaults to 64.
        channels: int. 3 for RGB, 1 for grayscale. Defaults to 3.
        weights: None, `"imagenet"` or a path to a weights file, for
            application backbones. Defaults to None.
        expert_placement: str. Where experts branch from the trunk:
            `"taps"` (experts read the second-to-last stage and add their own
            conv block; the gate reads the last stage), `"top"` (gate and
            experts share the whole trunk) or `"separate"` (gate and each
            expert are their own small CNN on the image). Defaults to `"taps"`.
        augmentation: a Keras model of preprocessing layers run first (active
            in training only), or None. Defaults to None.
        routing: str. Routing mode of the ConditionalModel. Defaults to `"soft"`.
        filters: tuple of ints. Blocks of `small_cnn`. Defaults to
            `(32, 64, 128, 256)`.
        dropout: float. Dropout before each head's classifier. Defaults to 0.3.
        **kwargs: passed to `ConditionalModel`.
    """
    if expert_placement not in PLACEMENTS:
        raise ValueError(
            f"expert_placement must be one of {list(PLACEMENTS)}. "
            f"Received: expert_placement={expert_placement!r}"
        )
    shape = _image_shape(image_size, channels)
    if expert_placement == "separate":
        return _separate_model(hierarchy, shape, augmentation, routing, filters, dropout, kwargs)
    base = _backbone(backbone, shape, weights, filters)
    taps = default_taps(base)
    gate_tap = taps[-1]
    expert_tap = taps[-2] if expert_placement == "taps" and len(taps) > 1 else gate_tap
    trunk = _trunk(shape, base, [gate_tap, expert_tap], augmentation)
    tap_shapes = {name: tuple(t.shape[1:]) for name, t in trunk.output.items()}
    conv_filters = tap_shapes[gate_tap][-1] if expert_tap != gate_tap else None
    experts = {
        group: _expert(hierarchy, group, tap_shapes[expert_tap], dropout, conv_filters, routing)
        for group in hierarchy.groups
    }
    return ConditionalModel(
        hierarchy,
        trunk=trunk,
        gate=_head(tap_shapes[gate_tap], hierarchy.num_groups, "gate", dropout),
        experts=experts,
        gate_tap=gate_tap,
        expert_taps={group: expert_tap for group in hierarchy.groups},
        routing=routing,
        **kwargs,
    )


def backbone_of(model):
    """The backbone model inside a ConditionalModel built here (or None)."""
    if model.trunk is None:
        return None
    for layer in model.trunk.layers:
        if layer.name == "backbone":
            return layer
    return None


# === Parts ===


def _safe(name):
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)


def _image_shape(image_size, channels):
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return (*size, channels)


def _backbone(name, shape, weights, filters):
    if name == "small_cnn":
        if weights is not None:
            raise ValueError(
                "small_cnn trains from scratch and takes no pretrained weights. Pick an "
                "application backbone (e.g. backbone='MobileNetV3Small') or weights=None. "
                f"Received: weights={weights!r}"
            )
        return small_cnn(shape, filters=tuple(filters))
    return application_trunk(name, input_shape=shape, weights=weights)


def _trunk(shape, base, taps, augmentation):
    """Input -> augmentation -> backbone, with the tapped stages as named outputs."""
    tapped = keras.Model(
        base.inputs,
        {tap: base.get_layer(tap).output for tap in dict.fromkeys(taps)},
        name="backbone",
    )
    inputs = keras.Input(shape, name="image")
    x = augmentation(inputs) if augmentation is not None else inputs
    return keras.Model(inputs, tapped(x), name="trunk")


def _expert(hierarchy, group, input_shape, dropout, conv_filters, routing):
    """One group's expert: None for a single class, a nested ConditionalModel for subgroups."""
    classes = hierarchy.classes_of(group)
    if len(classes) == 1:
        return None  # a single-class group needs no expert: its class has probability 1
    name = f"expert_{_safe(group)}"
    sub = hierarchy.subhierarchy(group)
    if sub is None:
        return _head(input_shape, len(classes), name, dropout, conv_filters)
    return ConditionalModel(
        sub,
        gate=_head(input_shape, sub.num_groups, f"{name}_gate", dropout, conv_filters),
        experts={
            g: _expert(sub, g, input_shape, dropout, conv_filters, routing) for g in sub.groups
        },
        routing=routing,
        name=name,
    )


def _head(input_shape, units, name, dropout, conv_filters=None):
    inputs = keras.Input(input_shape)
    x = inputs
    if conv_filters:
        x = layers.Conv2D(conv_filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x) if len(input_shape) == 3 else x
    x = layers.Dropout(dropout)(x) if dropout else x
    return keras.Model(inputs, layers.Dense(units, activation="softmax")(x), name=name)


def _separate_model(hierarchy, shape, augmentation, routing, filters, dropout, kwargs):
    inputs = keras.Input(shape, name="image")
    x = augmentation(inputs) if augmentation is not None else inputs
    trunk = keras.Model(inputs, {"image": layers.Identity(name="image_out")(x)}, name="trunk")

    def classifier(units, name):
        base = small_cnn(shape, filters=tuple(filters), name=f"{name}_cnn")
        image = keras.Input(shape)
        features = base(image)
        head = _head(tuple(features.shape[1:]), units, f"{name}_head", dropout)
        return keras.Model(image, head(features), name=name)

    return ConditionalModel(
        hierarchy,
        trunk=trunk,
        gate=classifier(hierarchy.num_groups, "gate"),
        experts={
            g: classifier(len(hierarchy.classes_of(g)), f"expert_{_safe(g)}")
            if len(hierarchy.classes_of(g)) > 1
            else None
            for g in hierarchy.groups
        },
        gate_tap="image",
        expert_taps={g: "image" for g in hierarchy.groups},
        routing=routing,
        **kwargs,
    )

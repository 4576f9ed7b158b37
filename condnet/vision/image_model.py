"""Conditional image classifiers built from a backbone name: trunk, gate and expert heads."""

import keras
from keras import layers

from condnet.choices import PLACEMENTS
from condnet.models.conditional_model import ConditionalModel
from condnet.models.precision import precision_scope
from condnet.vision.backbones import (
    SMALL_CNN_FILTERS,
    conv_bn_relu,
    is_pretrained,
    make_trunk,
    small_cnn,
)
from condnet.vision.taps import default_taps

# "branch": the gate is one conv a quarter of the last block's width (cheap);
# each expert owns a copy of the last block, a sixteenth narrower, so that the
# trunk + gate + one expert cost no more multiply-accumulates per image than
# the flat small_cnn the blocks come from (38.4 vs 38.6 M at 32 px for the
# defaults). See benchmarks/RESULTS.md ("Defaults against the plain CNN").
BRANCH_GATE_WIDTH = 0.25
BRANCH_EXPERT_WIDTH = 0.9375
# "heads": the tap that gate and experts read, the backbone's last feature map
# pooled to one vector per image (what the frozen-feature recipe caches).
FEATURES_TAP = "features"
# Hidden units of each light head on a pretrained backbone's features (`head_units="auto"`);
# chosen on photos20 with 3 seeds (benchmarks/RESULTS.md, "Pretrained backbone").
HEAD_UNITS = 256


def build_image_model(
    hierarchy,
    backbone="small_cnn",
    image_size=64,
    channels=3,
    weights=None,
    expert_placement="auto",
    augmentation=None,
    routing="soft",
    filters=SMALL_CNN_FILTERS,
    dropout=0.3,
    expert_dropout=None,
    backbone_output=None,
    preprocess=None,
    precision=None,
    head_units="auto",
    **kwargs,
):
    """A ConditionalModel for images: a backbone trunk, a gate head, one head per group.

    Args:
        hierarchy: `Hierarchy`. Groups and classes.
        backbone: str, path or `keras.Model`. `"small_cnn"` (from scratch),
            any `keras.applications` name (`"MobileNetV2"`, `"EfficientNetB0"`,
            `"ResNet50"`, ...; `APPLICATIONS` lists them), a keras-hub image
            backbone preset (name, handle or local directory; needs
            keras-hub), or a user's own `.keras` / `.h5` model (or the model),
            cut before its head. See `make_trunk`. Defaults to `"small_cnn"`.
        image_size: int or (height, width). Defaults to 64.
        channels: int. 3 for RGB, 1 for grayscale. Defaults to 3.
        weights: None, `"imagenet"` or a path to a weights file, for
            application backbones (a model file or preset brings its own).
            Defaults to None.
        expert_placement: str. Where experts branch from the trunk:
            `"branch"` (`small_cnn` only: the trunk stops before its last
            block; each expert gets its own copy of that block plus a conv
            layer 1.25x as wide, and the gate a conv a quarter as wide, so a
            routed image runs one deep expert and a cheap gate), `"heads"`
            (the trunk ends in global average pooling of the backbone's last
            feature map, tap `"features"`; gate and experts are light heads on
            that vector: dropout and a softmax Dense), `"taps"`
            (experts read the second-to-last stage and add their own conv
            layer; the gate reads the last stage), `"top"` (gate and experts
            share the whole trunk) or `"separate"` (gate and each expert are
            their own small CNN on the image). Defaults to `"auto"`:
            `"branch"` for `small_cnn`, `"heads"` for a pretrained backbone
            (`is_pretrained`: a model file, a model, a preset, or an application
            with `weights`), `"taps"` for an application trained from scratch.
        augmentation: a Keras model of preprocessing layers run first (active
            in training only), or None. Defaults to None.
        routing: str. Routing mode of the ConditionalModel. Defaults to `"soft"`.
        filters: tuple of ints. Blocks of `small_cnn` (two convolutions
            each). Defaults to `(32, 64, 128)`.
        dropout: float. Dropout before each head's classifier. Defaults to 0.3.
        expert_dropout: float. Dropout before each expert's classifier
            instead (the gates keep `dropout`): experts learn from a share of
            the data each, and a higher rate there regularises them
            ("expert dropout", Fedus et al., arXiv 2101.03961). Defaults to
            None (`dropout`).
        backbone_output: str. Layer of the backbone to end the trunk at.
            Defaults to None: the last feature map (before the head of a
            user's model).
        preprocess: str. For a user's model or a preset, what it expects from
            `[0, 255]` images: `"none"`, `"unit"`, `"symmetric"`, `"caffe"` or
            `"torch"`. Defaults to None (`"none"` for a model, the preset's own).
        precision: str. The Keras dtype policy the model's layers take:
            `"float32"`, `"mixed_bfloat16"`, `"mixed_float16"` or `"auto"`
            (`condnet.models.precision.resolve_precision`: mixed_bfloat16 on
            a TPU or a GPU of compute capability 8.0 or newer, mixed_float16
            on an older GPU, float32 on a CPU). The global policy is set while
            the layers are made and restored afterwards; `augmentation`, made
            by the caller, keeps its own. Every head ends in a float32 softmax
            Dense, so gate and class probabilities are float32 whatever the
            policy. Defaults to None: the global policy in force.
        head_units: int or `"auto"`. Units of a ReLU Dense layer (with dropout
            after it) before each head's classifier; 0 for none. `"auto"`:
            `HEAD_UNITS` on light heads (`expert_placement="heads"`), where a
            head that is a single Dense separates fewer classes than the
            features allow, else 0. Defaults to `"auto"`.
        **kwargs: passed to `ConditionalModel`.
    """
    with precision_scope(precision):
        expert_placement = resolve_placement(expert_placement, backbone, weights)
        if expert_placement == "separate" and backbone != "small_cnn":
            raise ValueError(
                "expert_placement='separate' gives the gate and every expert their own small_cnn "
                "trained from scratch, so a backbone (and its weights) would go unused. Use "
                f"'taps' or 'top' with a backbone. Received: backbone={backbone!r}"
            )
        shape = _image_shape(image_size, channels)
        if expert_placement == "separate":
            return _separate_model(
                hierarchy, shape, augmentation, routing, filters, dropout, kwargs
            )
        base = make_trunk(backbone, shape, weights, backbone_output, preprocess, filters)
        if expert_placement == "heads":
            gate_tap = expert_tap = FEATURES_TAP
            convs = {"gate": (), "inner_gate": (), "expert": ()}
            trunk = _pooled_trunk(shape, base, augmentation)
        else:
            taps = default_taps(base)
            gate_tap, expert_tap, convs = _placement(expert_placement, taps, base)
            trunk = _trunk(shape, base, [gate_tap, expert_tap], augmentation)
        tap_shapes = {name: tuple(t.shape[1:]) for name, t in trunk.output.items()}
        hidden = resolve_head_units(head_units, expert_placement)

        def make(units, name, part, tap=expert_tap):
            rate = dropout if part != "expert" or expert_dropout is None else expert_dropout
            return classifier_head(tap_shapes[tap], units, name, rate, convs[part], hidden)

        experts = {group: _expert(hierarchy, group, make, routing) for group in hierarchy.groups}
        return ConditionalModel(
            hierarchy,
            trunk=trunk,
            gate=make(hierarchy.num_groups, "gate", "gate", tap=gate_tap),
            experts=experts,
            gate_tap=gate_tap,
            expert_taps={group: expert_tap for group in hierarchy.groups},
            routing=routing,
            **kwargs,
        )


def resolve_placement(expert_placement, backbone, weights=None):
    """The placement `build_image_model` uses: `"auto"` resolved, bad values rejected.

    `"auto"` is `"branch"` for `small_cnn`, `"heads"` for a pretrained
    backbone and `"taps"` for an application trained from scratch. A pretrained
    backbone's features already separate the classes; with a few hundred
    images per class, convolutional experts on its last feature map have too many
    weights to learn from them, and light heads on its pooled features train
    in seconds on features computed once (benchmarks/RESULTS.md, "Pretrained
    backbone: photos20").
    """
    if expert_placement not in PLACEMENTS:
        raise ValueError(
            f"expert_placement must be one of {list(PLACEMENTS)}. "
            f"Received: expert_placement={expert_placement!r}"
        )
    if expert_placement == "auto":
        if backbone == "small_cnn":
            return "branch"
        return "heads" if is_pretrained(backbone, weights) else "taps"
    if expert_placement == "branch" and backbone != "small_cnn":
        raise ValueError(
            "expert_placement='branch' gives each expert its own copy of small_cnn's "
            "last block, so it needs backbone='small_cnn'. For a pretrained backbone use "
            f"'taps' or 'top'. Received: backbone={backbone!r}"
        )
    return expert_placement


def backbone_of(model):
    """The backbone model inside a ConditionalModel built here (or None)."""
    if model.trunk is None:
        return None
    for layer in model.trunk.layers:
        if layer.name == "backbone":
            return layer
    return None


def taps_of(model):
    """Where a ConditionalModel built here branches, for `condnet info`.

    Returns a dict: `"gate"` (the layer the gate reads), `"experts"` (group ->
    layer) and `"available"` (the backbone's stage outputs from `default_taps`,
    shallowest first; empty for `expert_placement="separate"` and for a model that
    reads token ids, whose gate and experts read the text trunk's one tap).
    """
    backbone = backbone_of(model)
    images = backbone is not None and len(model.trunk.inputs[0].shape) == 4
    return {
        "gate": model.gate_tap,
        "experts": dict(model.expert_taps),
        "available": default_taps(backbone) if images else [],
    }


# === Parts ===


def _safe(name):
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)


def _image_shape(image_size, channels):
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return (*size, channels)


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


def _pooled_trunk(shape, base, augmentation):
    """Input -> augmentation -> backbone -> global average pooling, as the one tap
    `FEATURES_TAP` (a `(tokens, features)` output is pooled over its tokens)."""
    pooling = {4: layers.GlobalAveragePooling2D, 3: layers.GlobalAveragePooling1D}
    rank = len(base.output.shape)
    if rank not in pooling and rank != 2:
        raise ValueError(
            "expert_placement='heads' pools the backbone's last output, which must be a "
            "feature map, a sequence of tokens or a vector. Received: backbone output of "
            f"shape {tuple(base.output.shape)}"
        )
    inputs = keras.Input(shape, name="image")
    x = augmentation(inputs) if augmentation is not None else inputs
    features = keras.Model(base.inputs, base.output, name="backbone")(x)
    pool = pooling.get(rank, lambda name: layers.Identity(name=name))
    return keras.Model(inputs, {FEATURES_TAP: pool(name=FEATURES_TAP)(features)}, name="trunk")


def _placement(placement, taps, base):
    """Where the gate and the experts read, and the conv layers their heads add.

    Returns `(gate_tap, expert_tap, convs)`; `convs` maps `"gate"` (the
    top-level gate), `"inner_gate"` (the gate of a group with subgroups, which
    reads the experts' tap) and `"expert"` to tuples of `(filters, pool)`.
    """
    width = base.get_layer(taps[-1]).output.shape[-1]
    if placement == "branch" and len(taps) > 1:
        convs = branch_convs(width, _convs_in_block(base, taps[-1]))
        return taps[-2], taps[-2], {**convs, "inner_gate": convs["gate"]}
    if placement == "taps" and len(taps) > 1:
        own = ((width, False),)  # the experts' stand-in for the stage they skip
        return taps[-1], taps[-2], {"gate": (), "inner_gate": own, "expert": own}
    return taps[-1], taps[-1], {"gate": (), "inner_gate": (), "expert": ()}


def branch_convs(width, convs=2):
    """The `(filters, pool)` convs of the gate and of each expert under `"branch"`,
    for a backbone whose last block has `convs` convolutions of `width` filters."""
    expert_width = max(1, round(width * BRANCH_EXPERT_WIDTH))
    return {
        "gate": ((max(1, round(width * BRANCH_GATE_WIDTH)), False),),
        "expert": tuple((expert_width, i == convs - 1) for i in range(convs)),
    }


def _convs_in_block(base, tap):
    """How many convolutions small_cnn's block `tap` ("conv_03") holds."""
    found = [
        layer
        for layer in base.layers
        if isinstance(layer, layers.Conv2D)
        and (layer.name == f"{tap}_conv" or layer.name.startswith(f"{tap}_"))
    ]
    return max(1, len(found))


def _expert(hierarchy, group, make, routing):
    """One group's expert: None for a single class, a nested ConditionalModel for subgroups."""
    classes = hierarchy.classes_of(group)
    if len(classes) == 1:
        return None  # a single-class group needs no expert: its class has probability 1
    name = f"expert_{_safe(group)}"
    sub = hierarchy.subhierarchy(group)
    if sub is None:
        return make(len(classes), name, "expert")
    return ConditionalModel(
        sub,
        gate=make(sub.num_groups, f"{name}_gate", "inner_gate"),
        experts={g: _expert(sub, g, make, routing) for g in sub.groups},
        routing=routing,
        name=name,
    )


def resolve_head_units(head_units, expert_placement):
    """The hidden units `build_image_model` gives each head: `"auto"` resolved, bad values
    rejected."""
    if check_head_units(head_units) == "auto":
        return HEAD_UNITS if expert_placement == "heads" else 0
    return head_units


def check_head_units(head_units):
    """`head_units`: an int >= 0 (0: no hidden layer) or `"auto"`."""
    if head_units == "auto":
        return head_units
    if not isinstance(head_units, int) or isinstance(head_units, bool):
        raise TypeError(
            f"head_units must be an int >= 0 or 'auto'. Received: head_units={head_units!r}"
        )
    if head_units < 0:
        raise ValueError(
            f"head_units must be an int >= 0 or 'auto'. Received: head_units={head_units!r}"
        )
    return head_units


def classifier_head(input_shape, units, name, dropout, convs=(), hidden=0):
    """A head model: `(filters, pool)` convs (3x3 + BatchNorm + ReLU, 2x2 max
    pooling if `pool`), global average pooling (over the tokens of a
    `(tokens, features)` input), dropout, a ReLU Dense of `hidden` units and dropout again
    (when `hidden`), a softmax Dense kept in float32 under a mixed
    precision policy (the probabilities, which routing and the losses read, and the
    small last layer cost little in float32)."""
    inputs = keras.Input(input_shape)
    x = inputs
    for filters, pool in convs:
        x = conv_bn_relu(x, filters)
        x = layers.MaxPooling2D()(x) if pool else x
    pooling = {3: layers.GlobalAveragePooling2D, 2: layers.GlobalAveragePooling1D}
    x = pooling[len(input_shape)]()(x) if len(input_shape) in pooling else x
    x = layers.Dropout(dropout)(x) if dropout else x
    if hidden:
        x = layers.Dense(hidden, activation="relu")(x)
        x = layers.Dropout(dropout)(x) if dropout else x
    outputs = layers.Dense(units, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def _separate_model(hierarchy, shape, augmentation, routing, filters, dropout, kwargs):
    inputs = keras.Input(shape, name="image")
    x = augmentation(inputs) if augmentation is not None else inputs
    trunk = keras.Model(inputs, {"image": layers.Identity(name="image_out")(x)}, name="trunk")

    def classifier(units, name):
        base = small_cnn(shape, filters=tuple(filters), name=f"{name}_cnn")
        image = keras.Input(shape)
        features = base(image)
        head = classifier_head(tuple(features.shape[1:]), units, f"{name}_head", dropout)
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

"""Taps: the layers where gates and experts branch, and where a backbone's head begins."""

import difflib

import keras
from keras import layers


def default_taps(trunk, num_taps=None):
    """Suggests the layers of a trunk where experts can attach.

    A tap is the output of a stage: the last layer before the feature map
    shrinks, counting a pooling layer as the end of the stage it pools. Only
    layers that every path from the input to the output passes through are
    candidates, so a tap is never inside a residual or squeeze-excite branch.
    For ResNet50 the taps are `pool1_pool`, `conv2_block3_out`, ...,
    `conv5_block3_out`; for `small_cnn`, `conv_01`, `conv_02`, ... The same
    rule serves every functional trunk: `keras.applications` bases, keras-hub
    backbones and a user's own model cut by `model_trunk`.

    Args:
        trunk: functional `keras.Model` with a fixed input size.
        num_taps: int. How many taps to return, the deepest ones. Defaults to
            `None`, all of them.

    Returns:
        A list of layer names, shallowest first; the last one is the trunk's
        output layer.

    Example:

    ```python
    trunk = small_cnn((64, 64, 3))
    default_taps(trunk, num_taps=2)  # ['conv_03', 'conv_04']
    features = trunk.get_layer("conv_03").output
    ```
    """
    _check_functional(trunk, "default_taps")
    taps = _stage_outputs(trunk)
    if num_taps is None:
        return taps
    if not isinstance(num_taps, int) or not 1 <= num_taps <= len(taps):
        raise ValueError(
            f"num_taps must be an int from 1 to {len(taps)}: trunk '{trunk.name}' "
            f"has {len(taps)} stages ({taps}). Received: num_taps={num_taps}"
        )
    return taps[-num_taps:]


def default_cut(model):
    """The layer where a classifier's feature extractor ends and its head begins.

    Walks the layers every input-to-output path goes through and stops before
    the first one whose output has no spatial or token axis left (a global
    pooling, a `Flatten`, a `Dense` on pooled features). A convolution right
    before the pooling that outputs one map per class (as in SqueezeNet or
    mini-Xception) belongs to the head too, so layers whose channel count
    equals the model's number of outputs are skipped back over. A model with
    no such head (already a feature extractor) is cut at its output.

    Args:
        model: functional `keras.Model`, e.g. a loaded classifier.

    Returns:
        A layer name of `model`.

    Example:

    ```python
    classifier = keras.applications.MobileNetV2(weights=None)
    default_cut(classifier)  # 'out_relu'
    ```
    """
    _check_functional(model, "default_cut")
    path = list(_main_path(model))
    if not path:
        raise ValueError(
            f"Model '{model.name}' has no layer with a kernel on the path from its input to "
            "its output, so it has no feature extractor to cut. Received: layers "
            f"{[layer.name for layer in model.layers]}"
        )
    head = next((i for i, layer in enumerate(path) if len(layer.output.shape) <= 2), None)
    if head is None:
        return path[-1].name
    if head == 0:
        raise ValueError(
            f"Model '{model.name}' flattens its input right away ('{path[0].name}'), so it "
            "has no feature map to branch from. Pass backbone_output=LAYER_NAME. "
            f"Received: layers {[layer.name for layer in model.layers]}"
        )
    classes = model.outputs[0].shape[-1]
    index = head - 1
    while index > 0 and path[index].output.shape[-1] == classes:
        index -= 1  # a classifier convolution: one feature map per class
    return path[index].name


def check_layer(model, name, argument="backbone_output"):
    """The layer `name` of `model`; a ValueError listing close names and the taps otherwise."""
    names = [layer.name for layer in model.layers]
    if name in names:
        return model.get_layer(name)
    close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
    raise ValueError(
        f"Model '{model.name}' has no layer '{name}'. Close names: {close or 'none'}; "
        f"its stage outputs, good places to cut: {_stage_outputs_or_none(model)}; "
        f"all {len(names)} layers: {names}. Received: {argument}={name!r}"
    )


# === The main path ===


def _stage_outputs(trunk):
    last_of_stage, stage = {}, None
    for layer in _main_path(trunk):
        if not isinstance(layer, _POOLING) or stage is None:
            stage = _spatial_shape(trunk, layer)
        last_of_stage[stage] = layer.name
    return list(last_of_stage.values())


def _stage_outputs_or_none(model):
    try:
        return _stage_outputs(model)
    except ValueError:  # no fixed input size
        return "unknown"


def _main_path(trunk):
    """Layers every input-to-output path goes through, from the first convolution."""
    operations = trunk.operations
    position = {id(op): index for index, op in enumerate(operations)}
    producer = {id(x): op for op in operations for x in keras.tree.flatten(op.output)}
    crossings = [0] * (len(operations) + 1)
    for index, op in enumerate(operations):
        for x in _inputs_of(op):
            crossings[position[id(producer[id(x)])] + 1] += 1
            crossings[index] -= 1
    started, open_edges = False, 0
    for index, op in enumerate(operations):
        open_edges += crossings[index]
        started = started or any("kernel" in w.name for w in getattr(op, "weights", ()))
        if started and open_edges == 0 and _is_candidate(op):
            yield op


def _inputs_of(operation):
    if isinstance(operation, layers.InputLayer):
        return []
    return keras.tree.flatten(operation.input)


def _is_candidate(operation):
    return isinstance(operation, layers.Layer) and not isinstance(operation, _RESIZING)


def _spatial_shape(trunk, layer):
    shape = tuple(layer.output.shape)
    spatial = shape[2:] if keras.config.image_data_format() == "channels_first" else shape[1:-1]
    if None in spatial:
        raise ValueError(
            f"default_taps needs a trunk with a fixed input size, but layer "
            f"'{layer.name}' of '{trunk.name}' outputs shape {shape}. Build the "
            "trunk with e.g. input_shape=(224, 224, 3). Received: "
            f"trunk input shape {tuple(trunk.inputs[0].shape)}"
        )
    return spatial


def _check_functional(model, who):
    if not isinstance(model, keras.Function):
        raise TypeError(
            f"{who} needs a functional model (e.g. from small_cnn or "
            f"application_trunk). Received: trunk of type {type(model).__name__}"
        )


_POOLING = (
    layers.MaxPooling1D,
    layers.MaxPooling2D,
    layers.MaxPooling3D,
    layers.AveragePooling1D,
    layers.AveragePooling2D,
    layers.AveragePooling3D,
)
_RESIZING = (
    layers.ZeroPadding1D,
    layers.ZeroPadding2D,
    layers.ZeroPadding3D,
    layers.Cropping1D,
    layers.Cropping2D,
    layers.Cropping3D,
)

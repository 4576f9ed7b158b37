"""Trunks: the shared feature extractors that gates and experts branch from.

A backbone is named by one value: `"small_cnn"` (trained from scratch), any
`keras.applications` image model (`APPLICATIONS`), a keras-hub image backbone
preset, or the path of a user's own `.keras` / `.h5` model (or the model
itself). `make_trunk` turns each into a functional model whose layers are all
its own (nested models opened up), so `default_taps` finds stage outputs to
branch from and `freeze` / `unfreeze_top` reach every layer.
"""

import difflib
import os

import keras
from keras import layers

from condnet.choices import SMALL_CNN_FILTERS
from condnet.vision.model_trunk import (
    HUB_SCHEMES,
    MODEL_FILE_EXTENSIONS,
    hub_presets,
    model_trunk,
    preset_trunk,
)
from condnet.vision.preprocessing import preprocessing_layer
from condnet.vision.taps import check_layer

BACKBONE_KINDS = ("small_cnn", "application", "file", "model", "preset")

# === small_cnn ===


# Keras's default BatchNormalization momentum (0.99) needs a few hundred steps
# before its moving statistics (used at inference) catch up with the batches;
# a run of a few thousand images has ~100 steps an epoch, so validation lagged
# training by several epochs. 0.9 (PyTorch's default) catches up in ~20 steps.
BATCH_NORM_MOMENTUM = 0.9


def small_cnn(
    input_shape=(64, 64, 3), filters=SMALL_CNN_FILTERS, convs_per_block=2, name="small_cnn"
):
    """A small CNN trained from scratch, with one tap per block.

    `Rescaling(1/255)`, then one block per entry of `filters`:
    `convs_per_block` times a 3x3 `Conv2D` (padding `"same"`),
    `BatchNormalization` and `ReLU`, then 2x2 `MaxPooling2D`. The defaults
    are the CNN a Keras user would write (three blocks of two convolutions,
    32 / 64 / 128 filters). The pooling layer of block `i` is named
    `f"conv_{i:02d}"`, so `model.get_layer("conv_02").output` is the feature
    map of block 2: these names are the taps where experts attach.

    Args:
        input_shape: tuple of 3 ints. Shape of one image, values in `[0, 255]`.
            Each side must be at least `2 ** len(filters)` (or `None`).
            Defaults to `(64, 64, 3)`.
        filters: tuple of ints. Number of filters of each block. Defaults to
            `(32, 64, 128)`.
        convs_per_block: int. Convolutions per block. Defaults to 2.
        name: string. Name of the model. Defaults to `"small_cnn"`.

    Returns:
        A functional `keras.Model` from images to the last block's features.

    Example:

    ```python
    trunk = small_cnn((64, 64, 3))
    trunk.get_layer("conv_02").output.shape  # (None, 16, 16, 64)
    ```
    """
    _check_filters(filters)
    if (
        not isinstance(convs_per_block, int)
        or isinstance(convs_per_block, bool)
        or (convs_per_block < 1)
    ):
        raise ValueError(
            f"convs_per_block must be an int >= 1. Received: convs_per_block={convs_per_block!r}"
        )
    _check_image_shape(input_shape, min_size=2 ** len(filters), who="small_cnn")
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescaling")(inputs)
    for index, count in enumerate(filters, start=1):
        x = _conv_block(x, count, convs_per_block, name=f"conv_{index:02d}")
    return keras.Model(inputs, x, name=name)


def conv_bn_relu(x, filters, name=None):
    """3x3 convolution (no bias), BatchNormalization, ReLU."""
    names = (f"{name}_conv", f"{name}_bn", f"{name}_relu") if name else (None,) * 3
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=names[0])(x)
    x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=names[1])(x)
    return layers.ReLU(name=names[2])(x)


def _conv_block(x, filters, convs, name):
    for index in range(convs):
        x = conv_bn_relu(x, filters, name=name if index == 0 else f"{name}_{index + 1}")
    return layers.MaxPooling2D(name=name)(x)


def _check_filters(filters):
    if not filters or not all(isinstance(f, int) and f > 0 for f in filters):
        raise ValueError(
            "filters must be a non-empty sequence of positive ints, one per "
            f"block, e.g. (32, 64, 128). Received: filters={filters}"
        )


# === keras.applications ===

# How each keras.applications module wants [0, 255] RGB images: what its
# `preprocess_input` does. None: the model rescales inside (its preprocess_input
# passes images through).
_APPLICATION_PREPROCESS = {
    "convnext": None,
    "efficientnet": None,
    "efficientnet_v2": None,
    "mobilenet_v3": None,
    "densenet": "torch",
    "resnet": "caffe",
    "vgg16": "caffe",
    "vgg19": "caffe",
    "inception_resnet_v2": "symmetric",
    "inception_v3": "symmetric",
    "mobilenet": "symmetric",
    "mobilenet_v2": "symmetric",
    "nasnet": "symmetric",
    "resnet_v2": "symmetric",
    "xception": "symmetric",
}


def _find_applications():
    found = {}
    for name in dir(keras.applications):
        module = getattr(getattr(keras.applications, name), "__module__", None) or ""
        if name[:1].isupper() and module.rsplit(".", 1)[-1] in _APPLICATION_PREPROCESS:
            found[name.lower()] = name
    return found


_APPLICATION_NAMES = _find_applications()  # lowercase -> constructor name
APPLICATIONS = tuple(sorted(_APPLICATION_NAMES.values()))


def application_trunk(name, input_shape=(224, 224, 3), weights=None, output=None):
    """A `keras.applications` base without its classifier, with its preprocessing.

    Every image model of `keras.applications` works (`APPLICATIONS` lists
    them). The trunk takes images with values in `[0, 255]` and applies the
    preprocessing its weights were trained with, as plain layers that reload
    under `safe_mode`: `"caffe"` for ResNet and VGG, `"symmetric"` ([-1, 1])
    for MobileNet, MobileNetV2, Inception, Xception, ResNetV2 and NASNet,
    `"torch"` for DenseNet, and nothing for the models that rescale
    themselves (ConvNeXt, EfficientNet, EfficientNetV2, MobileNetV3). See
    `preprocessing_layer`. Grayscale images are repeated into three channels
    first, as ImageNet weights expect RGB. The application's layers are part
    of the trunk itself (not a nested model), so experts can branch from any
    of them, e.g. the names from `default_taps`.

    Args:
        name: string. The application, case-insensitive, e.g. `"MobileNetV2"`,
            `"ResNet50"`, `"EfficientNetB0"`, `"ConvNeXtTiny"`.
        input_shape: tuple of 3 ints. Shape of one image, 1 or 3 channels; each
            side at least 32 (75 for Inception, 71 for Xception), or `None`.
            Defaults to `(224, 224, 3)`.
        weights: `None` (random initialization), `"imagenet"` (downloaded by
            `keras.applications`), or the path to a local `.weights.h5` / `.h5`
            file, e.g. saved from a trunk with `trunk.save_weights(path)`.
            Defaults to `None`.
        output: string. Name of the layer to end the trunk at, e.g. an
            earlier stage from `default_taps`. Defaults to `None`, the
            application's last feature map.

    Returns:
        A functional `keras.Model` from images to the feature map.

    Example:

    ```python
    trunk = application_trunk("ResNet50", (224, 224, 3), weights="imagenet")
    default_taps(trunk, num_taps=2)  # ['conv4_block6_out', 'conv5_block3_out']
    ```
    """
    application = _application_name(name)
    _check_image_shape(input_shape, min_size=32, who=f"application_trunk('{name}')")
    _check_weights(weights)
    inputs = keras.Input(input_shape, name="image")
    x = _to_rgb(inputs)
    mode = application_preprocess(application)
    x = preprocessing_layer(mode)(x) if mode else x
    base = getattr(keras.applications, application)(
        include_top=False,
        weights="imagenet" if weights == "imagenet" else None,
        input_tensor=x,
        input_shape=tuple(x.shape[1:]),
    )
    trunk = keras.Model(inputs, base.output, name=application.lower())
    if weights not in (None, "imagenet"):
        trunk.load_weights(weights)
    return _cut_at(trunk, output)


def application_preprocess(name):
    """The `preprocessing_layer` mode of a `keras.applications` model, or None if it rescales
    inside: e.g. `"caffe"` for `"ResNet50"`, `"symmetric"` for `"MobileNetV2"`."""
    module = getattr(keras.applications, _application_name(name)).__module__
    return _APPLICATION_PREPROCESS[module.rsplit(".", 1)[-1]]


def _application_name(name):
    key = str(name).lower()
    if key not in _APPLICATION_NAMES:
        close = difflib.get_close_matches(key, list(_APPLICATION_NAMES), n=5, cutoff=0.6)
        raise ValueError(
            f"Unknown application '{name}'. Close matches: "
            f"{', '.join(_APPLICATION_NAMES[c] for c in close) or 'none'}. Supported "
            f"(case-insensitive): {', '.join(APPLICATIONS)}. For another base, pass the "
            "path of your own .keras model or a keras-hub preset as the backbone. "
            f"Received: name={name!r}"
        )
    return _APPLICATION_NAMES[key]


def _to_rgb(x):
    if x.shape[-1] != 1:
        return x
    return layers.Concatenate(name="gray_to_rgb")([x, x, x])


def _check_weights(weights):
    if weights is None or weights == "imagenet":
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            'weights must be None, "imagenet" or the path to a .weights.h5 or '
            f".h5 file. Received: weights={weights!r} of type {type(weights).__name__}"
        )
    path = os.fspath(weights)
    if not path.endswith(".h5"):
        raise ValueError(
            'weights must be None, "imagenet" or the path to a .weights.h5 or '
            f".h5 file (save one with `trunk.save_weights(path)`). Received: weights={path}"
        )
    if not os.path.isfile(path):
        raise ValueError(
            f"The weights file {path} does not exist. Check the path, or pass "
            f'weights=None or weights="imagenet". Received: weights={path}'
        )


def _check_image_shape(input_shape, min_size, who):
    sides = tuple(input_shape)[:-1] if len(input_shape) == 3 else ()
    if len(input_shape) != 3 or any(s is not None and s < min_size for s in sides):
        raise ValueError(
            f"{who} takes images of shape (height, width, channels) with each "
            f"side at least {min_size} (or None). Received: input_shape={input_shape}"
        )


def _cut_at(trunk, output):
    if output is None:
        return trunk
    return keras.Model(trunk.inputs, check_layer(trunk, output).output, name=trunk.name)


# === Any backbone ===


def backbone_kind(backbone):
    """What a `backbone` value names, without loading it.

    Returns one of `BACKBONE_KINDS`: `"small_cnn"`, `"application"` (a
    `keras.applications` name, case-insensitive), `"file"` (a path ending in
    `.keras`, `.h5` or `.hdf5`), `"model"` (a `keras.Model`) or `"preset"` (a keras-hub
    preset name when keras-hub is installed, a `kaggle://` / `hf://` handle,
    or a directory). An unknown name raises a ValueError listing close
    matches.
    """
    if isinstance(backbone, keras.Model):
        return "model"
    if not isinstance(backbone, (str, os.PathLike)):
        raise TypeError(
            "backbone must be a name, a path or a keras.Model. Received: "
            f"backbone={backbone!r} of type {type(backbone).__name__}"
        )
    text = os.fspath(backbone)
    if text == "small_cnn":
        return "small_cnn"
    if text.lower() in _APPLICATION_NAMES:
        return "application"
    if text.lower().endswith(MODEL_FILE_EXTENSIONS):
        return "file"
    if text.startswith(HUB_SCHEMES) or os.path.isdir(text):
        return "preset"
    presets = hub_presets()
    if text in presets:
        return "preset"
    raise ValueError(_unknown_backbone(text, presets))


def _unknown_backbone(text, presets):
    names = {n.lower(): n for n in ("small_cnn", *APPLICATIONS, *presets)}
    close = [names[c] for c in difflib.get_close_matches(text.lower(), list(names), n=5)]
    hub = (
        "a keras-hub preset name"
        if presets
        else "a keras-hub preset (pip install keras-hub to use its names)"
    )
    return (
        f"Unknown backbone '{text}'. Close matches: {', '.join(close) or 'none'}. A backbone "
        f"is 'small_cnn', a keras.applications name ({len(APPLICATIONS)} of them, e.g. "
        f"MobileNetV2, ResNet50, EfficientNetB0), {hub}, or the path of your own .keras or "
        f".h5 model. Received: backbone={text!r}"
    )


def make_trunk(
    backbone,
    input_shape,
    weights=None,
    output=None,
    preprocess=None,
    filters=SMALL_CNN_FILTERS,
):
    """The trunk of any backbone: `small_cnn`, an application, a user's model or a preset.

    Args:
        backbone: string, path or `keras.Model`; see `backbone_kind`.
        input_shape: tuple of 3 ints. Shape of one image, values in `[0, 255]`.
        weights: for an application: `None`, `"imagenet"` or a weights file
            (see `application_trunk`). A model file or preset carries its own
            weights, and `small_cnn` trains from scratch: both need `None`.
            Defaults to `None`.
        output: string. Layer to end the trunk at. Defaults to `None`: the
            last feature map, before the head for a user's model.
        preprocess: string. For a user's model or a preset: one of
            `PREPROCESS_MODES`. Defaults to `None`: `"none"` for a model, the
            preset's own converter for a preset. Applications bring their own.
        filters: tuple of ints. Blocks of `small_cnn`. Defaults to
            `SMALL_CNN_FILTERS` ((32, 64, 128)).

    Returns:
        A functional `keras.Model` from images to features.

    Example:

    ```python
    trunk = make_trunk("MobileNetV2", (96, 96, 3), weights="imagenet")
    trunk = make_trunk("my_classifier.keras", (64, 64, 3), preprocess="unit")
    ```
    """
    kind = backbone_kind(backbone)
    _check_options(kind, backbone, weights, preprocess)
    if kind == "small_cnn":
        return _cut_at(small_cnn(input_shape, filters=tuple(filters)), output)
    if kind == "application":
        return application_trunk(backbone, input_shape, weights=weights, output=output)
    if kind == "preset":
        return preset_trunk(backbone, input_shape, output=output, preprocess=preprocess)
    return model_trunk(backbone, input_shape, output=output, preprocess=preprocess or "none")


def is_pretrained(backbone, weights=None):
    """Whether a backbone arrives trained (so training starts with it frozen):
    a model file, a model or a preset, or an application given `weights`."""
    return backbone_kind(backbone) in ("file", "model", "preset") or weights is not None


def _check_options(kind, backbone, weights, preprocess):
    if kind == "small_cnn" and weights is not None:
        raise ValueError(
            "small_cnn trains from scratch and takes no pretrained weights. Pick an "
            "application backbone (e.g. backbone='MobileNetV3Small') or weights=None. "
            f"Received: weights={weights!r}"
        )
    if kind in ("file", "model", "preset") and weights is not None:
        raise ValueError(
            f"A backbone {kind} carries its own weights; weights= is for keras.applications "
            f"backbones. Pass weights=None. Received: backbone={backbone!r}, weights={weights!r}"
        )
    if kind in ("small_cnn", "application") and preprocess is not None:
        raise ValueError(
            f"preprocess= is for a user's model or a keras-hub preset; {backbone!r} brings "
            f"its own preprocessing. Pass preprocess=None. Received: preprocess={preprocess!r}"
        )


# === Transfer learning ===


def freeze(trunk):
    """Freezes every weight of the trunk (step 1 of transfer learning).

    Frozen `BatchNormalization` layers run in inference mode, using their
    moving statistics. Compile the model again after changing what is frozen.

    Args:
        trunk: `keras.Model`. The trunk; it is changed in place.

    Returns:
        The same trunk, for chaining.

    Example:

    ```python
    trunk = freeze(application_trunk("EfficientNetB0", weights="imagenet"))
    trunk.trainable_weights  # []
    ```
    """
    # True first: on TensorFlow, Keras skips an assignment of the value an attribute
    # already holds (KerasAutoTrackable.__setattr__), so `trainable = False` on a layer
    # restored frozen would not reach the sublayers it made in build() (a keras-hub
    # Transformer block's attention and dense layers), which restore as trainable.
    trunk.trainable = True
    trunk.trainable = False
    return trunk


def unfreeze_top(trunk, num_layers):
    """Makes the top layers of the trunk trainable (step 2: fine-tuning).

    Counts only layers with weights, from the output down, and skips every
    `BatchNormalization` layer: those stay frozen, and so in inference mode,
    as the Keras transfer-learning guide recommends, because updating their
    statistics on a small dataset destroys what the trunk learned. All other
    layers are frozen. Compile the model again afterwards (with a low
    learning rate) for the change to take effect.

    Args:
        trunk: `keras.Model`. The trunk; it is changed in place. Layers inside
            nested models count individually.
        num_layers: int. How many of the top layers with weights (not counting
            `BatchNormalization`) to make trainable; `0` freezes them all.

    Returns:
        The same trunk, for chaining.

    Example:

    ```python
    trunk = application_trunk("ResNet50", weights="imagenet")
    unfreeze_top(trunk, 10)  # the last 10 convolutions train, BN stays frozen
    ```
    """
    trunk.trainable = True
    weighted = [layer for layer in _leaf_layers(trunk) if layer.weights]
    tunable = tunable_layers(trunk)
    if not isinstance(num_layers, int) or not 0 <= num_layers <= len(tunable):
        raise ValueError(
            f"num_layers must be an int from 0 to {len(tunable)}, the number of "
            f"layers of '{trunk.name}' with weights that are not BatchNormalization. "
            f"Received: num_layers={num_layers}"
        )
    top = {id(layer) for layer in tunable[len(tunable) - num_layers :]}
    for layer in weighted:
        layer.trainable = id(layer) in top
    return trunk


def tunable_layers(trunk):
    """The layers `unfreeze_top` counts, input first: the trunk's layers with weights, and
    those of the models nested in it, BatchNormalization left out. A layer made of layers
    (a keras-hub Transformer block) counts as one."""
    return [
        layer
        for layer in _leaf_layers(trunk)
        if layer.weights and not isinstance(layer, layers.BatchNormalization)
    ]


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer

"""Trunks: the shared feature extractors that gates and experts branch from."""

import os

import keras
from keras import layers, ops

# === Preprocessing ===

_IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="condnet")
class CaffePreprocess(keras.layers.Layer):
    """Caffe-style image preprocessing: RGB to BGR, then minus the ImageNet mean.

    Does what `keras.applications.imagenet_utils.preprocess_input(x,
    mode="caffe")` does (the preprocessing ResNet50 and VGG16 were trained
    with), but as a layer, so that it is saved with the model and reloads with
    `keras.models.load_model(safe_mode=True)`, which a `Lambda` would not.

    Args:
        data_format: string. `"channels_last"` or `"channels_first"`. Defaults
            to `None`, the value of `keras.config.image_data_format()`.

    Call arguments:
        inputs: RGB images with values in `[0, 255]`, 3 channels.

    Example:

    ```python
    inputs = keras.Input((224, 224, 3))
    x = CaffePreprocess()(inputs)  # BGR, zero-centred per channel
    ```
    """

    def __init__(self, data_format=None, **kwargs):
        data_format = data_format or keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                'data_format must be "channels_last" or "channels_first". '
                f"Received: data_format={data_format}"
            )
        super().__init__(**kwargs)
        self.data_format = data_format

    def build(self, input_shape):
        channels = input_shape[self._channel_axis]
        if channels != 3:
            raise ValueError(
                "CaffePreprocess expects RGB images with 3 channels on axis "
                f"{self._channel_axis} ({self.data_format}). Received: "
                f"input_shape={input_shape}"
            )

    def call(self, inputs):
        inputs = ops.cast(inputs, self.compute_dtype)
        mean = ops.convert_to_tensor(_IMAGENET_BGR_MEAN, dtype=self.compute_dtype)
        if self.data_format == "channels_first":
            mean = ops.reshape(mean, (3, 1, 1))
        return ops.flip(inputs, axis=self._channel_axis) - mean

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"data_format": self.data_format})
        return config

    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1


# === Trunks ===


def small_cnn(input_shape=(64, 64, 3), filters=(32, 64, 128, 256), name="small_cnn"):
    """A small CNN trained from scratch, with one tap per block.

    `Rescaling(1/255)`, then one block per entry of `filters`: 3x3 `Conv2D`
    (padding `"same"`), `BatchNormalization`, `ReLU` and 2x2 `MaxPooling2D`.
    The pooling layer of block `i` is named `f"conv_{i:02d}"`, so
    `model.get_layer("conv_02").output` is the feature map of block 2: these
    names are the taps where experts attach.

    Args:
        input_shape: tuple of 3 ints. Shape of one image, values in `[0, 255]`.
            Each side must be at least `2 ** len(filters)` (or `None`).
            Defaults to `(64, 64, 3)`.
        filters: tuple of ints. Number of filters of each block. Defaults to
            `(32, 64, 128, 256)`.
        name: string. Name of the model. Defaults to `"small_cnn"`.

    Returns:
        A functional `keras.Model` from images to the last block's features.

    Example:

    ```python
    trunk = small_cnn((64, 64, 3))
    trunk.get_layer("conv_03").output.shape  # (None, 8, 8, 128)
    ```
    """
    _check_filters(filters)
    _check_image_shape(input_shape, min_size=2 ** len(filters), who="small_cnn")
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescaling")(inputs)
    for index, count in enumerate(filters, start=1):
        x = _conv_block(x, count, name=f"conv_{index:02d}")
    return keras.Model(inputs, x, name=name)


def _conv_block(x, filters, name):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    return layers.MaxPooling2D(name=name)(x)


def _check_filters(filters):
    if not filters or not all(isinstance(f, int) and f > 0 for f in filters):
        raise ValueError(
            "filters must be a non-empty sequence of positive ints, one per "
            f"block, e.g. (32, 64, 128). Received: filters={filters}"
        )


# Lowercase name -> (keras.applications constructor, preprocessing it lacks).
# MobileNetV3 and EfficientNet rescale [0, 255] inputs themselves.
_APPLICATIONS = {
    "mobilenetv3small": ("MobileNetV3Small", None),
    "mobilenetv3large": ("MobileNetV3Large", None),
    "efficientnetb0": ("EfficientNetB0", None),
    "efficientnetb1": ("EfficientNetB1", None),
    "efficientnetb2": ("EfficientNetB2", None),
    "efficientnetb3": ("EfficientNetB3", None),
    "resnet50": ("ResNet50", CaffePreprocess),
    "resnet101": ("ResNet101", CaffePreprocess),
    "vgg16": ("VGG16", CaffePreprocess),
    "vgg19": ("VGG19", CaffePreprocess),
}


def application_trunk(name, input_shape=(224, 224, 3), weights=None):
    """A `keras.applications` base without its classifier, with preprocessing.

    The trunk takes RGB images with values in `[0, 255]` and applies the
    preprocessing its weights were trained with: MobileNetV3 and EfficientNet
    rescale internally; ResNet and VGG get a `CaffePreprocess` layer. The
    application's layers are part of the trunk itself (not a nested model), so
    experts can branch from any of them, e.g. the names from `default_taps`.

    Args:
        name: string. The application, case-insensitive: one of
            `"MobileNetV3Small"`, `"MobileNetV3Large"`, `"EfficientNetB0"` to
            `"EfficientNetB3"`, `"ResNet50"`, `"ResNet101"`, `"VGG16"`, `"VGG19"`.
        input_shape: tuple of 3 ints. Shape of one image; each side at least 32
            (or `None`). Defaults to `(224, 224, 3)`.
        weights: `None` (random initialization), `"imagenet"` (downloaded by
            `keras.applications`), or the path to a local `.weights.h5` / `.h5`
            file, e.g. saved from a trunk with `trunk.save_weights(path)`.
            Defaults to `None`.

    Returns:
        A functional `keras.Model` from images to the last feature map.

    Example:

    ```python
    trunk = application_trunk("ResNet50", (224, 224, 3), weights="imagenet")
    default_taps(trunk, num_taps=2)  # ['conv4_block6_out', 'conv5_block3_out']
    ```
    """
    application, preprocess = _APPLICATIONS[_application_key(name)]
    _check_image_shape(input_shape, min_size=32, who=f"application_trunk('{name}')")
    _check_weights(weights)
    inputs = keras.Input(input_shape, name="image")
    x = preprocess(name="caffe_preprocess")(inputs) if preprocess else inputs
    base = getattr(keras.applications, application)(
        include_top=False,
        weights="imagenet" if weights == "imagenet" else None,
        input_tensor=x,
    )
    trunk = keras.Model(inputs, base.output, name=_application_key(name))
    if weights not in (None, "imagenet"):
        trunk.load_weights(weights)
    return trunk


def _application_key(name):
    key = str(name).lower()
    if key not in _APPLICATIONS:
        supported = [application for application, _ in _APPLICATIONS.values()]
        raise ValueError(
            f"Unknown application '{name}'. Supported (case-insensitive): "
            f"{', '.join(supported)}. For another base, build a functional "
            f"model yourself and use it as the trunk. Received: name={name!r}"
        )
    return key


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


# === Taps ===


def default_taps(trunk, num_taps=None):
    """Suggests the layers of a trunk where experts can attach.

    A tap is the output of a stage: the last layer before the feature map
    shrinks, counting a pooling layer as the end of the stage it pools. Only
    layers that every path from the input to the output passes through are
    candidates, so a tap is never inside a residual or squeeze-excite branch.
    For ResNet50 the taps are `pool1_pool`, `conv2_block3_out`, ...,
    `conv5_block3_out`; for `small_cnn`, `conv_01`, `conv_02`, ...

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
    if not isinstance(trunk, keras.Function):
        raise TypeError(
            "default_taps needs a functional model (e.g. from small_cnn or "
            f"application_trunk). Received: trunk of type {type(trunk).__name__}"
        )
    taps = _stage_outputs(trunk)
    if num_taps is None:
        return taps
    if not isinstance(num_taps, int) or not 1 <= num_taps <= len(taps):
        raise ValueError(
            f"num_taps must be an int from 1 to {len(taps)}: trunk '{trunk.name}' "
            f"has {len(taps)} stages ({taps}). Received: num_taps={num_taps}"
        )
    return taps[-num_taps:]


def _stage_outputs(trunk):
    last_of_stage, stage = {}, None
    for layer in _main_path(trunk):
        if not isinstance(layer, _POOLING) or stage is None:
            stage = _spatial_shape(trunk, layer)
        last_of_stage[stage] = layer.name
    return list(last_of_stage.values())


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
    weighted = [layer for layer in _leaf_layers(trunk) if layer.trainable_weights]
    tunable = [layer for layer in weighted if not isinstance(layer, layers.BatchNormalization)]
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


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer

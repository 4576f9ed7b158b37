"""A trained model as a trunk: a user's model file or a keras-hub preset, opened up and cut.

The model's layers, and those of the models nested in it, are copied into one
functional trunk with the trained weights, so `default_taps` finds its stages
and `freeze` / `unfreeze_top` reach every layer.
"""

import os
from pathlib import Path

import keras
from keras import layers

from condnet.vision.preprocessing import check_preprocess, preprocessing_layer
from condnet.vision.taps import check_layer, default_cut

MODEL_FILE_EXTENSIONS = (".keras", ".h5", ".hdf5")
HUB_SCHEMES = ("kaggle://", "hf://", "modelscope://")

# === A user's model ===


def model_trunk(model, input_shape=None, output=None, preprocess="none"):
    """A user's trained model as a trunk: cut before its classifier head, with preprocessing.

    The model (a `.keras` or `.h5` file, or a `keras.Model`) is opened up:
    its layers, and those of any functional or `Sequential` model nested in
    it (a `keras.applications` base inside a fine-tuned classifier, say),
    become the trunk's own layers, still holding the trained weights. It is
    cut at `output`, or by default before its head (see `default_cut`: the
    global pooling, flattening or dense layers, and a per-class convolution
    right before them). Random augmentation layers inside it are left out:
    augmentation belongs in front of the trunk (`make_augmentation`), where it
    can be chosen per dataset.

    Args:
        model: string, path or `keras.Model`. A `.keras` file (loaded with
            `safe_mode=True`) or a legacy `.h5` model file, or the model.
        input_shape: tuple of 3 ints. Shape of the images, values in
            `[0, 255]`; the channels must be the model's. A fully
            convolutional model also takes other sizes than it was saved for.
            Defaults to `None`, the model's own input shape.
        output: string. Name of the layer to cut at (nested models' layers
            count). Defaults to `None`, before the head.
        preprocess: string. What the model expects, from `[0, 255]`: `"none"`,
            `"unit"` ([0, 1]), `"symmetric"` ([-1, 1]), `"caffe"` or `"torch"`
            (see `preprocessing_layer`). Defaults to `"none"`.

    Returns:
        A functional `keras.Model` from images to the cut layer's features.

    Example:

    ```python
    trunk = model_trunk("emotion_model.hdf5", input_shape=(64, 64, 1), preprocess="symmetric")
    trunk.layers[-1].name  # 'add_4', the last residual stage before the per-class conv
    ```
    """
    check_preprocess(preprocess)
    source = _load_model(model)
    name = source.name if source is model else _safe(Path(model).stem)
    return _trunk_from(source, input_shape, output, preprocess, name, cut_head=True)


def _load_model(model):
    if isinstance(model, keras.Model):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            "A backbone model must be a keras.Model or the path of a .keras or .h5 model "
            f"file. Received: model={model!r} of type {type(model).__name__}"
        )
    path = os.fspath(model)
    if not path.lower().endswith(MODEL_FILE_EXTENSIONS) or not os.path.isfile(path):
        raise ValueError(
            f"The backbone model file {path} does not exist or is not a .keras, .h5 or "
            ".hdf5 file. Save one with `model.save('model.keras')`. Received: "
            f"backbone={path}"
        )
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a file it cannot read
        raise ValueError(
            f"{path} is not a Keras model file that loads ({type(error).__name__}: {error}). "
            "A backbone file is a whole model saved with `model.save(path)`; a weights-only "
            "file (.weights.h5) goes with backbone=<application name> and weights=path. "
            f"Received: backbone={path}"
        ) from error


def _trunk_from(source, input_shape, output, preprocess, name, cut_head):
    """The trunk: Input -> preprocessing -> `source`'s layers up to the cut."""
    _check_single_image_input(source)
    saved = tuple(source.inputs[0].shape[1:])
    input_shape = tuple(input_shape) if input_shape is not None else saved
    if input_shape[-1] != saved[-1]:
        raise ValueError(
            f"Backbone '{name}' takes images with {saved[-1]} channels (input shape "
            f"{saved}), but the images have {input_shape[-1]}. Load them with "
            f"{'color_mode=grayscale' if saved[-1] == 1 else 'color_mode=rgb'}. "
            f"Received: input_shape={input_shape}"
        )
    flat = _opened_up(source, saved if None not in saved[:-1] else input_shape)
    if output is not None:
        cut = check_layer(flat, output).name
    else:
        cut = default_cut(flat) if cut_head else flat.layers[-1].name
    features = keras.Model(flat.inputs, flat.get_layer(cut).output, name=name)
    if isinstance(preprocess, str):
        preprocess = preprocessing_layer(preprocess, input_shape[-1], name=_free_name(flat))
    inputs = keras.Input(input_shape, name="image")
    x = preprocess(inputs) if preprocess is not None else inputs
    try:
        outputs = _inline(features, x)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"The layers of backbone '{name}' up to '{cut}' do not take images of shape "
            f"{input_shape} ({error}). It was saved for {saved}: use that image size, or "
            f"cut it earlier with backbone_output. Received: input_shape={input_shape}"
        ) from error
    return keras.Model(inputs, outputs, name=name)


def _check_single_image_input(model):
    inputs = getattr(model, "inputs", None) if model.built else None
    if not inputs or len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ValueError(
            f"A backbone needs one input of images (batch, height, width, channels), but "
            f"model '{model.name}' has inputs {inputs}. Build the model first (call it on "
            "an image batch or give it a keras.Input). Received: "
            f"model of type {type(model).__name__}"
        )


def _opened_up(model, input_shape):
    """`model` as one functional model of its own layers, nested models opened up."""
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, _inline(model, inputs), name=model.name)


def _inline(model, x):
    """`x` through fresh copies of `model`'s layers holding its weights, nested models
    opened up. Copies, not shared layers: a layer called in two graphs has two
    outputs, and `layer.output` (which taps read) is the first one's."""
    opener = _Opener()
    outputs = opener.run(model, x)
    for layer, copy in opener.copies.values():
        copy.set_weights(layer.get_weights())
    return outputs


class _Opener:
    def __init__(self):
        self.copies = {}  # id(layer) -> (layer, copy); a layer called twice has one copy

    def run(self, model, x):
        if isinstance(model, keras.Sequential):
            for layer in model.layers:
                x = self.operation(layer)(x)
            return x
        # Walks the graph node by node, as Functional.call does. keras.models.clone_model
        # does the same, but wraps the result in a model of its own, which for inputs
        # that are not keras.Input tensors is a copy cut off from `x`'s graph.
        return model._run_through_graph(keras.tree.flatten(x), operation_fn=self.operation)

    def operation(self, layer):
        if isinstance(layer, _AUGMENTATION):
            return _pass_through  # augmentation belongs in front of the trunk
        if _is_graph(layer):
            return lambda inputs, *args, **kwargs: self.run(layer, inputs)
        if id(layer) not in self.copies:
            self.copies[id(layer)] = (layer, layer.__class__.from_config(layer.get_config()))
        return self.copies[id(layer)][1]


def _pass_through(inputs, *args, **kwargs):
    return inputs


def _is_graph(layer):
    return isinstance(layer, keras.Model) and isinstance(layer, (keras.Sequential, keras.Function))


def _free_name(model, base="preprocess"):
    names = {layer.name for layer in model.layers}
    return next(n for n in (base, *(f"{base}_{i}" for i in range(1, 100))) if n not in names)


def _safe(name):
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name) or "backbone"


# Shape-preserving random layers; RandomCrop changes the shape, so it stays.
_AUGMENTATION = tuple(
    getattr(layers, n) for n in dir(layers) if n.startswith("Random") and n != "RandomCrop"
) + tuple(getattr(layers, n) for n in ("AugMix", "RandAugment") if hasattr(layers, n))


# === keras-hub presets ===


def preset_trunk(preset, input_shape=(224, 224, 3), output=None, preprocess=None):
    """A keras-hub image backbone preset as a trunk, with the preset's preprocessing.

    Needs `keras-hub` (`pip install "condnet[hub]"`). The backbone and its
    weights come from `keras_hub.models.Backbone.from_preset`: a built-in
    name such as `"resnet_18_imagenet"` or a `kaggle://` / `hf://` handle
    (downloaded once, then cached), or a local preset directory (saved with
    `save_to_preset`; works offline). Its layers become the trunk's own, as in
    `model_trunk`, so the saved model needs `import keras_hub` before loading.
    The preset's image converter says how to scale `[0, 255]` images; it is
    turned into a plain `Rescaling` layer (no resizing: images keep
    `input_shape`).

    Args:
        preset: string. A keras-hub preset name, handle or directory.
        input_shape: tuple of 3 ints. Shape of the images. Defaults to
            `(224, 224, 3)`.
        output: string. Name of a layer to end the trunk at. Defaults to
            `None`, the backbone's output.
        preprocess: string. One of `PREPROCESS_MODES`, to override the
            preset's converter (needed when the preset has none). Defaults to
            `None`, from the preset.

    Returns:
        A functional `keras.Model` from images to the backbone's features.

    Example:

    ```python
    trunk = preset_trunk("resnet_18_imagenet", input_shape=(160, 160, 3))
    ```
    """
    if preprocess is not None:
        check_preprocess(preprocess)
    keras_hub = _import_keras_hub(preset)
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset)
    except Exception as error:  # unknown preset, no network, not a backbone
        raise ValueError(
            f"keras-hub could not load the backbone preset {preset!r} "
            f"({type(error).__name__}: {error}). Offline, use a local preset directory "
            f"(saved with `backbone.save_to_preset(path)`). Received: backbone={preset!r}"
        ) from error
    if preprocess is None:
        preprocess = _converter_rescaling(keras_hub, preset)
    name = _safe(Path(str(preset)).name)
    return _trunk_from(backbone, input_shape, output, preprocess, name, cut_head=False)


def _import_keras_hub(preset):
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(
            f"The backbone {preset!r} is a keras-hub preset, which needs keras-hub: "
            f'pip install keras-hub (or pip install "condnet[hub]"). Received: '
            f"backbone={preset!r}"
        ) from error
    return keras_hub


def _converter_rescaling(keras_hub, preset):
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception as error:
        raise ValueError(
            f"The keras-hub preset {preset!r} has no image converter saying how it wants "
            "its images. Pass preprocess= one of 'none', 'unit', 'symmetric', 'caffe', "
            f"'torch'. Received: backbone={preset!r}"
        ) from error
    if converter.scale is None and converter.offset is None:
        return None
    scale = 1.0 if converter.scale is None else converter.scale
    offset = 0.0 if converter.offset is None else converter.offset
    return layers.Rescaling(scale, offset=offset, name="preprocess")


def hub_presets():
    """The names of keras-hub's built-in backbone presets; empty without keras-hub."""
    try:
        import keras_hub
    except ImportError:
        return ()
    return tuple(keras_hub.models.Backbone.presets)

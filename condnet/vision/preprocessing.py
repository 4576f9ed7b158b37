"""Input preprocessing of pretrained backbones, as plain Keras layers that load with safe_mode."""

import keras
from keras import layers, ops

from condnet.choices import PREPROCESS_MODES

# What each mode does to [0, 255] RGB images, as in keras.applications' preprocess_input.
_IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def preprocessing_layer(mode, channels=3, name="preprocess"):
    """The layer that turns `[0, 255]` images into what a pretrained network expects.

    The modes are those of `keras.applications.imagenet_utils.preprocess_input`,
    done by layers that are saved with the model and reload under
    `keras.models.load_model(safe_mode=True)` (a `Lambda` would not):

    - `"none"`: no layer; the network takes `[0, 255]` (or rescales itself).
    - `"unit"`: `Rescaling(1/255)`, to `[0, 1]`.
    - `"symmetric"`: `Rescaling(1/127.5, offset=-1)`, to `[-1, 1]` ("tf" mode:
      MobileNet, MobileNetV2, Inception, Xception, ResNetV2).
    - `"caffe"`: `CaffePreprocess`, RGB to BGR minus the ImageNet mean
      (ResNet, VGG).
    - `"torch"`: `Normalization` to the ImageNet mean and standard deviation
      of `[0, 1]` images (DenseNet, most PyTorch-trained weights).

    Args:
        mode: string. One of `PREPROCESS_MODES`.
        channels: int. Channels of the images; `"caffe"` and `"torch"` need 3.
            Defaults to 3.
        name: string. Name of the layer. Defaults to `"preprocess"`.

    Returns:
        A Keras layer, or `None` for `"none"`.

    Example:

    ```python
    inputs = keras.Input((96, 96, 3))
    x = preprocessing_layer("torch")(inputs)  # (x / 255 - mean) / std
    ```
    """
    check_preprocess(mode)
    if mode in ("caffe", "torch") and channels != 3:
        raise ValueError(
            f"preprocess='{mode}' normalizes the 3 channels of RGB images, but the images "
            f"have {channels}. Load them as RGB (color_mode='rgb') or pick 'unit', "
            f"'symmetric' or 'none'. Received: preprocess={mode!r}, channels={channels}"
        )
    if mode == "none":
        return None
    if mode == "unit":
        return layers.Rescaling(1.0 / 255, name=name)
    if mode == "symmetric":
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name)
    if mode == "caffe":
        return CaffePreprocess(name=name)
    mean = [255.0 * m for m in _TORCH_MEAN]
    variance = [(255.0 * s) ** 2 for s in _TORCH_STD]
    return layers.Normalization(mean=mean, variance=variance, name=name)


def check_preprocess(mode):
    """Raises a ValueError naming the choices unless `mode` is one of `PREPROCESS_MODES`."""
    if mode not in PREPROCESS_MODES:
        raise ValueError(
            f"preprocess must be one of {list(PREPROCESS_MODES)}: 'none' ([0, 255] as is), "
            "'unit' ([0, 1]), 'symmetric' ([-1, 1]), 'caffe' (BGR minus the ImageNet mean) "
            f"or 'torch' (ImageNet mean and std). Received: preprocess={mode!r}"
        )


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

"""Image augmentation: random flips, rotations, zooms, shifts and contrast, in training only."""

import keras

FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


def make_augmentation(
    flip="horizontal", rotation=0.1, zoom=0.1, translation=0.1, contrast=0.1, seed=None
):
    """A `keras.Sequential` of random image transformations for training.

    Put it first in a model (or in front of the gate and experts): Keras's
    random preprocessing layers transform their inputs only when called with
    `training=True`, as in `fit`, and pass them through unchanged in
    `evaluate` and `predict`. Being plain Keras layers, it saves and loads
    with the model under `safe_mode`.

    Each transformation is left out when its argument is 0 or `None`; with all
    of them off the result is a single `keras.layers.Identity`. Images are
    expected in [0, 255], as `ImageFolder` yields them (the contrast layer
    uses that value range).

    Args:
        flip: `"horizontal"`, `"vertical"`, `"horizontal_and_vertical"` or
            `None`. Defaults to `"horizontal"`.
        rotation: float in [0, 1). Largest rotation either way, as a fraction
            of a full turn (0.1 is 36 degrees). Defaults to 0.1.
        zoom: float in [0, 1). Largest zoom in or out, as a fraction of the
            image size. Defaults to 0.1.
        translation: float in [0, 1). Largest shift either way, as a fraction
            of the image size. Defaults to 0.1.
        contrast: float in [0, 1). Largest contrast change, as a fraction.
            Defaults to 0.1.
        seed: int. Seed of the first layer; layer `i` gets `seed + i`, so the
            layers draw independently. Defaults to `None`.

    Returns:
        A `keras.Sequential` named "augmentation".

    Example:

    ```python
    augmentation = make_augmentation(flip="horizontal", rotation=0.05)
    inputs = keras.Input((64, 64, 3))
    x = augmentation(inputs)
    ```
    """
    _check_flip(flip)
    factors = dict(rotation=rotation, zoom=zoom, translation=translation, contrast=contrast)
    for name, factor in factors.items():
        _check_factor(name, factor)
    seeds = iter(range(seed, seed + 5) if seed is not None else [None] * 5)
    layers = []
    if flip:
        layers.append(keras.layers.RandomFlip(flip, seed=next(seeds)))
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, seed=next(seeds)))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, seed=next(seeds)))
    if translation:
        layers.append(keras.layers.RandomTranslation(translation, translation, seed=next(seeds)))
    if contrast:
        layers.append(keras.layers.RandomContrast(contrast, seed=next(seeds)))
    return keras.Sequential(layers or [keras.layers.Identity()], name="augmentation")


def _check_flip(flip):
    if flip is not None and flip not in FLIP_MODES:
        raise ValueError(
            f"`flip` must be one of {FLIP_MODES} or None (no flips). Received: flip={flip!r}"
        )


def _check_factor(name, factor):
    if factor is None:
        return
    if isinstance(factor, bool) or not isinstance(factor, int | float):
        raise TypeError(
            f"`{name}` must be a float in [0, 1), or 0 or None to leave it out. "
            f"Received: {name}={factor!r} of type {type(factor).__name__}"
        )
    if not 0 <= factor < 1:
        raise ValueError(
            f"`{name}` must be in [0, 1): the largest change as a fraction, e.g. "
            f"0.1. Use 0 or None to leave it out. Received: {name}={factor!r}"
        )

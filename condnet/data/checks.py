"""The checks of the options every data reader takes: image sizes, batch sizes, colour
modes, validation splits and row indices."""

import numpy as np

from condnet.choices import COLOR_MODES, MAX_IMAGE_SIDE


def check_image_size(image_size):
    """`image_size` (an int: a square; or a `(height, width)` pair of ints) as a
    `(height, width)` tuple of ints, each side from 1 to `MAX_IMAGE_SIDE` pixels; a
    TypeError or ValueError otherwise.

    The one rule for every image size condnet takes: folders, decoding and the
    training recipe's options. The smallest side a model takes is its backbone's
    to check (`condnet.vision.backbones`)."""
    size = (image_size, image_size) if is_int(image_size) else image_size
    if not (isinstance(size, tuple | list) and len(size) == 2 and all(map(is_int, size))):
        raise TypeError(
            "image_size must be an int or a (height, width) pair of ints, e.g. 64 or (64, 96). "
            f"Received: image_size={image_size!r}"
        )
    if not all(1 <= side <= MAX_IMAGE_SIDE for side in size):
        raise ValueError(
            f"image_size must be from 1 to {MAX_IMAGE_SIDE} pixels a side: larger images need "
            "gigabytes of memory per batch (resize the images instead). Received: "
            f"image_size={image_size!r}"
        )
    return int(size[0]), int(size[1])


def _check_batch_size(batch_size):
    if not (is_int(batch_size) and batch_size > 0):
        raise ValueError(
            f"`batch_size` must be a positive int, e.g. 32. Received: batch_size={batch_size!r}"
        )
    return int(batch_size)


def _check_color_mode(color_mode):
    if color_mode not in COLOR_MODES:
        raise ValueError(
            f"`color_mode` must be one of {COLOR_MODES}. Received: color_mode={color_mode!r}"
        )
    return color_mode


def _check_validation_split(validation_split):
    if isinstance(validation_split, bool) or not isinstance(validation_split, int | float):
        raise TypeError(
            "`validation_split` must be a float in [0, 1), e.g. 0.2. Received: "
            f"validation_split={validation_split!r} of type {type(validation_split).__name__}"
        )
    if not 0 <= validation_split < 1:
        raise ValueError(
            "`validation_split` must be in [0, 1): the share of each class held out "
            f"for validation, e.g. 0.2. Received: validation_split={validation_split!r}"
        )


def _check_lengths(paths, labels):
    if len(paths) != len(labels):
        raise ValueError(
            "`paths` and `labels` must have one entry per image. Received: "
            f"{len(paths)} paths and {len(labels)} labels"
        )
    if not paths:
        raise ValueError("An ImageFolder needs at least one image. Received: paths=[]")


def _check_indices(indices, num_samples):
    rows = np.asarray(indices)
    if rows.dtype == bool:
        if rows.shape != (num_samples,):
            raise ValueError(
                f"A boolean mask must have one entry per sample ({num_samples}). "
                f"Received: mask of shape {rows.shape}"
            )
        rows = np.flatnonzero(rows)
    rows = rows.reshape(-1)
    if rows.size and not np.issubdtype(rows.dtype, np.integer):
        raise TypeError(
            f"`indices` must be integers or a boolean mask. Received: dtype {rows.dtype}"
        )
    bad = rows[(rows < -num_samples) | (rows >= num_samples)]
    if bad.size:
        raise ValueError(
            f"`indices` must be in [0, {num_samples}). Received: indices containing "
            f"{sorted(set(bad.tolist()))[:10]}"
        )
    return rows.astype("int64")


def is_int(value):
    """Whether `value` is an int (a NumPy integer too), and not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)

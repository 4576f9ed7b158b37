"""Splits: training and validation rows, class by class, and the ImageFolders on them."""

import numpy as np

from condnet.data.checks import (
    _check_batch_size,
    _check_color_mode,
    _check_validation_split,
    check_image_size,
)
from condnet.data.image_folder import ImageFolder
from condnet.data.scan import scan_directory


def split_indices(labels, validation_split, seed=None):
    """Split sample indices into training and validation, class by class.

    Each class keeps the same share of validation samples (rounded, at least
    one for every class with 2 samples or more, never all of a class), so
    small classes are not left out of validation. The split depends only on
    `labels`, `validation_split` and `seed`.

    Args:
        labels: 1D array of class indices.
        validation_split: float in [0, 1). Share of each class held out.
        seed: int. Seed of the shuffle within each class. Defaults to `None`
            (a different split each call).

    Returns:
        A tuple `(train_indices, validation_indices)` of sorted int64 arrays
        that together cover every sample once.

    Example:

    ```python
    train, validation = split_indices([0, 0, 0, 1, 1], 0.4, seed=1)
    ```
    """
    _check_validation_split(validation_split)
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    held_out = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        held_out.append(rows[: _validation_count(len(rows), validation_split)])
    validation = np.sort(np.concatenate([[]] + held_out).astype("int64"))
    train = np.setdiff1d(np.arange(len(labels)), validation)
    return train, validation


def _validation_count(size, validation_split):
    if validation_split == 0 or size < 2:
        return 0
    return min(size - 1, max(1, round(validation_split * size)))


def load_folders(
    root,
    hierarchy=None,
    image_size=64,
    batch_size=32,
    validation_split=0.2,
    seed=1337,
    color_mode="rgb",
    shuffle=True,
    **pydataset_kwargs,
):
    """Read an image folder into training and validation `ImageFolder`s.

    Scans `root` with `scan_directory` (nested `root/<group>/<class>/*`, or
    flat `root/<class>/*` with a `hierarchy`), then holds out
    `validation_split` of every class with `split_indices`. The training set
    is reshuffled every epoch when `shuffle`; the validation set keeps file
    order. Options are checked before any file is read.

    Args:
        root: str or `Path`. The image folder.
        hierarchy: `Hierarchy`, dict, or path of a JSON/YAML file. Needed for
            the flat layout only. Defaults to `None`.
        image_size: int or `(height, width)`. Defaults to 64.
        batch_size: int. Defaults to 32.
        validation_split: float in [0, 1). Share of each class held out for
            validation. Defaults to 0.2.
        seed: int. Seed of the split and of the shuffles. Defaults to 1337.
        color_mode: `"rgb"` or `"grayscale"`. Defaults to `"rgb"`.
        shuffle: bool. Whether to shuffle the training set every epoch.
            Defaults to `True`.
        **pydataset_kwargs: `ImageFolder` options (`cache`, `cache_dir`,
            `decode_workers`) and `keras.utils.PyDataset`'s (`workers`,
            `use_multiprocessing`, `max_queue_size`), passed to both
            `ImageFolder`s.

    Returns:
        A tuple `(train, validation)` of `ImageFolder`s; `validation` is
        `None` when `validation_split` is 0. Both carry the `hierarchy`.

    Example:

    ```python
    train, validation = load_folders("shapes/train", image_size=48)
    train.hierarchy.groups  # ['angular', 'round']
    model.fit(train, validation_data=validation, epochs=5)
    ```
    """
    options = dict(
        image_size=check_image_size(image_size),
        batch_size=_check_batch_size(batch_size),
        color_mode=_check_color_mode(color_mode),
        **pydataset_kwargs,
    )
    _check_validation_split(validation_split)
    hierarchy, paths, labels = scan_directory(root, hierarchy)
    rows = split_indices(labels, validation_split, seed)
    if validation_split and not len(rows[1]):
        raise ValueError(
            f"`validation_split={validation_split}` holds out no sample: every class "
            f"in {str(root)!r} has fewer than 2 images. Add images or pass "
            "validation_split=0."
        )
    return split_folders(hierarchy, paths, labels, rows, seed=seed, shuffle=shuffle, **options)


def split_folders(hierarchy, paths, labels, rows, seed=None, shuffle=True, **folder_kwargs):
    """The training and validation `ImageFolder`s on the rows of a scan.

    The one way the folders of a run are built: by `load_folders`, by the
    training recipe (on the rows of its `split`) and by hierarchy discovery.
    The training folder is reshuffled every epoch when `shuffle`; the
    validation folder keeps file order.

    Args:
        hierarchy: `Hierarchy` the labels index into.
        paths: list of image paths, as `scan_directory` returns them.
        labels: 1D int array. The class index of each path.
        rows: a pair `(train_rows, validation_rows)` of indices into
            `paths`, e.g. what `split_indices` returns.
        seed: int. Seed of the training folder's shuffles. Defaults to `None`.
        shuffle: bool. Whether to shuffle the training folder every epoch.
            Defaults to `True`.
        **folder_kwargs: `ImageFolder` options (`image_size`, `batch_size`,
            `cache`, ...), passed to both folders.

    Returns:
        A tuple `(train, validation)` of `ImageFolder`s; `validation` is
        `None` when `validation_rows` is empty.

    Example:

    ```python
    hierarchy, paths, labels = scan_directory("shapes/train")
    rows = split_indices(labels, 0.2, seed=1)
    train, validation = split_folders(hierarchy, paths, labels, rows, seed=1)
    ```
    """
    labels = np.asarray(labels)

    def folder(rows, **kwargs):
        chosen = [paths[row] for row in rows]
        return ImageFolder(chosen, labels[rows], hierarchy, **folder_kwargs, **kwargs)

    train_rows, validation_rows = rows
    train = folder(train_rows, shuffle=shuffle, seed=seed)
    return train, folder(validation_rows) if len(validation_rows) else None

"""Image folders: read a labelled image tree from disk and batch it for `fit`."""

import math
import warnings
from pathlib import Path

import keras
import numpy as np
from PIL import Image, features

from condnet.hierarchy import Hierarchy

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif") + (
    (".webp",) if features.check("webp") else ()
)
CACHE_BYTES = 256 * 2**20
COLOR_MODES = ("rgb", "grayscale")
_SHOWN_PATHS = 5


# === Scanning ===


def scan_directory(root, hierarchy=None):
    """Find the images under a folder and label them with a hierarchy.

    Two layouts are read:

    - **nested**, `root/<group>/<class>/*`: the hierarchy is read from the
      folder names, sorted. A group folder that holds folders of folders
      (`root/<group>/<subgroup>/<class>/*`) becomes a nested group.
    - **flat**, `root/<class>/*`, together with a `hierarchy` that says which
      group each class belongs to.

    The layout follows from the arguments: with a `hierarchy` the folders are
    read as flat; without one they must be nested, and a top-level folder
    that holds images directly is an error that asks for the hierarchy.

    Images are the files directly inside each class folder whose extension is
    one of `IMAGE_EXTENSIONS` (case-insensitive; GIFs give their first
    frame). Hidden files and folders (names starting with ".") and other files
    are ignored. Every image is checked with Pillow's cheap `verify()` (it
    reads the file without decoding it); files that fail are skipped with one
    warning that counts them and names the first few.

    Args:
        root: str or `Path`. The folder to read.
        hierarchy: `Hierarchy`, dict, or path to a JSON/YAML hierarchy file.
            Only for the flat layout. Defaults to `None` (nested layout).

    Returns:
        A tuple `(hierarchy, paths, labels)`: the `Hierarchy`, the image paths
        as strings (class by class in hierarchy order, sorted by name within a
        class) and their global class indices as an int32 array.

    Example:

    ```python
    hierarchy, paths, labels = scan_directory("shapes/train")
    hierarchy.classes  # ['square', 'star', 'triangle', 'circle', 'ellipse', 'ring']
    ```
    """
    root = _check_root(root)
    if hierarchy is None:
        _refuse_flat_layout(root)
        hierarchy = _read_nested_hierarchy(root)
        folders = [root.joinpath(*hierarchy.path(name)) for name in hierarchy.classes]
    else:
        hierarchy = _as_hierarchy(hierarchy)
        folders = _flat_class_folders(root, hierarchy)
    paths, labels, unreadable = [], [], []
    for label, folder in enumerate(folders):
        readable, broken = _class_images(folder)
        paths += readable
        labels += [label] * len(readable)
        unreadable += broken
    _warn_unreadable(unreadable, "during scanning")
    return hierarchy, paths, np.array(labels, dtype="int32")


def _check_root(root):
    path = Path(root)
    if not path.exists():
        raise ValueError(
            "The image folder does not exist. Expected a folder laid out as "
            f"root/<group>/<class>/* or root/<class>/*. Received: root={str(root)!r}"
        )
    if not path.is_dir():
        raise ValueError(
            "The image root must be a folder of class (or group) folders, not a "
            f"file. Received: root={str(root)!r}"
        )
    if not _subfolders(path):
        raise ValueError(
            f"Found no class or group folders in {str(root)!r} (it holds "
            f"{len(_visible(path))} visible entries). Put the images in "
            "root/<group>/<class>/* or root/<class>/* with a hierarchy file."
        )
    return path


def _refuse_flat_layout(root):
    for folder in _subfolders(root):
        images = _image_files(folder)
        if images:
            raise ValueError(
                f"The folder {str(folder)!r} holds {len(images)} image(s) directly "
                "(e.g. " + repr(images[0].name) + "), so this looks like a flat "
                "layout root/<class>/*. A flat layout needs a hierarchy file mapping "
                "each group to its classes: pass `--hierarchy FILE` on the command "
                "line or `hierarchy=` in Python. For the nested layout, move the "
                f"images into root/<group>/<class>/. Received: root={str(root)!r}"
            )


def _read_nested_hierarchy(root):
    tree = {folder.name: _read_node(folder) for folder in _subfolders(root)}
    try:
        return Hierarchy(tree)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"The folders under {str(root)!r} do not form a valid hierarchy: "
            f"{error} Rename or regroup the folders, or use a flat layout with "
            "a hierarchy file."
        ) from None


def _read_node(folder):
    children = _subfolders(folder)
    if not children:
        raise ValueError(
            f"The group folder {str(folder)!r} has no class folders. Expected "
            "root/<group>/<class>/* ; add class folders or remove the group."
        )
    subgroups = [child.name for child in children if _subfolders(child)]
    if not subgroups:
        return [child.name for child in children]
    if len(subgroups) < len(children):
        classes = sorted({child.name for child in children} - set(subgroups))
        raise ValueError(
            f"The folder {str(folder)!r} mixes class folders {classes} with "
            f"subgroup folders {subgroups}. A group holds either classes or "
            "subgroups: move the classes into a subgroup folder."
        )
    for child in children:
        if _image_files(child):
            raise ValueError(
                f"The folder {str(child)!r} holds both images and subfolders. "
                "Move its images into class folders."
            )
    return {child.name: _read_node(child) for child in children}


def _as_hierarchy(hierarchy):
    if isinstance(hierarchy, Hierarchy):
        return hierarchy
    if isinstance(hierarchy, dict):
        return Hierarchy(hierarchy)
    if isinstance(hierarchy, str | Path):
        return Hierarchy.from_file(hierarchy)
    raise TypeError(
        "`hierarchy` must be a Hierarchy, a dict mapping groups to classes, or "
        f"the path of a JSON/YAML file. Received: {type(hierarchy).__name__} "
        f"{hierarchy!r:.200}"
    )


def _flat_class_folders(root, hierarchy):
    found = {folder.name: folder for folder in _subfolders(root)}
    extra = sorted(set(found) - set(hierarchy.classes))
    if extra:
        raise ValueError(
            f"{len(extra)} class folder(s) in {str(root)!r} are not classes of the "
            f"hierarchy: {extra[:10]}. Known classes: {hierarchy.classes}. Add them "
            "to the hierarchy file or remove the folders. (For a nested layout "
            "root/<group>/<class>/*, pass no hierarchy.)"
        )
    missing = [name for name in hierarchy.classes if name not in found]
    if missing:
        raise ValueError(
            f"{len(missing)} class(es) of the hierarchy have no folder in "
            f"{str(root)!r}: {missing[:10]}. Expected one folder per class, "
            "root/<class>/*. Add the folders or remove the classes from the hierarchy."
        )
    return [found[name] for name in hierarchy.classes]


def _class_images(folder):
    files = _image_files(folder)
    if not files:
        others = [path.name for path in _visible(folder)]
        raise ValueError(
            f"The class folder {str(folder)!r} has no images. Expected files "
            f"ending in {', '.join(IMAGE_EXTENSIONS)}; found {len(others)} other "
            f"entries {others[:_SHOWN_PATHS]}. Add images or remove the folder."
        )
    readable = [str(path) for path in files if _is_readable(path)]
    if not readable:
        raise ValueError(
            f"None of the {len(files)} images in the class folder {str(folder)!r} "
            "can be read by Pillow. Replace them or remove the folder."
        )
    broken = sorted(set(map(str, files)) - set(readable))
    return readable, broken


def _is_readable(path):
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception:
        return False
    return True


def _warn_unreadable(paths, when):
    if paths:
        warnings.warn(
            f"Skipped {len(paths)} unreadable image(s) {when}: "
            f"{paths[:_SHOWN_PATHS]}{' ...' if len(paths) > _SHOWN_PATHS else ''}. "
            "Replace or delete those files to silence this warning.",
            stacklevel=3,
        )


def _visible(folder):
    return sorted(path for path in folder.iterdir() if not path.name.startswith("."))


def _subfolders(folder):
    return [path for path in _visible(folder) if path.is_dir()]


def _image_files(folder):
    return [
        path
        for path in _visible(folder)
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    ]


# === Splitting ===


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


# === Batches ===


class ImageFolder(keras.utils.PyDataset):
    """Batches of images read from files, with their class labels.

    A `keras.utils.PyDataset`, so it works with `fit`, `evaluate` and
    `predict` on every backend. Each batch is `(images, labels)`: float32
    images in [0, 255] of shape `(batch, height, width, channels)` (3 channels
    for "rgb", 1 for "grayscale"), resized to `image_size` whatever their size
    on disk, and int32 global class indices.

    Images are decoded from disk as batches are requested. With `cache`, each
    decoded image (uint8, already resized) is kept in memory after its first
    use; by default that happens when the whole set fits in `CACHE_BYTES`
    (256 MiB: about 21,000 images at 64x64 RGB, 1,700 at 224x224).

    A file that fails to decode (e.g. a truncated JPEG that passed the scan)
    never stops training: it is reported once with a warning, remembered, and
    replaced in its batch by the next readable sample and that sample's label.

    Args:
        paths: list of image file paths.
        labels: 1D array of global class indices, one per path.
        hierarchy: `Hierarchy` (or dict) the labels index into.
        image_size: int or `(height, width)`. Size the images are resized to.
            Defaults to `(64, 64)`.
        batch_size: int. Defaults to 32.
        color_mode: `"rgb"` or `"grayscale"`. Defaults to `"rgb"`.
        shuffle: bool. Whether to reshuffle the samples at the end of every
            epoch (and once at the start). Defaults to `False`.
        seed: int. Seed of the shuffles. Defaults to `None`.
        cache: bool. Whether to keep decoded images in memory. Defaults to
            `None`: cache when the decoded set fits in `CACHE_BYTES`.
        **pydataset_kwargs: `workers`, `use_multiprocessing` and
            `max_queue_size`, passed to `keras.utils.PyDataset`.

    Example:

    ```python
    hierarchy, paths, labels = scan_directory("shapes/train")
    data = ImageFolder(paths, labels, hierarchy, image_size=48, shuffle=True)
    model.fit(data, epochs=5)
    ```
    """

    def __init__(
        self,
        paths,
        labels,
        hierarchy,
        image_size=(64, 64),
        batch_size=32,
        color_mode="rgb",
        shuffle=False,
        seed=None,
        cache=None,
        **pydataset_kwargs,
    ):
        self.hierarchy = _as_hierarchy(hierarchy)
        self.paths = [str(path) for path in paths]
        self.labels = self.hierarchy.check_labels(labels).astype("int32")
        _check_lengths(self.paths, self.labels)
        self.image_size = _check_image_size(image_size)
        self.batch_size = _check_batch_size(batch_size)
        self.color_mode = _check_color_mode(color_mode)
        super().__init__(**pydataset_kwargs)
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.cache = self._fits_in_cache() if cache is None else bool(cache)
        self._decoded = {}
        self._unreadable = set()
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(self.num_samples)
        if self.shuffle:
            self._order = self._rng.permutation(self.num_samples)

    @property
    def num_samples(self):
        return len(self.paths)

    @property
    def channels(self):
        return 3 if self.color_mode == "rgb" else 1

    def __len__(self):
        return math.ceil(self.num_samples / self.batch_size)

    def __getitem__(self, index):
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        rows, images = zip(*[self._readable(row) for row in rows])
        return np.stack(images).astype("float32"), self.labels[list(rows)]

    def on_epoch_end(self):
        if self.shuffle:
            self._order = self._rng.permutation(self.num_samples)

    def subset(self, indices):
        """A new ImageFolder on some rows (integer indices or a boolean mask).

        It keeps every option of this one and shares its cache of decoded
        images. Use it for a validation split or to train one expert on the
        samples of its own group.
        """
        rows = _check_indices(indices, self.num_samples)
        subset = ImageFolder(
            [self.paths[row] for row in rows],
            self.labels[rows],
            self.hierarchy,
            image_size=self.image_size,
            batch_size=self.batch_size,
            color_mode=self.color_mode,
            shuffle=self.shuffle,
            seed=self.seed,
            cache=self.cache,
            workers=self.workers,
            use_multiprocessing=self.use_multiprocessing,
            max_queue_size=self.max_queue_size,
        )
        subset._decoded, subset._unreadable = self._decoded, self._unreadable
        return subset

    def numpy(self):
        """All images and labels as arrays, in `paths` order (small sets only).

        Files that fail to decode are left out, with their labels.
        """
        images = [self._image(row) for row in range(self.num_samples)]
        kept = [row for row, image in enumerate(images) if image is not None]
        empty = np.zeros((0, *self.image_size, self.channels))
        stacked = np.stack([images[row] for row in kept]) if kept else empty
        return stacked.astype("float32"), self.labels[kept]

    def __repr__(self):
        return (
            f"ImageFolder(num_samples={self.num_samples}, num_classes="
            f"{self.hierarchy.num_classes}, image_size={self.image_size}, "
            f"batch_size={self.batch_size}, color_mode={self.color_mode!r})"
        )

    # === Decoding ===

    def _readable(self, row):
        for step in range(self.num_samples):
            candidate = (row + step) % self.num_samples
            image = self._image(candidate)
            if image is not None:
                return candidate, image
        raise ValueError(
            f"None of the {self.num_samples} images of this ImageFolder can be "
            f"decoded, e.g. {self.paths[row]!r}. Check the files."
        )

    def _image(self, row):
        path = self.paths[row]
        if path in self._decoded:
            return self._decoded[path]
        if path in self._unreadable:
            return None
        try:
            image = _decode(path, self.image_size, self.color_mode)
        except Exception as error:
            self._unreadable.add(path)
            warnings.warn(
                f"Skipped an image that fails to decode: {path!r} ({error}). "
                "Batches use the next readable sample instead; replace or delete "
                "the file to silence this warning.",
                stacklevel=2,
            )
            return None
        if self.cache:
            self._decoded[path] = image
        return image

    def _fits_in_cache(self):
        height, width = self.image_size
        return self.num_samples * height * width * self.channels <= CACHE_BYTES


def _decode(path, image_size, color_mode):
    height, width = image_size
    mode = "RGB" if color_mode == "rgb" else "L"
    with Image.open(path) as image:
        image.draft(mode, (width, height))
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        image = image.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype="uint8")
    return array[..., None] if mode == "L" else array


# === Loading ===


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
        **pydataset_kwargs: `workers`, `use_multiprocessing` and
            `max_queue_size`, passed to both `ImageFolder`s.

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
        image_size=_check_image_size(image_size),
        batch_size=_check_batch_size(batch_size),
        color_mode=_check_color_mode(color_mode),
        **pydataset_kwargs,
    )
    _check_validation_split(validation_split)
    hierarchy, paths, labels = scan_directory(root, hierarchy)
    train_rows, validation_rows = split_indices(labels, validation_split, seed)
    train = ImageFolder(
        [paths[row] for row in train_rows],
        labels[train_rows],
        hierarchy,
        shuffle=shuffle,
        seed=seed,
        **options,
    )
    if not validation_split:
        return train, None
    if not len(validation_rows):
        raise ValueError(
            f"`validation_split={validation_split}` holds out no sample: every class "
            f"in {str(root)!r} has fewer than 2 images. Add images or pass "
            "validation_split=0."
        )
    validation = ImageFolder(
        [paths[row] for row in validation_rows],
        labels[validation_rows],
        hierarchy,
        **options,
    )
    return train, validation


# === Checks ===


def _check_image_size(image_size):
    size = (image_size, image_size) if _is_int(image_size) else image_size
    if not (
        isinstance(size, tuple | list)
        and len(size) == 2
        and all(_is_int(side) and side > 0 for side in size)
    ):
        raise ValueError(
            "`image_size` must be a positive int or a (height, width) pair of "
            f"positive ints, e.g. 64 or (64, 96). Received: image_size={image_size!r}"
        )
    return int(size[0]), int(size[1])


def _check_batch_size(batch_size):
    if not (_is_int(batch_size) and batch_size > 0):
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


def _is_int(value):
    return isinstance(value, int | np.integer) and not isinstance(value, bool)

"""Hierarchy discovery: group the classes a flat classifier confuses with each other."""

from pathlib import Path

import keras
import numpy as np

from condnet.data.scan import scan_directory
from condnet.data.splits import split_folders, split_indices
from condnet.evaluation.metrics import confusion_matrix
from condnet.hierarchy import Hierarchy
from condnet.vision.backbones import small_cnn

_CONNECT = 1e-6  # a faint link between all classes keeps the graph connected


def discover_hierarchy(confusion, class_names, num_groups=2, seed=0):
    """Group classes by how often a classifier mistakes one for another.

    The HD-CNN recipe (Yan et al., 2015): each row of the confusion matrix is
    normalised to rates (row = true class), the diagonal is removed, the
    matrix is symmetrised, `(A + A.T) / 2`, and the result is the affinity of
    a spectral clustering into `num_groups` clusters. Classes that are often
    confused land in the same group, so each expert resolves the hard
    confusions while the gate separates what is already easy to tell apart.

    Groups are named `"group_1"`, `"group_2"`, ... in the order of their
    first class in `class_names`; within a group, classes keep that order.

    Args:
        confusion: square array of shape `(num_classes, num_classes)`:
            counts (or rates) with row = true class, column = predicted class.
        class_names: list of str. Names of the rows, in order.
        num_groups: int. Number of groups, in `[2, num_classes - 1]`.
            Defaults to 2.
        seed: int. Seed of the clustering. Defaults to 0.

    Returns:
        A `Hierarchy` with `num_groups` non-empty groups.

    Example:

    ```python
    hierarchy = discover_hierarchy(metrics["class_confusion"], classes, num_groups=2)
    hierarchy.save("hierarchy.json")
    ```
    """
    confusion = _check_confusion(confusion, class_names)
    check_num_groups(num_groups, len(class_names))
    SpectralClustering = _spectral_clustering()
    clusters = SpectralClustering(
        n_clusters=num_groups, affinity="precomputed", random_state=seed
    ).fit_predict(confusion_affinity(confusion))
    return _hierarchy_of(clusters, list(class_names), num_groups)


def confusion_affinity(confusion):
    """The symmetric affinity of a confusion matrix: row rates, no diagonal."""
    confusion = np.asarray(confusion, dtype="float64")
    totals = confusion.sum(axis=1, keepdims=True)
    rates = np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)
    np.fill_diagonal(rates, 0.0)
    affinity = (rates + rates.T) / 2 + _CONNECT
    np.fill_diagonal(affinity, 0.0)
    return affinity


def discover_from_folder(
    data_dir,
    num_groups=2,
    image_size=32,
    epochs=3,
    validation_split=0.2,
    seed=1337,
    batch_size=32,
    filters=(32, 64, 128, 256),
    learning_rate=1e-3,
    color_mode="rgb",
    **fit_kwargs,
):
    """Train a quick flat classifier on a flat folder and discover its hierarchy.

    The classes are the folders of `root/<class>/*` (sorted by name, hidden
    ones skipped). The images are read by `scan_directory` with a two-group
    placeholder hierarchy, so exactly the files a training run would read
    are used. A `small_cnn` with a softmax head trains on the training split
    (`split_indices` with `validation_split` and `seed`); its confusion
    matrix on the validation split feeds `discover_hierarchy`.

    Args:
        data_dir: str or `Path`. A flat folder, `root/<class>/*`, with at
            least 3 classes.
        num_groups: int. Number of groups to discover, in
            `[2, num_classes - 1]`. Defaults to 2.
        image_size: int. Side the images are resized to. Defaults to 32.
        epochs: int. Epochs of the flat classifier. Defaults to 3.
        validation_split: float in (0, 1). Share of each class whose
            confusions are measured. Defaults to 0.2.
        seed: int. Seed of the split, the weights and the clustering.
            Defaults to 1337.
        batch_size: int. Defaults to 32.
        filters: tuple of ints. Blocks of the `small_cnn`. Defaults to
            `(32, 64, 128, 256)`.
        learning_rate: float. Adam learning rate. Defaults to 1e-3.
        color_mode: `"rgb"` or `"grayscale"`. Defaults to `"rgb"`.
        **fit_kwargs: passed to `model.fit` (e.g. `verbose=0`).

    Returns:
        A tuple `(hierarchy, confusion)`: the discovered `Hierarchy` and the
        validation confusion matrix (int array, rows and columns in the
        sorted order of the class folders).

    Example:

    ```python
    hierarchy, confusion = discover_from_folder("flowers", num_groups=3)
    hierarchy.save("hierarchy.json")  # edit it if you like, then train with it
    ```
    """
    check_num_groups(num_groups)
    if not 0 < validation_split < 1:
        raise ValueError(
            "Discovery measures confusions on held-out images, so validation_split "
            f"must be in (0, 1). Received: validation_split={validation_split!r}"
        )
    check_discovery_installed()  # fail on a missing extra before training
    names = flat_class_names(data_dir)
    check_num_groups(num_groups, len(names))
    placeholder = Hierarchy({"discovery_1": names[:1], "discovery_2": names[1:]})
    _, paths, labels = scan_directory(data_dir, placeholder)
    rows = split_indices(labels, validation_split, seed)
    if not len(rows[1]):
        raise ValueError(
            f"No class of {str(data_dir)!r} has 2 images or more, so none can be held "
            "out to measure confusions. Add images."
        )
    train, validation = split_folders(
        placeholder,
        paths,
        labels,
        rows,
        seed=seed,
        image_size=image_size,
        batch_size=batch_size,
        color_mode=color_mode,
    )
    model = flat_classifier(len(names), image_size, train.channels, filters, seed)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(train, epochs=epochs, **fit_kwargs)
    predictions = model.predict(validation, verbose=0).argmax(-1)
    confusion = confusion_matrix(validation.labels, predictions, len(names))
    return discover_hierarchy(confusion, names, num_groups, seed=seed), confusion


def flat_classifier(num_classes, image_size, channels=3, filters=(32, 64, 128, 256), seed=0):
    """A `small_cnn` with a softmax over every class: the model discovery trains."""
    keras.utils.set_random_seed(seed)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    base = small_cnn((*size, channels), filters=tuple(filters))
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(base.inputs, outputs, name="flat_classifier")


def flat_class_names(data_dir):
    """The class folder names of a flat folder `root/<class>/*`, sorted."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(
            "Discovery needs a flat image folder, root/<class>/*. Received: "
            f"data_dir={str(data_dir)!r}, which is not a folder."
        )
    folders = _visible_folders(root)
    nested = [f.name for f in folders if _visible_folders(f)]
    if nested:
        raise ValueError(
            f"Discovery needs a flat folder root/<class>/*, but {nested[:5]} in "
            f"{str(data_dir)!r} hold folders, so it looks nested (root/<group>/<class>/*), "
            "which already gives the hierarchy: train without hierarchy='auto', or "
            "move the class folders up one level."
        )
    return [f.name for f in folders]


def _visible_folders(folder):
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_num_groups(num_groups, num_classes=None):
    """Raise unless `num_groups` is an int in [2, num_classes - 1]."""
    if not isinstance(num_groups, int | np.integer) or isinstance(num_groups, bool):
        raise TypeError(
            f"num_groups must be an int. Received: num_groups={num_groups!r} "
            f"of type {type(num_groups).__name__}"
        )
    high = "num_classes - 1" if num_classes is None else num_classes - 1
    if num_groups < 2 or (num_classes is not None and num_groups > num_classes - 1):
        raise ValueError(
            f"num_groups must be between 2 and {high} (a gate needs 2 groups to choose "
            "between, and with one group per class there is nothing left for the experts)"
            + (f"; the folder has {num_classes} classes" if num_classes is not None else "")
            + f". Received: num_groups={num_groups}"
        )


# === Helpers ===


def _check_confusion(confusion, class_names):
    confusion = np.asarray(confusion, dtype="float64")
    n = len(class_names)
    if confusion.shape != (n, n):
        raise ValueError(
            f"confusion must be a square matrix with one row and column per class: "
            f"({n}, {n}) for the {n} class names given. Received: confusion with "
            f"shape {confusion.shape}"
        )
    if not np.all(np.isfinite(confusion)) or confusion.min() < 0:
        raise ValueError(
            "confusion must hold counts or rates >= 0 (row = true class, column = "
            f"predicted). Received: values in [{confusion.min()}, {confusion.max()}]"
        )
    return confusion


def _hierarchy_of(clusters, class_names, num_groups):
    found = list(dict.fromkeys(clusters))  # clusters in the order of their first class
    if len(found) < num_groups:
        raise ValueError(
            f"The confusions separate only {len(found)} group(s), not {num_groups}: "
            "ask for fewer groups, or measure confusions on more images."
        )
    return Hierarchy(
        {
            f"group_{index}": [name for name, c in zip(class_names, clusters) if c == cluster]
            for index, cluster in enumerate(found, start=1)
        }
    )


def check_discovery_installed():
    """Refuse discovery early (before a run writes anything) when its extra is missing."""
    _spectral_clustering()


def _spectral_clustering():
    try:
        from sklearn.cluster import SpectralClustering
    except ImportError:
        raise ImportError(
            "Hierarchy discovery (hierarchy='auto', `--hierarchy auto`) clusters the classes "
            'with scikit-learn, which is not installed: `pip install "condnet[discovery]"`, '
            "or pass a hierarchy file (--hierarchy FILE) or a nested folder "
            "DATA_DIR/<group>/<class>/*. Received: hierarchy='auto'"
        ) from None
    return SpectralClustering

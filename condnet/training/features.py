"""Features computed once: a frozen trunk's outputs cached per image, for heads that train on them.

While a pretrained backbone is frozen and nothing augments the images, its
outputs never change from epoch to epoch. `frozen_features` runs the trunk
once over an `ImageFolder` and keeps `{tap: array}` with the labels, in memory
beside the folder's decoded images; a `ConditionalModel` given such a dict
skips its trunk (`tap_features`), and a flat model's head trains on it alone.
An epoch then costs the heads only.
"""

import hashlib

import keras
import numpy as np

# Features kept in memory at most (all taps, training and validation images together).
MEMORY_LIMIT_BYTES = 1 << 30
_BATCH = 128  # images the trunk runs on at a time


def trunk_is_frozen(trunk):
    """Whether `trunk` (a functional model, or None) has no trainable weight now."""
    return trunk is not None and not trunk.trainable_weights


def features_fit(trunk, folders, augmented=False):
    """Whether training may read `frozen_features` of `folders` instead of running `trunk`.

    True when the trunk is frozen, nothing augments the images (`augmented`
    False: augmentation changes the trunk's output every epoch) and the
    features of every folder fit in `MEMORY_LIMIT_BYTES`.
    """
    if augmented or not trunk_is_frozen(trunk):
        return False
    rows = sum(folder.num_samples for folder in folders if folder is not None)
    return rows * _bytes_per_image(trunk) <= MEMORY_LIMIT_BYTES


def _bytes_per_image(trunk):
    outputs = trunk.output if isinstance(trunk.output, dict) else {"": trunk.output}
    return sum(4 * int(np.prod(tensor.shape[1:])) for tensor in outputs.values())


def frozen_features(trunk, folder):
    """`(features, labels)` of every image of `folder`, the trunk run once per image.

    The result is kept on the folder (keyed by a fingerprint of the trunk's
    weights), so a second call with the same weights, e.g. the flat
    baseline's copy of the trunk, runs nothing. Images that fail to decode
    are substituted as the folder substitutes them in training (left out
    when the folder does not substitute).

    Args:
        trunk: functional `keras.Model` from images to a tensor or a dict of
            tensors (a `ConditionalModel`'s `trunk`).
        folder: `ImageFolder`.

    Returns:
        `features` (a dict `{tap: array}`, or an array for a single output)
        and int32 `labels`, one row per image.
    """
    kept = folder.__dict__.setdefault("_frozen_features", {})
    key = weights_fingerprint(trunk)
    if key not in kept:
        kept[key] = _run_once(trunk, folder)
    return kept[key]


def weights_fingerprint(model):
    """A digest of `model`'s weights (and their names): equal weights, equal digest."""
    digest = hashlib.sha1()
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def augmentation_probe(trunk, train, validation, augmentation):
    """What an augmentation changes in what a frozen trunk's features say.

    A nearest-class-mean classifier (cosine similarity to each class's mean
    training feature) scores the validation images as they are and as
    `augmentation` transforms them (in training mode). Features that already
    tell the classes apart as well under the transformation leave the heads
    nothing to learn from augmented images; a clear drop says they would.
    The features as they are are `frozen_features`, kept for the training;
    only the transformed validation images run the trunk again.

    Returns:
        dict: `"images"` (validation images scored), `"clean"` and
        `"augmented"` (their accuracies), and `"drop_error"`: the standard
        error of `clean - augmented`, paired image by image (each image is
        scored both ways, so only the images whose answer changed count).
    """
    x, y = frozen_features(trunk, train)
    clean_x, clean_y = frozen_features(trunk, validation)
    shifted_x, shifted_y = _run_once(trunk, validation, transform=augmentation)
    if not np.array_equal(clean_y, shifted_y):
        raise ValueError("the validation folder changed order between two passes")
    means = _class_means(_single(x), y, train.hierarchy.num_classes)

    def right(features):
        return ((_unit(_single(features)) @ means.T).argmax(axis=1) == clean_y).astype("float64")

    clean, shifted = right(clean_x), right(shifted_x)
    return {
        "images": len(clean_y),
        "clean": float(clean.mean()),
        "augmented": float(shifted.mean()),
        "drop_error": _standard_error(clean - shifted),
    }


def _standard_error(values):
    if len(values) < 2:
        return float("inf")
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


def _single(features):
    return next(iter(features.values())) if isinstance(features, dict) else features


def _unit(rows):
    rows = rows.reshape(len(rows), -1)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _class_means(features, labels, num_classes):
    rows = _unit(features)
    means = np.zeros((num_classes, rows.shape[1]), "float32")
    for label in np.unique(labels):
        means[label] = rows[labels == label].mean(axis=0)
    return _unit(means)


def _run_once(trunk, folder, transform=None):
    """The trunk on every batch of `folder` in its current order, with the labels; the
    images go through `transform` (a Keras layer, in training mode) first if given."""
    parts, labels = [], []
    for index in range(len(folder)):
        batch = folder[index]
        images, batch_labels = batch[0], batch[1]
        if len(batch) == 3:  # without substitution: the rows that failed to decode weigh 0
            images, batch_labels = images[batch[2] > 0], batch_labels[batch[2] > 0]
        if transform is not None:
            images = np.asarray(images, "float32")
            images = keras.ops.convert_to_numpy(transform(images, training=True))
        for start in range(0, len(images), _BATCH):
            parts.append(trunk.predict_on_batch(images[start : start + _BATCH]))
        labels.append(np.asarray(batch_labels))
    features = keras.tree.map_structure(
        lambda *arrays: np.concatenate([np.asarray(a, "float32") for a in arrays]), *parts
    )
    return features, np.concatenate(labels).astype("int32")

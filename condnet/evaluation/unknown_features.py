"""Unknown-class scores from what a model computes before its softmax: energy, gated energy
and Mahalanobis.

The maximum softmax of `condnet.evaluation.unknown` reads only the
probabilities. A finished model also holds what produced them: the features
each expert's last Dense reads (its penultimate features) and that Dense's
weights. Three scores come from them, per expert, for the image it is routed to
(high: a class the expert knows, as for every score here):

- `energy`: the log-sum-exp of the expert's logits (features @ kernel +
  bias), whose softmax is the expert's output (Liu et al., 2020).
- `gated_energy`: `energy` plus the log of the gate's probability of the
  expert's group: the log-sum-exp of the path's joint logits, log p(group) +
  the expert's logit of each class. It is low when the expert recognises none
  of its classes or when the gate hesitates between groups, as it does on an
  image of a class it never saw (in a side trial on CIFAR-10 with outlier
  exposure, the gate's own confidence told left-out classes apart better than
  any expert score; benchmarks/results/unknown.md).
  A flat model has no gate: its `gated_energy` is its `energy`.
- `mahalanobis`: minus the smallest Mahalanobis distance from the image's
  features to the mean features of one of the expert's classes, with one
  covariance shared by its classes (Lee et al., 2018), both fitted on the
  training images of the expert's group as the expert sees them. A flat model
  has one "expert" over every class.

A conditional model has what a flat one lacks: one feature space per group,
fitted on that group alone, so that a distance is measured among the few
classes an image's group could be. The statistics are plain arrays (kept by a
run beside unknown.json), never part of `model.keras`.
"""

import keras
import numpy as np
from keras import layers

SHRINKAGE = 1e-3  # share of the mean variance added to the covariance's diagonal


# === Penultimate features ===


def feature_readers(model):
    """How to read each expert's penultimate features and logits.

    Args:
        model: a `ConditionalModel` whose experts are functional Keras models
            ending in a Dense layer (the experts `condnet train` builds), or a
            run's `FlatBaseline` / a functional classifier ending in a Dense.

    Returns:
        A dict `name -> (tap, features model, kernel, bias)`: one per group
        with an expert for a conditional model (`tap`: the trunk output it
        reads), one named `"flat"` (tap None) for a flat model.
    """
    experts = getattr(model, "experts", None)
    if experts is None:
        classifier = getattr(model, "classifier", model)
        return {"flat": (None, *_penultimate(classifier))}
    readers = {}
    for group, expert in experts.items():
        if expert is None:
            continue
        if not getattr(expert, "outputs", None) or hasattr(expert, "hierarchy"):
            raise ValueError(
                "Feature scores read each expert's last Dense layer, so every expert must be "
                f"a functional Keras model; the expert of {group!r} is a "
                f"{type(expert).__name__} (a nested hierarchy's experts are not supported). "
                f"Use score='softmax'. Received: expert={expert.name}"
            )
        readers[group] = (model.expert_taps[group], *_penultimate(expert))
    return readers


def _penultimate(model):
    """(A model from `model`'s input to what its last Dense reads, that Dense's kernel and
    bias as float64 arrays); nested functional models are followed."""
    dense, tensor, scale = _last_dense(model, model.outputs[0])
    kernel = keras.ops.convert_to_numpy(dense.kernel).astype("float64") * scale
    bias = (
        keras.ops.convert_to_numpy(dense.bias).astype("float64") * scale
        if dense.use_bias
        else np.zeros(kernel.shape[1])
    )
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, tensor), kernel, bias


def _last_dense(model, output):
    """`(Dense, what it reads, scale)`: the logits are that Dense's output times `scale`,
    1 / T behind a calibrated part's `TemperatureScaling` (softmax(log(softmax(z)) / T)
    is softmax(z / T))."""
    from condnet.evaluation.calibration import TemperatureScaling

    layer, node_index, _ = output._keras_history
    inputs = layer._inbound_nodes[node_index].input_tensors
    if isinstance(layer, layers.Dense):
        return layer, inputs[0], 1.0
    if isinstance(layer, TemperatureScaling):
        dense, tensor, scale = _last_dense(model, inputs[0])
        return dense, tensor, scale / layer.temperature
    if isinstance(layer, keras.Model) and getattr(layer, "outputs", None):
        dense, inner, scale = _last_dense(layer, layer.outputs[0])
        nested = layer.inputs[0] if len(layer.inputs) == 1 else layer.inputs
        return dense, keras.Model(nested, inner)(inputs[0]), scale
    raise ValueError(
        "Feature scores need a model whose output is a Dense layer's (a softmax Dense, "
        f"the heads condnet builds); {model.name}'s output comes from a "
        f"{type(layer).__name__}. Use score='softmax'. Received: layer={layer.name}"
    )


def read_features(model, readers, images):
    """Every reader's penultimate features of `images`: dict `name -> (num_images, dim)`."""
    taps = model.tap_features(images) if hasattr(model, "tap_features") else {None: images}
    return {
        # training=False: a flat baseline's trunk holds its augmentation layers, which
        # Keras runs unless told it is not training.
        name: keras.ops.convert_to_numpy(features(taps[tap], training=False)).astype("float64")
        for name, (tap, features, _, _) in readers.items()
    }


# === Fitting ===


def fit_statistics(hierarchy, readers, features, labels):
    """Per reader: the mean features of each of its classes and the inverse of their
    shared covariance, fitted on known-class images (the training split).

    Args:
        hierarchy: `Hierarchy`.
        readers: the dict of `feature_readers`.
        features: the dict of `read_features` over the fitting images.
        labels: int array, each image's class index.

    Returns:
        A dict of arrays, `"<name>/means"` `(classes, dim)` and `"<name>/precision"`
        `(dim, dim)` per reader: what a run stores beside unknown.json.
    """
    labels = np.asarray(labels)
    statistics = {}
    for name in readers:
        classes = _reader_classes(hierarchy, name)
        rows = np.isin(labels, classes)
        if not rows.any():
            continue  # no training image of this expert's group: it flags nothing
        means, precision = _class_gaussians(features[name][rows], labels[rows], classes)
        statistics[f"{name}/means"], statistics[f"{name}/precision"] = means, precision
    return statistics


def _reader_classes(hierarchy, name):
    if name == "flat":
        return np.arange(hierarchy.num_classes)
    return np.array([hierarchy.class_index(c) for c in hierarchy.classes_of(name)])


def _class_gaussians(features, labels, classes):
    """Class means (a class with no image gets the mean of all) and the inverse of the
    pooled within-class covariance, shrunk towards its mean variance."""
    overall = features.mean(0)
    means = np.stack(
        [features[labels == c].mean(0) if (labels == c).any() else overall for c in classes]
    )
    centred = features - means[np.searchsorted(classes, labels)]
    covariance = centred.T @ centred / max(1, len(features) - 1)
    ridge = SHRINKAGE * max(np.trace(covariance) / len(covariance), 1e-12)
    return means, np.linalg.pinv(covariance + ridge * np.eye(len(covariance)), hermitian=True)


# === Scores ===


def feature_scores(hierarchy, readers, features, route, statistics, score, groups=None):
    """The `score` of each image in the expert it is routed to (high: a known class).

    Args:
        hierarchy: `Hierarchy`.
        readers: the dict of `feature_readers`.
        features: the dict of `read_features`.
        route: int array, the group index each image is scored in (-1: none), as
            in `unknown_scores`; a flat model scores every image in its one reader.
        statistics: the dict of `fit_statistics` (used by "mahalanobis").
        score: `"energy"`, `"gated_energy"`, `"max_logit"` or `"mahalanobis"`.
        groups: the gate's group probabilities `(num_images, num_groups)` (a
            conditional model's `groups` output), which "gated_energy" needs for a
            conditional model. Defaults to None; a flat model's "gated_energy" is
            its energy.

    Returns:
        A float array; NaN where an image has no route or its expert no statistics.
    """
    route = np.asarray(route)
    result = np.full(len(route), np.nan)
    if "flat" in readers:
        parts = [("flat", np.ones(len(route), bool))]
    else:
        parts = [(g, route == i) for i, g in enumerate(hierarchy.groups) if g in readers]
    for name, rows in parts:
        if rows.any():
            result[rows] = _score(readers[name], features[name][rows], statistics, name, score)
    if score == "gated_energy" and "flat" not in readers:
        if groups is None:
            raise ValueError(
                "The gated_energy score of a conditional model adds the log of the gate's "
                "probability of each image's group: pass the model's `groups` output. "
                "Received: groups=None"
            )
        result += _log_gate(np.asarray(groups, "float64"), route)
    return result


def _log_gate(groups, route):
    """The log of the gate's probability of each image's routed group (NaN with no route)."""
    chosen = np.full(len(route), np.nan)
    routed = route >= 0
    chosen[routed] = groups[np.flatnonzero(routed), route[routed]]
    # A probability the float32 softmax rounded to 0 counts as the smallest it can hold,
    # so that every score stays finite (JSON has no -inf).
    return np.log(np.maximum(chosen, np.finfo("float32").tiny))


def _score(reader, features, statistics, name, score):
    _, _, kernel, bias = reader
    if score == "mahalanobis":
        if f"{name}/means" not in statistics:
            return np.nan
        means, precision = statistics[f"{name}/means"], statistics[f"{name}/precision"]
        return -_squared_distances(features, means, precision).min(-1)
    logits = features @ kernel + bias
    if score == "max_logit":
        return logits.max(-1)
    top = logits.max(-1, keepdims=True)
    return (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[:, 0]


def _squared_distances(features, means, precision):
    """(num_images, num_classes) squared Mahalanobis distances."""
    projected = features @ precision
    own = np.einsum("nd,nd->n", projected, features)[:, None]
    cross = projected @ means.T
    centre = np.einsum("cd,dk,ck->c", means, precision, means)[None, :]
    return own - 2 * cross + centre

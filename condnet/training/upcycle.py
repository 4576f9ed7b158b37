"""Sparse upcycling: every expert starts as a copy of a flat model trained on all the data.

Each expert of a conditional model learns from its own group's images only,
so with little data every expert sees a fraction of it ("data fragmentation",
Gross et al., CVPR 2017). Sparse upcycling (Komatsuzaki et al., arXiv
2212.05055; HD-CNN initialises its fine classifiers the same way) trains a
flat model first and copies it into the conditional one: the trunk takes the
flat model's trunk, every expert its head, and the last Dense of each expert
the flat classifier's columns of that expert's classes. An upcycled expert
therefore starts out answering exactly as the flat model does within its
group; the gate starts fresh.

`upcycle_source` builds that flat model (the model's own trunk, then a copy
of its experts' head over every class, as wide as an expert) and `upcycle`
copies it in. `condnet train --upcycle-epochs N` trains the source for N
epochs before the conditional model's own.
"""

import numpy as np
from keras import layers

from condnet.models.conditional_model import ConditionalModel
from condnet.models.flat import flat_twin, functional_experts, output_layer


def upcycle_source(model, input_shape, name="upcycle_source"):
    """The flat model whose weights `upcycle` copies into `model`.

    Args:
        model: `ConditionalModel` whose functional experts share one layout
            (as `build_image_model` builds them) and one trunk tap.
        input_shape: shape of one input, e.g. `(32, 32, 3)`.
        name: str. Name of the returned model.

    Returns:
        A functional `keras.Model` from the input to probabilities over every
        class: a copy of `model`'s trunk (same weights) and a fresh copy of its
        experts' head, as wide as they are, ending in a Dense over all classes.

    Example:

    ```python
    source = upcycle_source(model, (32, 32, 3))
    source.compile("adam", "sparse_categorical_crossentropy")
    source.fit(images, labels, epochs=5)
    upcycle(model, source)
    ```
    """
    if not isinstance(model, ConditionalModel):
        raise TypeError(
            "upcycle_source builds the flat model of a condnet.ConditionalModel. "
            f"Received: {type(model).__name__}"
        )
    input_shape = tuple(input_shape)
    found = functional_experts(model, model.tap_shapes((None, *input_shape)))
    if not found:
        raise ValueError(
            "Upcycling copies a flat head into the experts, so the model needs at least one "
            "expert that is a functional Keras model. Received: experts "
            f"{ {g: type(e).__name__ for g, e in model.experts.items()} }"
        )
    _, tap, _, template, _ = max(found, key=lambda item: item[3].count_params())
    if not isinstance(output_layer(template), layers.Dense):
        raise ValueError(
            "Upcycling copies a flat classifier's columns into each expert's last Dense "
            f"layer; expert {template.name!r} ends in {type(output_layer(template)).__name__}. "
            "Use an expert placement whose experts end in a Dense (branch, taps or top)."
        )
    for _, own_tap, group, expert, _ in found:
        if own_tap != tap:
            raise ValueError(
                "Upcycling copies one flat head into every expert, so the experts must read "
                f"the same trunk output. Received: expert {group!r} reads {own_tap!r}, "
                f"expert {template.name!r} reads {tap!r}"
            )
        _check_layout(template, expert, group)
    return flat_twin(model, input_shape, tap, template, 1.0, name)


def upcycle(model, source):
    """Copy a trained `upcycle_source` into `model`: its trunk, and its head into every
    functional expert (the last Dense restricted to that expert's classes).

    The gate and the gates of nested conditional experts keep their weights.
    Returns `model`.
    """
    head = source.layers[-1]
    if model.trunk is not None:
        model.trunk.set_weights(source.get_layer(model.trunk.name).get_weights())
    classes = model.hierarchy.classes
    taps = model.tap_shapes((None, *source.input_shape[1:]))
    for _, _, _, expert, names in functional_experts(model, taps):
        _check_layout(head, expert, expert.name)
        columns = np.asarray([classes.index(name) for name in names])
        for mine, theirs in zip(_weighted(expert), _weighted(head)):
            weights = theirs.get_weights()
            if theirs is output_layer(head):
                kernel, *bias = weights
                weights = [kernel[..., columns], *(b[columns] for b in bias)]
            mine.set_weights(weights)
    return model


def _weighted(model):
    return [layer for layer in model.layers if layer.weights]


def _layout(model):
    """(layer type, weight shapes) of each layer with weights; the last one's classes left out."""
    weighted = _weighted(model)
    shapes = [[tuple(w.shape) for w in layer.weights] for layer in weighted]
    if shapes:
        shapes[-1] = [shape[:-1] for shape in shapes[-1]]
    return [(type(layer).__name__, shape) for layer, shape in zip(weighted, shapes)]


def _check_layout(template, expert, group):
    """The same layers with weights, in the same order and shapes, but for the classes."""
    if _layout(expert) != _layout(template):
        raise ValueError(
            "Upcycling copies one flat head into every expert, so every expert must have the "
            "same layers (only the last Dense's classes may differ). Received: expert "
            f"{group!r} with {_layout(expert)}, the head with {_layout(template)}"
        )

"""The flat baseline of a conditional model: same trunk, one head over every class, same cost.

A conditional model is worth its routing only if it beats the flat classifier a
user would train instead at the same inference cost. `flat_baseline` builds
that classifier from the conditional model itself: a fresh copy of its trunk
(with the same initial weights, pretrained or not), then a copy of its
costliest expert head with every convolution widened (or narrowed) by one
factor and a softmax over all classes, the factor chosen so that the flat
model's multiply-accumulates per image match the conditional model's routed
cost (`condnet.evaluation.cost.routed_macs`: trunk + gate + the costliest route) as
closely as possible without exceeding it.
"""

from keras import layers

from condnet.evaluation.cost import count_macs, routed_macs
from condnet.models.conditional_model import ConditionalModel
from condnet.models.flat import flat_head, flat_twin, functional_experts, output_layer

_SEARCH_STEPS = 24


def flat_baseline(model, input_shape, name="flat_baseline"):
    """A flat classifier over all classes of `model`, at `model`'s routed cost.

    Args:
        model: `ConditionalModel` whose trunk is a functional model (as
            `build_image_model` builds) and whose experts include at least one
            functional Keras model.
        input_shape: shape of one input, e.g. `(32, 32, 3)`.
        name: str. Name of the returned model. Defaults to `"flat_baseline"`.

    Returns:
        A functional `keras.Model` from the input to `num_classes`
        probabilities. Its trunk starts from the same weights as `model`'s.

    Example:

    ```python
    model = build_image_model(hierarchy, image_size=32)
    baseline = flat_baseline(model, (32, 32, 3))
    baseline.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    ```
    """
    _check_model(model)
    input_shape = tuple(input_shape)
    costs = routed_macs(model, input_shape)
    tap, tap_shape, template = _costliest_expert(model, input_shape)
    factor = _widest_factor(model, (tap_shape, template), costs["trunk"], costs["routed"])
    return flat_twin(model, input_shape, tap, template, factor, name)


def _widest_factor(model, head, trunk, budget):
    """The widest head factor whose flat twin costs at most `budget` MACs (0.25 if even
    that costs more: the narrowest built), searched on the head alone: the twin's cost
    is the trunk's plus the head's, and building only the head keeps the search cheap."""
    tap_shape, template = head
    num_classes = model.hierarchy.num_classes

    def fits(factor):
        return trunk + count_macs(flat_head(template, factor, num_classes), tap_shape) <= budget

    low, high = 0.25, 4.0
    if not fits(low):
        return low
    for _ in range(_SEARCH_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def _costliest_expert(model, input_shape):
    taps = model.tap_shapes((None, *input_shape))
    candidates = [
        (count_macs(expert, shape), tap, shape, group, expert)
        for shape, tap, group, expert, _ in functional_experts(model, taps)
    ]
    if not candidates:
        raise ValueError(
            "flat_baseline copies one of the model's experts as its head, so it needs at least "
            "one expert that is a functional Keras model (not None; a nested "
            f"ConditionalModel lends its own experts). Received: experts "
            f"{_describe(model.experts)}"
        )
    _, tap, shape, group, expert = max(candidates, key=lambda item: item[0])
    if not isinstance(output_layer(expert), layers.Dense):
        raise ValueError(
            "flat_baseline widens an expert's last Dense layer to every class; the costliest "
            f"expert ({group!r}) ends in {type(output_layer(expert)).__name__}. Received: "
            f"expert={expert.name}"
        )
    return tap, shape, expert


def _describe(experts):
    return {g: type(e).__name__ if e is not None else None for g, e in experts.items()}


def _check_model(model):
    if not isinstance(model, ConditionalModel):
        raise TypeError(
            "flat_baseline builds the flat twin of a condnet.ConditionalModel. Received: "
            f"{type(model).__name__}"
        )

"""The flat twin of a conditional model: its trunk, then one expert's head over every class.

Two things are built from it: the flat baseline a run is compared with
(`condnet.evaluation.baseline`, the head widened or narrowed to the routed
cost) and the flat model whose weights the experts start from when a run is
upcycled (`condnet.training.upcycle`, the head exactly as wide as an expert).
"""

import keras
from keras import layers

from condnet.models.conditional_model import ConditionalModel


def functional_experts(model, taps, tap=None):
    """(input shape, top-level tap, group, expert, its class names in output order) of
    every functional expert, nested ones included (a nested ConditionalModel's experts
    read its own input)."""
    found = []
    for group, expert in model.experts.items():
        own_tap = model.expert_taps[group] if tap is None else tap
        if isinstance(expert, ConditionalModel):
            found += functional_experts(expert, taps, own_tap)
        elif expert is not None and getattr(expert, "inputs", None):
            classes = model.hierarchy.classes_of(group)
            found.append((taps[own_tap][1:], own_tap, group, expert, classes))
    return found


def flat_twin(model, input_shape, tap, template, factor, name):
    """A copy of `model`'s trunk (same weights) feeding a copy of the `template` expert
    (fresh weights) whose convolutions are `factor` times as wide and whose last
    Dense covers every class of `model`'s hierarchy."""
    inputs = keras.Input(input_shape, name="image")
    features = inputs
    if model.trunk is not None:
        trunk = keras.models.clone_model(model.trunk)
        trunk.set_weights(model.trunk.get_weights())
        features = trunk(inputs)[tap] if isinstance(trunk.output, dict) else trunk(inputs)
    head = flat_head(template, factor, model.hierarchy.num_classes)
    return keras.Model(inputs, head(features), name=name)


def flat_head(template, factor, num_classes):
    """A copy of the `template` expert (fresh weights), its convolutions `factor` times
    as wide and its last Dense over `num_classes`: the head of `flat_twin`, which the
    baseline's width search sizes alone (the trunk's cost does not depend on it)."""
    return keras.models.clone_model(
        template, clone_function=lambda layer: _resized(layer, factor, num_classes, template)
    )


def output_layer(template):
    """The last layer of an expert: the Dense that the flat twin widens to every class."""
    return template.layers[-1]


def _resized(layer, factor, num_classes, template):
    config = layer.get_config()
    if isinstance(layer, layers.Conv2D | layers.Conv1D | layers.Conv3D):
        config["filters"] = max(1, round(layer.filters * factor))
    elif isinstance(layer, layers.Dense) and layer is output_layer(template):
        config["units"] = num_classes
    config["name"] = f"{layer.name}_flat"
    return layer.__class__.from_config(config)

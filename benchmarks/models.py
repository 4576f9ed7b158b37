"""The models the benchmarks run: CIFAR-sized CNN experts, a small gate, a flat twin.

Imports Keras: import this module only after `common.choose_backend()` has
set `KERAS_BACKEND`.
"""

import time

import keras
import numpy as np

import condnet
from condnet.evaluation.cost import count_macs, routed_macs

IMAGE_SHAPE = (32, 32, 3)
EXPERT_FILTERS = (16, 32, 64, 64)
EXPERT_STRIDES = (1, 2, 2, 1)
GATE_FILTERS = (8, 16, 20)  # about 1/16 of an expert's MACs
GATE_STRIDES = (2, 2, 1)

# CIFAR-10 grouped into K groups (2: B-CNN's coarse level 1; 8: its level 2
# with deer and horse apart). Every group gets an expert, even a one-class one,
# so the K experts cost the same.
HIERARCHIES = {
    2: {
        "vehicles": ["airplane", "automobile", "ship", "truck"],
        "animals": ["bird", "cat", "deer", "dog", "frog", "horse"],
    },
    4: {
        "sky_and_sea": ["airplane", "ship"],
        "road": ["automobile", "truck"],
        "pets": ["cat", "dog"],
        "wild": ["bird", "deer", "frog", "horse"],
    },
    8: {
        "air": ["airplane"],
        "sea": ["ship"],
        "road": ["automobile", "truck"],
        "birds": ["bird"],
        "frogs": ["frog"],
        "pets": ["cat", "dog"],
        "antlered": ["deer"],
        "equine": ["horse"],
    },
}


# === Models ===


def cnn(filters, strides, num_classes, name, seed=0):
    """Rescaling, 3x3 ReLU convolutions, global average pooling, softmax."""
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for i, (width, stride) in enumerate(zip(filters, strides)):
        init = keras.initializers.HeNormal(seed + i)
        conv = keras.layers.Conv2D(
            width, 3, stride, "same", activation="relu", kernel_initializer=init
        )
        x = conv(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    init = keras.initializers.GlorotUniform(seed + len(filters))
    outputs = keras.layers.Dense(num_classes, "softmax", kernel_initializer=init)(x)
    return keras.Model(inputs, outputs, name=name)


def conditional_model(num_groups, seed=0, width=1, **kwargs):
    """A ConditionalModel of `num_groups` equal CNN experts and a small CNN gate.

    `width` multiplies the experts' filters (their MACs grow as its square).
    """
    hierarchy = condnet.Hierarchy(HIERARCHIES[num_groups])
    gate = cnn(GATE_FILTERS, GATE_STRIDES, num_groups, "gate", seed)
    experts = {
        group: cnn(
            tuple(width * f for f in EXPERT_FILTERS),
            EXPERT_STRIDES,
            len(hierarchy.classes_of(group)),
            group,
            seed + 100 * (i + 1),
        )
        for i, group in enumerate(hierarchy.groups)
    }
    return condnet.ConditionalModel(hierarchy, gate=gate, experts=experts, **kwargs)


def flat_model(target_macs, seed=0):
    """A plain CNN like one expert, widened until its MACs are closest to `target_macs`."""
    best = None
    for width in range(EXPERT_FILTERS[-1], 2 * EXPERT_FILTERS[-1]):
        filters = (*EXPERT_FILTERS[:2], width, width)
        model = cnn(filters, EXPERT_STRIDES, 10, "flat", seed)
        if best is None or abs(count_macs(model) - target_macs) < abs(
            count_macs(best) - target_macs
        ):
            best = model
        if count_macs(model) > target_macs:
            break
    return best


def macs_of(model):
    """(gate MACs, {group: expert MACs}) per image, as `condnet.evaluation.cost.routed_macs`
    counts them."""
    costs = routed_macs(model, IMAGE_SHAPE)
    return costs["gate"], costs["experts"]


# === Routing balance ===


def route_shares(routes, num_groups):
    """Share of the rows routed to each group."""
    return np.bincount(np.asarray(routes), minlength=num_groups) / max(len(routes), 1)


def balance_gate(gate, images, sweeps=20):
    """Set the bias of the gate's last Dense so its top choice splits `images` evenly.

    Random weights often send nearly every image to one expert, which would
    make routed inference look better (one busy expert) or worse than it is.
    Each sweep sets every group's bias in turn so that exactly 1/K of the
    images prefer that group given the other biases. Returns the shares
    before and after.
    """
    dense = gate.layers[-1]
    features = keras.Model(gate.inputs, dense.input).predict(images, batch_size=256, verbose=0)
    kernel, bias = dense.get_weights()
    logits = features @ kernel
    num_groups = logits.shape[1]
    before = route_shares((logits + bias).argmax(1), num_groups)
    for _ in range(sweeps):
        for k in range(num_groups):
            others = np.delete(logits + bias, k, axis=1).max(axis=1)
            margin = others - logits[:, k]  # group k wins a row when its bias exceeds this
            bias[k] = np.quantile(margin, 1 / num_groups)
    dense.set_weights([kernel, bias])
    return before, route_shares((logits + bias).argmax(1), num_groups)


# === Timing ===


class EpochTimer(keras.callbacks.Callback):
    """Seconds of each epoch (validation included), from epoch begin to epoch end."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)

"""Routing: how the gate's group probabilities become per-expert mixing weights."""

from keras import ops, random
from keras.config import epsilon  # Keras's fuzz factor, 1e-7 by default

from condnet.choices import ROUTINGS


def check_routing(routing):
    if routing not in ROUTINGS:
        raise ValueError(
            f"Unknown routing. Expected one of {list(ROUTINGS)}: 'soft' mixes every "
            "expert by the gate's probabilities, 'hard' runs the gate's top group, "
            "'gumbel' samples a group (straight-through Gumbel-softmax) while "
            "training, 'teacher' routes by the true group while training. "
            f"Received: routing={routing!r}"
        )
    return routing


def straight_through(hard, soft):
    """Forward pass takes `hard`, gradients flow as if it were `soft`."""
    return hard + soft - ops.stop_gradient(soft)


def hard_weights(probabilities):
    """One-hot weights of the top group of each row."""
    num_groups = ops.shape(probabilities)[-1]
    return ops.one_hot(ops.argmax(probabilities, axis=-1), num_groups, dtype=probabilities.dtype)


def gumbel_weights(probabilities, temperature, seed):
    """Straight-through Gumbel-softmax sample of one group per row."""
    uniform = random.uniform(ops.shape(probabilities), minval=epsilon(), maxval=1.0, seed=seed)
    gumbel = -ops.log(-ops.log(uniform))
    logits = ops.log(probabilities + epsilon())
    soft = ops.softmax((logits + gumbel) / temperature, axis=-1)
    return straight_through(hard_weights(soft), soft)


def top_two_weights(probabilities, threshold):
    """Top-1 weights, or the renormalised top two where the gate is unsure.

    A row whose top probability is below `threshold` hedges: its two most
    likely experts are mixed in proportion to their probabilities.
    """
    probabilities = ops.convert_to_tensor(probabilities)
    top = hard_weights(probabilities)
    rest = probabilities - top * 2.0  # push the top group below every other
    second = hard_weights(rest)
    pair = (top + second) * probabilities
    pair = pair / ops.maximum(ops.sum(pair, axis=-1, keepdims=True), epsilon())
    unsure = ops.max(probabilities, axis=-1, keepdims=True) < threshold
    return ops.where(unsure, pair, top)


def route_weights(
    probabilities,
    routing,
    training=False,
    temperature=1.0,
    seed=None,
    confidence_threshold=None,
):
    """Per-group mixing weights (batch, groups) for one batch of gate output.

    Soft routing returns the probabilities themselves. The hard modes return
    one-hot rows; while training they carry straight-through gradients to the
    gate. Teacher forcing needs the true groups, which only the loss sees, so
    here it behaves like hard routing (`ConditionalModel.compute_loss`
    substitutes the true groups while training).
    """
    probabilities = ops.convert_to_tensor(probabilities)
    if routing == "soft":
        return probabilities
    if training and routing == "gumbel":
        return gumbel_weights(probabilities, temperature, seed)
    if training:
        return straight_through(hard_weights(probabilities), probabilities)
    if confidence_threshold is not None:
        return top_two_weights(probabilities, confidence_threshold)
    return hard_weights(probabilities)


def expand_to_classes(weights, class_to_group):
    """Group weights (batch, groups) -> one weight per class (batch, classes)."""
    return ops.take(weights, class_to_group, axis=1)

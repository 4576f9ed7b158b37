"""Static-capacity dispatch: each expert runs on a fixed-size buffer of its rows, in-graph.

Hard routing inside a compiled step (JAX jit, XLA, exported graphs) needs
static shapes, so rows cannot simply be grouped by expert. Instead each
expert gets a buffer of `capacity = ceil(capacity_factor * batch / experts)`
rows (the GShard / Switch Transformer scheme):

1. each row picks its expert (`argmax`) and its position within that expert
   (a running count, `cumsum`);
2. rows beyond an expert's capacity fall back to their next-best expert if it
   has room left; rows that fit nowhere are dropped, and reported;
3. rows are gathered into the buffers, each expert runs once on its buffer,
   and the results are gathered back into the original order.

Only `keras.ops` are used, in forms that agree on every backend: indices of
empty buffer slots point at an appended zero row (out-of-range `take` differs
between backends), and the slot -> row map comes from `segment_sum` with a
static `num_segments` and `sorted=False`.
"""

import math

from keras import ops


def capacity_of(batch_size, num_experts, capacity_factor):
    """Rows per expert buffer; at least 1, at most the batch."""
    if isinstance(batch_size, int):
        return max(1, min(batch_size, math.ceil(capacity_factor * batch_size / num_experts)))
    rows = ops.ceil(capacity_factor * ops.cast(batch_size, "float32") / num_experts)
    return ops.cast(ops.clip(rows, 1, ops.cast(batch_size, "float32")), "int32")


def assign_slots(first, probabilities, capacity):
    """Buffer slot of each row, with overflow falling back to the next-best expert.

    Args:
        first: (batch,) int. The chosen expert of each row.
        probabilities: (batch, experts). Gate probabilities (ranks the fallback).
        capacity: int. Rows per expert buffer.

    Returns:
        `(expert, slot, kept)`: the expert that serves each row, its slot in
        the flat `(experts * capacity)` buffer (`experts * capacity` when
        dropped) and a boolean mask of rows that were served.
    """
    num_experts = ops.shape(probabilities)[-1]
    first_hot = ops.one_hot(first, num_experts, dtype="int32")
    position = _positions(first_hot)
    keep_first = position < capacity
    used = ops.sum(first_hot * ops.expand_dims(ops.cast(keep_first, "int32"), -1), axis=0)
    fallback = ops.argmax(ops.where(first_hot > 0, -1.0, probabilities), axis=-1)
    overflow = ops.logical_not(keep_first)
    fallback_hot = ops.one_hot(fallback, num_experts, dtype="int32")
    fallback_hot = fallback_hot * ops.expand_dims(ops.cast(overflow, "int32"), -1)
    fallback_position = ops.take(used, fallback) + _positions(fallback_hot)
    keep_fallback = ops.logical_and(overflow, fallback_position < capacity)
    expert = ops.where(keep_first, first, fallback)
    position = ops.where(keep_first, position, fallback_position)
    kept = ops.logical_or(keep_first, keep_fallback)
    dropped_slot = num_experts * capacity
    slot = ops.where(kept, ops.cast(expert, "int32") * capacity + position, dropped_slot)
    return ops.cast(expert, "int32"), ops.cast(slot, "int32"), kept


def gather_rows(slot, num_slots, batch_size):
    """For each buffer slot, the row that fills it (`batch_size`, a zero row, if empty)."""
    rows = ops.arange(1, batch_size + 1, dtype="int32")
    owner = ops.segment_sum(rows, slot, num_segments=num_slots + 1, sorted=False)[:num_slots]
    return ops.where(owner > 0, owner - 1, batch_size)


def to_buffers(features, row_of_slot):
    """(batch, ...) -> (experts * capacity, ...) rows, empty slots zero."""
    padded = ops.concatenate([features, ops.zeros_like(features[:1])], axis=0)
    return ops.take(padded, row_of_slot, axis=0)


def from_buffers(outputs, slot):
    """(experts * capacity, ...) buffer results -> (batch, ...) in row order; dropped rows zero."""
    padded = ops.concatenate([outputs, ops.zeros_like(outputs[:1])], axis=0)
    return ops.take(padded, slot, axis=0)


def _positions(one_hot):
    """Position of each row among the earlier rows sent to the same expert."""
    return ops.sum((ops.cumsum(one_hot, axis=0) - 1) * one_hot, axis=-1)

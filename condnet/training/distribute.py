"""Data-parallel training on Keras's own distribution engine (`keras.distribution`, JAX).

`DataParallel` over every local device replicates the variables and splits
each batch along its first axis; XLA all-reduces the gradients, and the
BatchNormalization statistics are those of the whole batch (the computation
stays logically global), so a data-parallel run follows the single-device one
up to float rounding. Routed and capacity dispatch keep working: the routing
runs inside the same global computation (capacity buffers are sized from the
global batch).

TensorFlow's `MirroredStrategy` and torch DDP are not wired up: on those
backends `data-parallel` is refused with a message, and `auto` means one device.
"""

import contextlib

import keras


def local_devices():
    """The devices `DataParallel` would use (JAX), else []."""
    if keras.backend.backend() != "jax":
        return []
    return keras.distribution.list_devices()


def resolve(distribute, batch_size):
    """`"none"` or `"data-parallel"` for the option value `distribute`, checked."""
    devices = local_devices()
    if distribute == "auto":
        distribute = "data-parallel" if len(devices) > 1 else "none"
        if distribute == "data-parallel" and batch_size % len(devices):
            distribute = "none"  # auto never fails a run; data-parallel says why
    if distribute == "none":
        return "none"
    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            "distribute='data-parallel' runs on keras.distribution, which condnet supports on "
            "the JAX backend (KERAS_BACKEND=jax; TensorFlow's MirroredStrategy and torch DDP "
            f"are not wired up). Received: backend {backend!r}"
        )
    if batch_size % len(devices):
        raise ValueError(
            f"distribute='data-parallel' splits each batch over the {len(devices)} devices, so "
            f"the batch size must divide by {len(devices)}. Received: batch_size={batch_size}"
        )
    return "data-parallel"


def scope(distribute, batch_size):
    """A context in which models are built and trained as `distribute` says."""
    if resolve(distribute, batch_size) == "none":
        return contextlib.nullcontext()
    return keras.distribution.DataParallel(devices=local_devices()).scope()

"""Data-parallel training on the backends' own distribution engines.

JAX: `keras.distribution.DataParallel` over every local device replicates
the variables and splits each batch along its first axis; XLA all-reduces the
gradients, and the BatchNormalization statistics are those of the whole
batch (the computation stays logically global), so a data-parallel run
follows the single-device one up to float rounding. Routing runs inside the
same global computation (capacity buffers are sized from the global batch).

TensorFlow: `tf.distribute.MirroredStrategy` over the local GPUs (or the
logical CPU devices a program configured, e.g. in tests). Each replica runs
the model on its share of the batch and the gradients are summed, so
`ConditionalModel.compute_loss` divides its loss by the replica count (as
Keras's own losses do); BatchNormalization statistics, capacity buffers
and the masked loss terms of hard routing are per replica (a capacity buffer
is sized from the replica's rows, a masked mean is over the replica's rows). Models
compile with `jit_compile=False` under it.

torch: Keras has no distribution engine there, and condnet does not wire DDP
by hand: `data-parallel` is refused with a message and `auto` means one device.
"""

import contextlib

import keras


def local_devices():
    """The devices data-parallel training would use on this backend, else []."""
    backend = keras.backend.backend()
    if backend == "jax":
        return keras.distribution.list_devices()
    if backend == "tensorflow":
        import tensorflow as tf

        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return [device.name for device in devices]
    return []


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
    if not devices:
        raise ValueError(
            "distribute='data-parallel' runs on keras.distribution (JAX) or tf.distribute's "
            "MirroredStrategy (TensorFlow); Keras has no distribution engine on torch, and "
            "condnet does not wire DDP. Use KERAS_BACKEND=jax or tensorflow, or "
            f"distribute='none'. Received: backend {backend!r}"
        )
    if batch_size % len(devices):
        raise ValueError(
            f"distribute='data-parallel' splits each batch over the {len(devices)} devices, so "
            f"the batch size must divide by {len(devices)}. Received: batch_size={batch_size}"
        )
    return "data-parallel"


def replicas_in_sync():
    """How many replicas a TensorFlow strategy in force sums gradients over (else 1)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def compile_options():
    """Extra `compile` arguments under the strategy in force: TensorFlow's
    MirroredStrategy runs without XLA (`jit_compile=False`)."""
    return {"jit_compile": False} if replicas_in_sync() > 1 else {}


def scope(distribute, batch_size):
    """A context in which models are built and trained as `distribute` says."""
    if resolve(distribute, batch_size) == "none":
        return contextlib.nullcontext()
    if keras.backend.backend() == "tensorflow":
        return _mirrored(tuple(local_devices())).scope()
    return keras.distribution.DataParallel(devices=local_devices()).scope()


_STRATEGIES = {}


def _mirrored(devices):
    """One MirroredStrategy per device set and process: a second one in the same process
    reuses collective instance keys and its all-reduces fail with shape mismatches."""
    if devices not in _STRATEGIES:
        import tensorflow as tf

        _STRATEGIES[devices] = tf.distribute.MirroredStrategy(list(devices))
    return _STRATEGIES[devices]

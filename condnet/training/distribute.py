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

Several processes (hosts), JAX only: every process calls `join_processes`
(`condnet train --coordinator HOST:PORT --num-processes N --process-id I`)
before anything else runs, with the same run directory on a shared disk.
`DataParallel` then spans the devices of every process; each process reads
only its slice of every global batch (`ImageFolder.shard`); only the chief
(process 0) writes the run directory, and once the phases end it alone
evaluates, trains the baseline and writes the report, on its own devices.

torch: Keras has no distribution engine there, and condnet does not wire DDP
by hand: `data-parallel` is refused with a message and `auto` means one device.
"""

import contextlib

import keras

from condnet.models.conditional_model import replicas_in_sync

_JOINED = []  # (coordinator, num_processes, process_id) once this process joined a job


def join_processes(coordinator, num_processes, process_id):
    """Join a data-parallel job of `num_processes` processes (JAX), before any JAX work.

    Every process passes the same `coordinator` ("HOST:PORT", where process
    0 listens) and `num_processes`, and its own `process_id` in
    `0..num_processes-1`. On CPUs the processes all-reduce through gloo;
    GPUs use the backend's own collectives. Seed the run (the recipe does) so
    that every process initialises the same weights.
    """
    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            "Training over several processes runs on JAX's distributed runtime: set "
            f"KERAS_BACKEND=jax. Received: backend {backend!r}"
        )
    if not isinstance(num_processes, int) or num_processes < 2:
        raise ValueError(
            f"num_processes must be an int >= 2 for a job of several processes. Received: "
            f"num_processes={num_processes!r}"
        )
    if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise ValueError(
            f"process_id must be an int in 0..{num_processes - 1}. Received: "
            f"process_id={process_id!r}"
        )
    host, _, port = str(coordinator or "").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            "coordinator must be HOST:PORT, the address process 0 listens on (e.g. "
            f"10.0.0.1:1234). Received: coordinator={coordinator!r}"
        )
    joined = (coordinator, num_processes, process_id)
    if _JOINED:
        if _JOINED[0] != joined:
            raise RuntimeError(
                f"This process already joined the job {_JOINED[0]}; a process joins one job. "
                f"Received: {joined}"
            )
        return
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # What keras.distribution.initialize does, with a longer shutdown: the other
    # processes wait at exit while the chief evaluates and trains the baseline alone.
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        shutdown_timeout_seconds=_CHIEF_FINISH_SECONDS,
    )
    _JOINED.append(joined)


_CHIEF_FINISH_SECONDS = 24 * 3600


def process_count():
    """Processes in this job: 1 unless `join_processes` was called."""
    return _JOINED[0][1] if _JOINED else 1


def is_chief():
    """Whether this process writes the run directory (process 0, or the only one)."""
    return not _JOINED or _JOINED[0][2] == 0


def for_this_process(folder):
    """`folder` itself, or in a job of several processes its `shard` for this process."""
    if folder is None or not _JOINED:
        return folder
    return folder.shard(_JOINED[0][2], _JOINED[0][1])


@contextlib.contextmanager
def on_this_process():
    """No distribution inside, in a job of several processes: the chief evaluates and
    trains the baseline on its own devices (one process keeps its distribution)."""
    if keras.backend.backend() != "jax" or not _JOINED:
        yield
        return
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


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
    # Several processes: each feeds its own slice of every batch (already sharded).
    return keras.distribution.DataParallel(
        devices=local_devices(), auto_shard_dataset=not _JOINED
    ).scope()


_STRATEGIES = {}


def _mirrored(devices):
    """One MirroredStrategy per device set and process: a second one in the same process
    reuses collective instance keys and its all-reduces fail with shape mismatches."""
    if devices not in _STRATEGIES:
        import tensorflow as tf

        _STRATEGIES[devices] = tf.distribute.MirroredStrategy(list(devices))
    return _STRATEGIES[devices]

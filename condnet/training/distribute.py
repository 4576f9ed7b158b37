"""Data-parallel training on the backends' own distribution engines.

`Job` is this process's part in a training job: `condnet.train` makes one and
passes it down (its scope, this process's slice of the data, whether it writes
the run). Every workaround of a backend's distribution lives here; the model's
one hook is the division of its loss by the replicas (`replicas_in_sync`).

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

Several processes (hosts) on JAX: every process calls `join_processes`
(`condnet train --coordinator HOST:PORT --num-processes N --process-id I`)
before anything else runs, with the same run directory on a shared disk.
`DataParallel` then spans the devices of every process; each process reads
only its slice of every global batch (`ImageFolder.shard`); only the chief
(process 0) writes the run directory, and once the phases end it alone
evaluates, trains the baseline and writes the report, on its own devices.

Several processes (hosts) on TensorFlow: `tf.distribute.MultiWorkerMirroredStrategy`,
configured by the standard `TF_CONFIG` environment variable (`condnet train`
joins when it names several workers; from Python call `join_tf_config()`
before any TensorFlow work). Each worker reads only its slice of every global
batch, as on JAX (`ImageFolder.shard`), handed to `fit` as a `tf.data` pipeline
that TensorFlow does not shard again (`fit_inputs`), so each image is decoded by
one worker. Worker 0 is the chief and writes the run, as on JAX; it evaluates
the whole validation set once training ends.

torch: Keras has no distribution engine there, and condnet does not wire DDP
by hand: `data-parallel` is refused with a message and `auto` means one device.
"""

import contextlib
import functools
import json
import os

import keras

from condnet.models.conditional_model import replicas_in_sync


class Job:
    """This process's part in a training job: its devices, its slice, what it writes.

    A job is this one process, or several processes that train one model
    together (`join_processes` on JAX, `join_tf_config` on TensorFlow, each
    called first thing in every process). `condnet.train` makes the job once
    and passes it down: the job's `scope()` is where models are built and
    trained, `is_chief` says which process writes the run, `shard` hands each
    process its slice of every batch, and `evaluation_scope()` is where the
    chief evaluates once training ends.

    Args:
        distribute: str. `"none"` (one device), `"data-parallel"` (every
            local device; every device of the job in a job of several
            processes) or `"auto"` (data-parallel when there are several
            devices and the batch divides over them). Defaults to `"none"`.
        batch_size: int. The global batch size, split over the devices.
            Defaults to `1`.
        processes: int or None. Processes in the job. Defaults to the job
            this process joined (1 when it joined none).
        index: int or None. This process's index in the job, 0 for the
            chief. Defaults to the one it joined as (0 when it joined none).

    Example:

    ```python
    job = Job("data-parallel", batch_size=64)
    with job.scope():
        model = build_image_model(hierarchy)  # variables on every device
        model.compile()
        model.fit(job.shard(train_data), epochs=5)
    ```
    """

    def __init__(self, distribute="none", batch_size=1, processes=None, index=None):
        joined = _joined()
        self.backend = keras.backend.backend()
        self.processes = joined[0] if processes is None else processes
        self.index = joined[1] if index is None else index
        self.distribute = resolve(distribute, batch_size, self.processes)

    @property
    def is_chief(self):
        """Whether this process writes the run directory (process 0, or the only one)."""
        return self.index == 0

    def shard(self, folder):
        """`folder` itself, or in a job of several processes its `shard` for this one."""
        if folder is None or self.processes == 1:
            return folder
        return folder.shard(self.index, self.processes)

    def scope(self):
        """A context in which models are built and trained as the job says: a
        `keras.distribution.DataParallel` scope (JAX), a `tf.distribute` strategy
        scope (TensorFlow), or nothing for one device."""
        if self.distribute == "none":
            return contextlib.nullcontext()
        if self.backend == "tensorflow":
            return _strategy(self.processes, tuple(local_devices())).scope()
        # Several processes: each feeds its own slice of every batch (already sharded).
        return keras.distribution.DataParallel(
            devices=local_devices(), auto_shard_dataset=self.processes == 1
        ).scope()

    def evaluation_scope(self):
        """Where the chief evaluates and trains the baseline once training ends: the
        job's `scope()` when the job is this one process; nothing in a job of several,
        where the chief works alone on its own devices (a step under the job's
        distribution would wait for the other processes)."""
        return self.scope() if self.processes == 1 else contextlib.nullcontext()


def join_processes(coordinator, num_processes, process_id):
    """Join a data-parallel job of `num_processes` processes (JAX), before any JAX work.

    Every process passes the same `coordinator` ("HOST:PORT", where process
    0 listens) and `num_processes`, and its own `process_id` in
    `0..num_processes-1`. On CPUs the processes all-reduce through gloo;
    GPUs use the backend's own collectives. Seed the run (the recipe does) so
    that every process initialises the same weights. JAX keeps the job:
    `Job()` reads it back (`jax.process_count()`, `jax.process_index()`).
    """
    _check_join(coordinator, num_processes, process_id)
    import jax

    if jax.distributed.is_initialized():
        joined = (jax.process_count(), jax.process_index())
        if joined != (num_processes, process_id):
            raise RuntimeError(
                f"This process already joined a job of {joined[0]} processes as process "
                f"{joined[1]}; a process joins one job. Received: num_processes="
                f"{num_processes}, process_id={process_id}"
            )
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # What keras.distribution.initialize does, with a longer shutdown: the other
    # processes wait at exit while the chief evaluates and trains the baseline alone.
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        shutdown_timeout_seconds=_CHIEF_FINISH_SECONDS,
    )


_CHIEF_FINISH_SECONDS = 24 * 3600


def _check_join(coordinator, num_processes, process_id):
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


def tf_config_workers():
    """How many workers the `TF_CONFIG` environment variable names (0 when unset)."""
    return _tf_config()[0]


def _tf_config():
    """`(workers, this task's index)` from `TF_CONFIG`, checked; `(0, 0)` when unset."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0, 0
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        index = task["index"]
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(
            'TF_CONFIG must be JSON like {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            f'"task": {{"type": "worker", "index": 0}}}} ({type(error).__name__}: {error}). '
            f"Received: TF_CONFIG={raw!r}"
        ) from None
    if set(config["cluster"]) != {"worker"} or task.get("type") != "worker":
        raise ValueError(
            "condnet's TensorFlow jobs are workers only (worker 0 is the chief): TF_CONFIG's "
            'cluster holds one "worker" list and the task\'s type is "worker". Received: '
            f"TF_CONFIG={raw!r}"
        )
    if not isinstance(index, int) or not 0 <= index < len(workers):
        raise ValueError(
            f"TF_CONFIG's task index must be in 0..{len(workers) - 1}. Received: TF_CONFIG={raw!r}"
        )
    return len(workers), index


def join_tf_config():
    """Join the TensorFlow job that `TF_CONFIG` describes, before any TensorFlow work:
    creates the process's `MultiWorkerMirroredStrategy` (collective ops are configured
    at program start-up, so a later call fails). `TF_CONFIG` then names the job that
    `Job()` reads back."""
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "TF_CONFIG configures TensorFlow jobs; on JAX pass --coordinator HOST:PORT "
            "--num-processes N --process-id I. Received: backend "
            f"{keras.backend.backend()!r}"
        )
    if _tf_config()[0] < 2:
        raise ValueError(
            "A job of several TensorFlow processes needs TF_CONFIG naming at least two "
            f"workers. Received: TF_CONFIG={os.environ.get('TF_CONFIG')!r}"
        )
    _multi_worker()


def _joined():
    """`(processes, this process's index)` of the job this process joined; `(1, 0)` alone.

    The backends keep the job: JAX once `jax.distributed` is initialised, TensorFlow
    in the `TF_CONFIG` of its workers.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if jax.distributed.is_initialized():
            return jax.process_count(), jax.process_index()
    elif backend == "tensorflow":
        workers = _tf_config()  # TF_CONFIG read once
        if workers[0] > 1:
            return workers
    return 1, 0


def process_count():
    """Processes in the job this process joined: 1 unless it joined one."""
    return _joined()[0]


def process_index():
    """This process's index in its job (0 for the chief, or the only process)."""
    return _joined()[1]


def is_chief():
    """Whether this process writes the run directory (process 0, or the only one)."""
    return process_index() == 0


# `fit` takes the batches in order: a folder shuffles its rows every epoch itself, and
# Keras shuffling the batch order too would leave the folder's read-ahead decoding
# batches that come later (a `tf.data` input would also warn).
IN_ORDER = {"shuffle": False}


def fit_inputs(train_data, validation):
    """`(x, validation_data, callbacks)` for `fit` from this process's folders.

    On JAX and torch: the folders themselves (Keras's iterators over a `PyDataset`
    cost little there). On TensorFlow: `tf.data` pipelines that call the folders
    by batch index, with a callback that runs the training folder's end-of-epoch
    work (its next shuffle). Keras would wrap a `PyDataset` in
    `Dataset.from_generator`, which moved fewer cached images a second
    (benchmarks/input_pipeline.py, figures in benchmarks/RESULTS.md); and in a
    job of several workers it would shard the batches again (every worker
    reading every batch to keep a slice), where each worker already reads only
    its own slice (`Job.shard`).
    """
    if keras.backend.backend() != "tensorflow":
        return train_data, validation, []
    return _pipeline(train_data), _pipeline(validation), [_EpochEnd(train_data)]


def _pipeline(folder):
    """A `tf.data` pipeline of `folder`'s batches that no strategy shards.

    Its map calls the folder by batch index on tf.data's own threads, as many
    batches at once as the folder has decoding workers (in order), each decoded in
    the thread that asks for it (`ImageFolder.decoded_here`, which releases the GIL
    while libjpeg-turbo decodes): the folder's read-ahead pool would leave those
    threads waiting on it. tf.data's autotuner is off: with it on, whole epochs ran
    one call at a time (the speed of one thread, 1,170 instead of 2,200 images/s at
    160 px on 2 cores), whatever `num_parallel_calls` said
    (benchmarks/input_pipeline.py; figures in benchmarks/RESULTS.md).
    """
    if folder is None:
        return None
    import tensorflow as tf

    signature = tuple(
        tf.TensorSpec((None, *shape), tf.as_dtype(dtype)) for shape, dtype in _batch_parts(folder)
    )
    read = getattr(folder, "decoded_here", folder.__getitem__)

    def batch(index):
        parts = tf.numpy_function(
            lambda i: read(int(i)), [index], [spec.dtype for spec in signature], stateful=True
        )
        return tuple(tf.ensure_shape(part, spec.shape) for part, spec in zip(parts, signature))

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.autotune.enabled = False
    parallel = getattr(folder, "decode_workers", None) or os.cpu_count() or 1
    dataset = tf.data.Dataset.range(len(folder))
    dataset = dataset.map(batch, num_parallel_calls=parallel, deterministic=True)
    return dataset.prefetch(2).with_options(options)


def _batch_parts(folder):
    """`(shape without the batch axis, dtype)` of each part of `folder`'s batches."""
    if not hasattr(folder, "image_size"):  # another PyDataset: ask its first batch
        return [(part.shape[1:], part.dtype) for part in folder[0]]
    shape = (*folder.image_size, folder.channels)
    if folder.substitute_unreadable:  # training batches: (images, labels)
        return [(shape, folder.dtype), ((), "int32")]
    return [(shape, "float32"), ((), "int32"), ((), "float32")]  # (..., valid): read_batch


class _EpochEnd(keras.callbacks.Callback):
    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def on_epoch_end(self, epoch, logs=None):
        self.folder.on_epoch_end()


def local_devices():
    """The devices data-parallel training would use on this backend, else []; in a
    TensorFlow job of several workers, one name per replica of the whole job."""
    backend, processes = keras.backend.backend(), process_count()
    if backend == "tensorflow" and processes > 1:
        return [f"replica:{i}" for i in range(_multi_worker().num_replicas_in_sync)]
    if backend == "jax":
        return keras.distribution.list_devices()
    if backend == "tensorflow":
        import tensorflow as tf

        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return [device.name for device in devices]
    return []


def resolve(distribute, batch_size, processes=None):
    """`"none"` or `"data-parallel"` for the option value `distribute`, checked, in a
    job of `processes` processes (defaults to the job this process joined)."""
    processes = process_count() if processes is None else processes
    devices = local_devices()
    if distribute == "auto":
        distribute = "data-parallel" if len(devices) > 1 else "none"
        if distribute == "data-parallel" and batch_size % len(devices):
            distribute = "none"  # auto never fails a run; data-parallel says why
    if distribute == "none" and processes > 1:
        raise ValueError(
            f"This process joined a job of {processes} processes, which trains one model "
            "together: use distribute='data-parallel' (or 'auto'). Received: distribute='none'"
        )
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
    """A context in which models are built and trained as `distribute` says, in the job
    this process joined (`Job(distribute, batch_size).scope()`)."""
    return Job(distribute, batch_size).scope()


# === TensorFlow strategies: one of each per process ===


def _strategy(processes, devices):
    """The job's TensorFlow strategy: MultiWorkerMirroredStrategy over several workers,
    else MirroredStrategy over this process's `devices`."""
    return _multi_worker() if processes > 1 else _mirrored(devices)


@functools.cache
def _mirrored(devices):
    """One MirroredStrategy per device set and process: a second one in the same process
    reuses collective instance keys and its all-reduces fail with shape mismatches."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(list(devices))


@functools.cache
def _multi_worker():
    """This process's MultiWorkerMirroredStrategy, made once (by `join_tf_config`)."""
    import tensorflow as tf

    class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """MultiWorkerMirroredStrategy whose `reduce` takes what Keras 3's TensorFlow
        trainer hands it (tensorflow#72388): the first batch as a whole, to build the
        model (reduced here one tensor at a time, as the strategy can), and each step's
        scalar logs along axis 0 (reduced here over the replicas: the mean of scalars is
        the value one device would log)."""

        def reduce(self, reduce_op, value, axis):
            if tf.nest.is_nested(value):
                return tf.nest.map_structure(lambda v: self.reduce(reduce_op, v, axis), value)
            if axis is not None and _rank(value) == 0:
                axis = None
            return super().reduce(reduce_op, value, axis)

    try:
        return KerasMultiWorkerStrategy()
    except RuntimeError as error:
        raise RuntimeError(
            "Join the TensorFlow job before anything else runs TensorFlow (call "
            f"join_tf_config() first thing). TensorFlow said: {error}"
        ) from None


def _rank(value):
    """The rank of a tensor, or of each replica's part of a distributed value."""
    import tensorflow as tf

    if isinstance(value, tf.distribute.DistributedValues):
        value = value.values[0]
    return value.shape.rank

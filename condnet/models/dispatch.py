"""Routed inference: each expert runs only on the rows routed to it, in full batches."""

from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from condnet.models.routing import route_weights

# Rows an expert collects before it runs ("auto"), by backend: the best of 128
# to 2,048 in benchmarks/expert_batch.py (figures: benchmarks/RESULTS.md).
# TensorFlow gains up to 512; torch's eager kernels and XLA's CPU convolutions
# lose past 256.
_EXPERT_ROWS = {"tensorflow": 512}
_DEFAULT_EXPERT_ROWS = 256
# Rows the trunk and gate run on at once: enough to amortise a call's fixed
# cost, few enough that a large trunk's activations stay modest.
_FRONT_ROWS = 256

# JAX compiles one program per input shape, so sub-batches are padded up to a
# multiple of a step that grows with the size: at most 8 rows (~12%) of padding
# around 64 rows, and a few dozen distinct shapes in all.
_BUCKET_STEPS = ((16, 1), (128, 8), (512, 32), (4096, 128))


def routed_predict(
    model,
    x,
    batch_size=32,
    verbose="auto",
    steps=None,
    callbacks=None,
    pipeline="auto",
    expert_batch_size="auto",
):
    """Predict with hard routing, running only the chosen expert of each row.

    The trunk and the gate run on every row and the rows are grouped by the
    expert chosen for them. Each expert's rows wait in a queue across
    batches, and the expert runs on exactly `expert_batch_size` rows whenever
    its queue holds that many (and once more on what is left at the end), so
    an expert sees full batches even when each input batch gives it only a
    few rows.
    The trunk and gate likewise run on whole input batches joined until they
    hold `min(expert_batch_size, max(batch_size, 256))` rows (so at most that
    plus one batch less a row): `batch_size` sets how inputs are read, not the
    experts' efficiency. Memory grows with `expert_batch_size` (each queue
    holds that many rows of its expert's input), while the trunk's
    activations stay bounded by the front's rows.
    Results are put back in the original order; a batch's outputs (and its
    `on_predict_batch_end` callback) complete when its last expert has run.
    An expert chosen by no row does not run. Rows that hedge (top gate
    probability below `model.confidence_threshold`) also run their
    second-best expert.

    Batches are read lazily (a large `PyDataset` streams); `steps` stops
    after that many batches. `callbacks` receive `on_predict_begin`,
    `on_predict_batch_begin` / `_end` (with `{"outputs": ...}`) and
    `on_predict_end`, as in `keras.Model.predict`; `verbose` shows Keras's
    progress bar. With `pipeline`, batch i+1 is read and its trunk and gate
    run while the experts of batch i run. `"auto"` pipelines inputs read from
    disk or a generator on TensorFlow and JAX, where `benchmarks/pipeline.py`
    measured a gain on an `ImageFolder`; it does not pipeline in-memory
    arrays nor on torch, whose kernels already use every core (figures:
    benchmarks/RESULTS.md).

    Args:
        expert_batch_size: int or `"auto"`. Rows an expert's queue collects
            before it runs. `"auto"` is `max(batch_size, 512)` on TensorFlow
            and `max(batch_size, 256)` on JAX and torch, the best of 128 to
            2,048 rows on each (`benchmarks/expert_batch.py`). On JAX a
            size off the padding buckets (`bucket_size`) is padded on every
            run.

    Returns the same dict as `ConditionalModel.predict`, as numpy arrays;
    `"experts"` is zero where an expert did not run.
    """
    runner = model.routed_runner
    if pipeline == "auto":
        pipeline = keras.backend.backend() != "torch" and not hasattr(x, "shape")
    if expert_batch_size == "auto":
        expert_batch_size = max(
            batch_size, _EXPERT_ROWS.get(keras.backend.backend(), _DEFAULT_EXPERT_ROWS)
        )
    _check_expert_batch_size(expert_batch_size)
    front_rows = min(expert_batch_size, max(batch_size, _FRONT_ROWS))
    count = _count(x, batch_size, steps)
    if verbose == "auto":
        verbose = 1 if count and count > 1 else 0
    callback_list = keras.callbacks.CallbackList(
        callbacks,
        add_history=False,
        add_progbar=bool(verbose),
        model=model,
        verbose=verbose,
        epochs=1,
        steps=count,
    )
    callback_list.on_predict_begin()
    queue = _ExpertQueue(runner, expert_batch_size)
    started = 0
    batches = _batches(x, batch_size, steps)
    for batch, front in _fronts(runner, _chunks(batches, front_rows), pipeline):
        callback_list.on_predict_batch_begin(started)
        queue.add(batch, front)
        started += 1
        queue.emit(callback_list)
    queue.flush()
    queue.emit(callback_list)
    callback_list.on_predict_end()
    if not queue.outputs:
        raise ValueError(f"Nothing to predict: the input yielded no batch. Received: x={x!r:.200}")
    return {key: np.concatenate([o[key] for o in queue.outputs]) for key in queue.outputs[0]}


def _check_expert_batch_size(value):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(
            "expert_batch_size must be an int >= 1 (rows an expert collects before it runs) "
            f"or 'auto'. Received: expert_batch_size={value!r}"
        )


class _ExpertQueue:
    """Rows waiting for each expert, across input batches, and the batches they complete."""

    def __init__(self, runner, expert_batch_size):
        self.runner, self.size = runner, expert_batch_size
        self.outputs = []  # one dict per input batch, filled as experts run
        self.waiting = []  # per batch: how many expert runs it still waits for
        self.emitted = 0
        self.rows = {}  # group -> [(batch index, rows, weights of those rows, features)]
        self.pending = []  # (group, items, read the result) of runs not yet read

    def add(self, batch, front):
        # Runs dispatched by the previous batch are read only after this batch's
        # runs are dispatched: on JAX, whose calls return before they finish, the
        # planning and scattering here overlap the experts' compute (routed /
        # flat at batch 256 went from a median of 0.87 to 0.92 on jax).
        earlier, self.pending = self.pending, []
        index = len(self.outputs)
        outputs, tasks = self.runner.plan(batch, front)
        self.outputs.append(outputs)
        self.waiting.append(len(tasks))
        for group, rows, weights, features in tasks:
            queue = self.rows.setdefault(group, [])
            queue.append((index, rows, weights, features))
            while sum(len(item[1]) for item in queue) >= self.size:
                self._run(group, self._take(queue, self.size))
        self._settle(earlier)

    def flush(self):
        for group in list(self.rows):
            self._run(group, self.rows.pop(group))
        self._settle(self.pending)
        self.pending = []

    def emit(self, callback_list):
        """Batch-end callbacks, in order, for every batch whose experts have all run."""
        while self.emitted < len(self.outputs) and self.waiting[self.emitted] == 0:
            callback_list.on_predict_batch_end(
                self.emitted, {"outputs": self.outputs[self.emitted]}
            )
            self.emitted += 1

    def _take(self, queue, count):
        """The first `count` rows of `queue`, removed from it.

        An expert runs on exactly `expert_batch_size` rows (one compiled shape
        on JAX, no padding), so a batch's rows may be split between two runs;
        the batch then waits for one run more.
        """
        taken = []
        while count:
            index, rows, weights, features = queue[0]
            if len(rows) <= count:
                taken.append(queue.pop(0))
                count -= len(rows)
                continue
            taken.append((index, rows[:count], weights[:count], features[:count]))
            queue[0] = (index, rows[count:], weights[count:], features[count:])
            self.waiting[index] += 1
            count = 0
        return taken

    def _run(self, group, items):
        if not items:
            return
        features = np.concatenate([item[3] for item in items])
        self.pending.append((group, items, self.runner.expert_of(group, features)))

    def _settle(self, pending):
        """Write the results of expert runs dispatched earlier into their batches."""
        for group, items, result in pending:
            self._scatter(group, items, result())

    def _scatter(self, group, items, probabilities):
        columns = self.runner.model.hierarchy.group_slice(group)
        start = 0
        for index, rows, weights, part in items:
            result = probabilities[start : start + len(part)]
            start += len(part)
            outputs = self.outputs[index]
            outputs["experts"][rows, columns] = result
            outputs["classes"][rows, columns] = weights[:, None] * result
            self.waiting[index] -= 1


def _chunks(batches, size):
    """Consecutive input batches in lists of at least `size` rows (the last may hold fewer)."""
    chunk, rows = [], 0
    for batch in batches:
        chunk.append(batch)
        rows += len(batch)
        if rows >= size:
            yield chunk
            chunk, rows = [], 0
    if chunk:
        yield chunk


def _fronts(runner, chunks, pipeline):
    """Yield (batch, trunk + gate outputs) for every input batch, reading ahead when
    pipelined.

    The front runs once per chunk of batches (`_chunks`: whole batches
    joined until they hold 256 rows, or one batch if larger), not once per
    batch: at batch 32 a call's fixed cost weighs as much as the convolutions
    on torch (`benchmarks/inference.py`). With `pipeline`, a worker thread
    reads chunk i+1 and runs its trunk and gate while the experts of chunk i
    run (the backends release the GIL in their kernels), so loading and the
    front overlap the experts.
    """

    def front_of(chunk):
        return chunk, runner.front_of(chunk[0] if len(chunk) == 1 else np.concatenate(chunk))

    def read_ahead():
        chunk = next(chunks, None)
        return None if chunk is None else front_of(chunk)

    if pipeline:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(read_ahead)
            while (item := pending.result()) is not None:
                pending = pool.submit(read_ahead)
                yield from _split(*item)
        return
    for chunk in chunks:
        yield from _split(*front_of(chunk))


def _split(chunk, front):
    """(batch, its rows of the chunk's front outputs) for each batch of a chunk."""
    start = 0
    for batch in chunk:
        end = start + len(batch)
        yield batch, {key: value[start:end] for key, value in front.items()}
        start = end


def _count(x, batch_size, steps):
    if isinstance(x, keras.utils.PyDataset):
        count = len(x)
    elif hasattr(x, "shape") and not hasattr(x, "as_numpy_iterator"):
        count = -(-int(x.shape[0]) // batch_size)
    else:
        return steps
    return count if steps is None else min(steps, count)


def inference_weights(model, probabilities):
    """Numpy per-group weights of `model` at inference: `routing.route_weights`."""
    if model.routing != "soft" and model.confidence_threshold is None:
        # The top group, one-hot, as `routing.hard_weights` gives (the first of
        # equal maxima, like `ops.argmax`), without one backend op per batch.
        probabilities = keras.ops.convert_to_numpy(probabilities)
        weights = np.zeros(probabilities.shape, "float32")
        weights[np.arange(len(weights)), np.argmax(probabilities, axis=1)] = 1.0
        return weights
    weights = route_weights(
        probabilities,
        model.routing,
        training=False,
        confidence_threshold=model.confidence_threshold,
    )
    return np.asarray(keras.ops.convert_to_numpy(weights), "float32")


def plan_routes(weights):
    """Rows each expert must run on: the groups with a non-zero weight."""
    return [np.flatnonzero(weights[:, g] > 0) for g in range(weights.shape[1])]


def bucket_size(rows):
    """The padded size for a sub-batch of `rows` rows."""
    step = next((step for limit, step in _BUCKET_STEPS if rows <= limit), 512)
    return -(-rows // step) * step


class Runner:
    """Compiled pieces of one ConditionalModel: front (trunk + gate), experts."""

    def __init__(self, model):
        self.model = model
        self.front = None
        self.experts = {}
        # JAX compiles one program per input shape: pad sub-batches to a few sizes.
        # TensorFlow graphs take any batch size; eager torch needs no compiling.
        self.pad = keras.backend.backend() == "jax"

    def front_of(self, batch):
        """Trunk taps and gate probabilities of a batch, as numpy."""
        return self._front(batch)(batch)

    def plan(self, batch, front):
        """The batch's outputs (experts not yet run) and its expert tasks.

        Returns `(outputs, tasks)`: the output dict with zero `classes` and
        `experts`, and one `(group, rows, weights, features)` per expert that
        has rows in the batch.
        """
        model, hierarchy = self.model, self.model.hierarchy
        groups = np.asarray(front["groups"], "float32")
        weights = inference_weights(model, groups)
        classes = np.zeros((len(batch), hierarchy.num_classes), "float32")
        tasks = []
        for g, rows in enumerate(plan_routes(weights)):
            if rows.size:
                group = hierarchy.groups[g]
                tap = model.expert_taps[group]
                features = (batch if tap is None else front[tap])[rows]
                tasks.append((group, rows, weights[rows, g], features))
        route = np.argmax(weights, axis=1).astype("int32")
        outputs = {"classes": classes, "groups": groups, "route": route}
        outputs["experts"] = np.zeros_like(classes)
        return outputs, tasks

    def expert_of(self, group, features):
        """Run one expert on `features` (compiled once); returns a function that
        gives its class probabilities as numpy. On JAX the run is dispatched
        asynchronously and that function waits for it."""
        result = self._expert(group, features)
        return result if callable(result) else lambda: result

    def _front(self, batch):
        if self.front is None:
            inputs = keras.Input(shape=batch.shape[1:], dtype=str(batch.dtype))
            taps = self.model.tap_features(inputs)
            outputs = {"groups": self.model.gate(taps[self.model.gate_tap])}
            for tap in set(self.model.expert_taps.values()) - {None}:
                outputs[tap] = taps[tap]
            front = keras.Model(inputs, outputs, name="condnet_front")
            self.front = compiled_call(front, batch.shape[1:], str(batch.dtype))
        return self.front

    def _expert(self, group, features):
        expert = self.model.experts[group]
        if expert is None:
            return np.ones((len(features), 1), "float32")
        if hasattr(expert, "hierarchy") and hasattr(expert, "routes_at_inference"):
            # A nested ConditionalModel routes (or mixes) as its own routing says.
            return expert.predict(features, batch_size=len(features), verbose=0)["classes"]
        rows = len(features)
        if self.pad:
            features = _pad(features, bucket_size(rows))
        if self.pad:  # jax: dispatch now, read later (see `_ExpertQueue.add`)
            pending = self._expert_call(group, features)(features, wait=False)
            return lambda: np.asarray(pending, "float32")[:rows]
        probabilities = self._expert_call(group, features)(features)
        return np.asarray(probabilities, "float32")[:rows]

    def _expert_call(self, group, features):
        if group not in self.experts:
            inputs = keras.Input(shape=features.shape[1:], dtype=str(features.dtype))
            outputs = self.model.expert_probabilities(group, inputs)
            expert = keras.Model(inputs, outputs, name=f"condnet_expert_{group}")
            self.experts[group] = compiled_call(expert, features.shape[1:], str(features.dtype))
        return self.experts[group]


# === One compiled inference function per backend ===


def compiled_call(model, input_shape, dtype="float32"):
    """numpy batch -> numpy outputs of `model(x, training=False)`, compiled once.

    TensorFlow: one `tf.function` with a dynamic batch dimension. JAX: one
    `jax.jit` per input shape (callers pad to buckets) that reads the
    variables' current values, with the variables a call assigned written
    back; `call(x, wait=False)` returns JAX's arrays before they are computed.
    The model must be built, and its variables must not be replaced
    afterwards (the list is read once). torch: eager under `no_grad`.
    """
    if not model.built:
        raise ValueError(
            "compiled_call needs a built model: call it on a batch first. "
            f"Received: the unbuilt model {model.name!r}"
        )
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_call(model, input_shape, dtype)
    if backend == "jax":
        return _jax_call(model)
    return _eager_call(model)


def _tensorflow_call(model, input_shape, dtype):
    import tensorflow as tf

    _quiet_retracing_warning(tf)
    signature = [tf.TensorSpec((None, *input_shape), dtype)]
    function = tf.function(lambda x: model(x, training=False), input_signature=signature)
    return lambda x: keras.tree.map_structure(lambda t: t.numpy(), function(x))


def _quiet_retracing_warning(tf):
    """Each part gets its own tf.function, traced once; TF's heuristic warns anyway."""
    logger = tf.get_logger()
    if not any(isinstance(f, _RetracingFilter) for f in logger.filters):
        logger.addFilter(_RetracingFilter())


class _RetracingFilter:
    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def _jax_call(model):
    import jax

    # A built model's variables are fixed; their values are read on every call.
    # (`stateless_call` would walk every layer twice per call for its
    # trainable / non-trainable split, which costs more than a small expert.)
    variables = model.variables

    @jax.jit
    def function(values, x):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
            before = [scope.get_current_value(v) for v in variables]
            outputs = model(x, training=False)
            after = [scope.get_current_value(v) for v in variables]
        # Which variables the call assigned is known while tracing: only those
        # come back to be written (a layer that keeps state at inference).
        return outputs, {
            i: new for i, (old, new) in enumerate(zip(before, after)) if new is not old
        }

    def call(x, wait=True):
        outputs, updates = function([v.value for v in variables], x)
        for i, value in updates.items():
            variables[i].assign(value)
        return keras.tree.map_structure(np.asarray, outputs) if wait else outputs

    return call


def _eager_call(model):
    import torch

    def call(x):
        with torch.no_grad():
            outputs = model(x, training=False)
        return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)

    return call


def _pad(rows, size):
    if len(rows) == size:
        return rows
    padding = np.zeros((size - len(rows),) + rows.shape[1:], rows.dtype)
    return np.concatenate([rows, padding])


def _batches(x, batch_size, steps):
    """Yield numpy input batches from arrays, PyDatasets, tf.data or iterables."""
    if isinstance(x, keras.utils.PyDataset):
        count = len(x) if steps is None else min(steps, len(x))
        for i in range(count):
            yield _inputs_of(x[i])
        return
    if hasattr(x, "as_numpy_iterator"):
        x = x.as_numpy_iterator()
    elif hasattr(x, "shape"):
        array = x if isinstance(x, np.ndarray) else keras.ops.convert_to_numpy(x)
        starts = range(0, len(array), batch_size)
        for start in starts if steps is None else starts[:steps]:
            yield array[start : start + batch_size]
        return
    for i, batch in enumerate(x):
        if steps is not None and i >= steps:
            return
        yield _inputs_of(batch)


def _inputs_of(batch):
    inputs = batch[0] if isinstance(batch, tuple | list) else batch
    if isinstance(inputs, dict):
        raise TypeError(
            "Routed predict takes one input tensor per batch. Received a dict input "
            f"with keys {sorted(inputs)}"
        )
    return keras.ops.convert_to_numpy(inputs)

"""Mixed precision: the Keras dtype policy a model computes in, chosen for the device.

A mixed policy keeps every weight in float32 and computes in bfloat16 or
float16: faster on GPUs and TPUs with 16-bit matrix units, and half the
activation memory. What stays float32 in a `ConditionalModel` (the
heads' softmax, the gate probabilities, the routing weights, the losses) is
described in `build_image_model` and `ConditionalModel`.

Keras is imported inside the functions, so that the command line can list
`PRECISIONS` without importing it.
"""

import contextlib

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
MIXED = ("mixed_bfloat16", "mixed_float16")
# bfloat16 needs the tensor cores of compute capability 8.0 (Ampere) or newer; older
# GPUs compute float16 fast (Volta, Turing), with loss scaling.
_BFLOAT16_CAPABILITY = (8, 0)


def check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {list(PRECISIONS)}: 'auto' picks what the device "
            "computes fast (mixed_bfloat16 on a GPU of compute capability 8.0 or newer and "
            "on a TPU, mixed_float16 on an older GPU, float32 on a CPU). "
            f"Received: precision={precision!r}"
        )
    return precision


def resolve_precision(precision="auto"):
    """The Keras dtype policy name `precision` stands for on this machine.

    `"auto"` is `"mixed_bfloat16"` on a TPU or a GPU of compute capability 8.0
    or newer (A100, H100, RTX 30xx and later), `"mixed_float16"` on an older
    GPU, and `"float32"` on a CPU: most CPUs emulate bfloat16 slowly, and even
    where they do not (a Xeon with AMX) the gain differs by backend, so measure
    before choosing it there (`benchmarks/gpu.py`). Any other value is returned
    as it is (after a check).
    """
    check_precision(precision)
    if precision != "auto":
        return precision
    kind, capability = _accelerator()
    if kind == "tpu" or (kind == "gpu" and capability >= _BFLOAT16_CAPABILITY):
        return "mixed_bfloat16"
    return "mixed_float16" if kind == "gpu" else "float32"


@contextlib.contextmanager
def precision_scope(precision):
    """Layers made inside take `precision`'s dtype policy; the global policy is restored
    on exit. `None` changes nothing (layers take the global policy in force)."""
    if precision is None:
        yield None
        return
    import keras

    policy = resolve_precision(precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield policy
    finally:
        keras.config.set_dtype_policy(previous)


def precision_of(model):
    """The mixed policy any layer of `model` computes in (`"mixed_float16"` first, which
    needs loss scaling), else the name of `model`'s own policy (e.g. `"float32"`)."""
    names = {layer.dtype_policy.name for layer in model._flatten_layers(include_self=True)}
    for mixed in ("mixed_float16", "mixed_bfloat16"):
        if mixed in names:
            return mixed
    return model.dtype_policy.name


def with_precision(model, precision):
    """A copy of a built `model` whose mixed layers compute in `precision` instead; layers
    pinned to a policy of their own (the float32 softmax heads) keep it. The weights
    are copied; the copy is compiled as `model` was, without its optimizer state.

    The weights of a mixed model are float32, so `with_precision(model, "float32")`
    is the exact float32 model: for a CPU, where bfloat16 is slow, or for exporters
    that cannot convert bfloat16 (tf2onnx writes mismatched types).
    """
    import keras

    policy = resolve_precision(precision)
    config = _with_policy(keras.saving.serialize_keras_object(model), policy)
    copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(model.get_weights())
    return copy


def _with_policy(config, policy):
    """A serialized model with every mixed dtype policy replaced by `policy`."""
    if isinstance(config, list):
        return [_with_policy(item, policy) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy" and config["config"].get("name") in MIXED:
        return {**config, "config": {**config["config"], "name": policy}}
    return {key: _with_policy(value, policy) for key, value in config.items()}


def loss_scaled(optimizer, model):
    """`optimizer`, wrapped in a `LossScaleOptimizer` when `model` computes in float16
    (whose small gradients would underflow to zero without it).

    `keras.Model.compile` wraps it only when the model's own policy is
    `"mixed_float16"`; a functional model around float16 layers (the flat
    baseline) has a float32 policy of its own.
    """
    import keras

    if precision_of(model) != "mixed_float16":
        return optimizer
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(keras.optimizers.get(optimizer))


# === The device ===


def _accelerator():
    """`(kind, compute capability)` of the devices Keras's backend computes on: kind is
    `"tpu"`, `"gpu"` or `"cpu"`; the capability is the lowest of the GPUs (`(0, 0)` when
    unknown or not a GPU)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_accelerator()
    if backend == "torch":
        return _torch_accelerator()
    if backend == "tensorflow":
        return _tensorflow_accelerator()
    return "cpu", (0, 0)


def _tensorflow_accelerator():
    import tensorflow as tf

    if tf.config.list_logical_devices("TPU"):
        return "tpu", (0, 0)
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "cpu", (0, 0)
    details = [tf.config.experimental.get_device_details(gpu) for gpu in gpus]
    return "gpu", min(tuple(d.get("compute_capability") or (0, 0)) for d in details)


def _jax_accelerator():
    import jax

    devices = jax.devices()
    platform = devices[0].platform
    if platform == "tpu":
        return "tpu", (0, 0)
    if platform not in ("gpu", "cuda", "rocm"):
        return "cpu", (0, 0)
    return "gpu", min(_capability(getattr(d, "compute_capability", None)) for d in devices)


def _torch_accelerator():
    import torch

    if not torch.cuda.is_available():
        return "cpu", (0, 0)
    count = torch.cuda.device_count()
    return "gpu", min(tuple(torch.cuda.get_device_capability(i)) for i in range(count))


def _capability(text):
    """`"8.0"` -> `(8, 0)`; anything unreadable -> `(0, 0)`."""
    try:
        major, minor = str(text).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return 0, 0

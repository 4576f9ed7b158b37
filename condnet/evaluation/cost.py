"""Multiply-accumulate (MAC) and parameter counts computed from layer shapes."""

import math

import keras
from keras import layers


def count_macs(model_or_layer, input_shape=None, return_details=False):
    """Counts the multiply-accumulates of one forward pass for one example.

    The count is computed from the shapes of the layers, not by profiling. It
    walks the functional graph node by node, so a layer or sub-model called
    twice is counted twice, and it recurses into nested functional and
    `Sequential` models.

    What is counted:

    - `Dense`: input features x units, once per position (a `Dense` on a
      sequence or a feature map runs at every position).
    - `Conv1D`/`Conv2D`/`Conv3D` (with `groups`), `DepthwiseConv1D`/`2D`:
      kernel volume x input channels per group x output channels x output
      positions. `SeparableConv1D`/`2D`: the depthwise plus the pointwise
      part. `Conv*Transpose`: kernel volume x input x output channels x
      input positions.
    - `GRU` / `LSTM`: steps x gates (3 / 4) x (input features + units) x
      units; `Bidirectional`: both directions. `MultiHeadAttention`
      (self-attention): steps x (4 x features x heads x key_dim for the
      projections + 2 x steps x heads x key_dim for the scores and the
      weighted sum).
    - Everything else counts 0: normalization (it folds into the preceding
      convolution at inference), activations, pooling, `Add`/`Multiply`,
      `Rescaling`, `Embedding` (a lookup) and raw `keras.ops` calls. This is
      how published figures are quoted (at 224x224: VGG16 15.5 G, ResNet50
      3.9 G, MobileNetV3Small 57 M).
      Bias additions are not counted either.
    - A layer with a `macs(input_shape, output_shape)` method: what it
      returns (condnet's own layers say their cost this way).
    - A layer of another type made of layers of known cost (a keras-hub
      Transformer block: self-attention, `Dense` and normalization layers):
      each of those once, at every position of its input.
    - A layer of another type that holds weights (for example a
      `SimpleRNN` or a custom layer) also counts 0 and is
      listed among the unknown layers, so that an undercount is never silent.

    Args:
        model_or_layer: `keras.Model` or `keras.layers.Layer`. A built model
            or layer. Functional and `Sequential` models are walked; any other
            model is counted as a single (unknown) layer.
        input_shape: tuple of ints, or list of tuples for a model with several
            inputs. The shape of one example, without the batch dimension.
            Overrides the model's own input shape (useful for a model built
            with `(None, None, 3)` inputs) and builds an unbuilt model.
            Defaults to `None`, the shape the model was built with.
        return_details: bool. Whether to also return the count per layer and
            the layers that were not understood. Defaults to `False`.

    Returns:
        The MACs per example, an `int`. With `return_details=True`, a tuple
        `(total, macs_per_layer, unknown_layers)`: `macs_per_layer` maps each
        layer's name to its MACs (summed over its calls; layers inside a
        sub-model are named `"sub_model/layer"`), and `unknown_layers` lists
        the names of layers with weights whose cost is not known.

    Example:

    ```python
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(10)])
    count_macs(model)  # 320
    ```
    """
    specs = _input_specs(model_or_layer, input_shape)
    macs_per_layer, unknown_layers = {}, []
    tally = (macs_per_layer, unknown_layers)
    if _is_graph(model_or_layer):
        _run_graph(model_or_layer, (specs,), "", tally)
    else:
        _run(model_or_layer, specs if len(specs) == 1 else (specs,), {}, "", tally)
    total = sum(macs_per_layer.values())
    if return_details:
        return total, macs_per_layer, unknown_layers
    return total


def routed_macs(model, input_shape):
    """Multiply-accumulates per input of a condnet model, routed and as a soft mixture.

    The routed cost is what one input can cost at most under hard routing:
    the trunk, the gate and the costliest expert, where an expert that is
    itself a `ConditionalModel` (a deeper level of the tree) counts its own
    costliest route (its gate and its costliest expert), never all of its
    experts, since one input runs one expert per level. An input routed to a
    cheaper expert costs less, so the mean over a data set may be lower. The
    soft mixture runs every expert at every level: `all_experts`. Each part is
    counted by `count_macs`.

    Args:
        model: `ConditionalModel`, `Ensemble` (every member runs: each cost is
            the members' sum; members of documents each read their own token
            ids), or any other Keras model (a flat classifier, which costs the
            same on every input).
        input_shape: shape of one input, without the batch dimension, e.g.
            `(32, 32, 3)` or `(sequence_length,)`.

    Returns:
        A dict with `"routed"` and `"all_experts"` (ints). For a
        `ConditionalModel`, also `"trunk"`, `"gate"`, `"experts"` (group ->
        that expert's routed MACs) and `"routes"` (group -> what an input
        routed to that group costs: trunk + gate + expert).

    Example:

    ```python
    model = build_image_model(hierarchy, image_size=32)
    routed_macs(model, (32, 32, 3))["routed"]  # what one image costs at most
    ```
    """
    from condnet.models.conditional_model import ConditionalModel
    from condnet.models.ensemble import Ensemble

    if isinstance(model, Ensemble):
        shapes = model.member_input_shapes((None, *tuple(input_shape)))
        members = [routed_macs(m, shape[1:]) for m, shape in zip(model.members, shapes)]
        return {key: sum(m[key] for m in members) for key in ("routed", "all_experts")}
    if not isinstance(model, ConditionalModel):
        macs = count_macs(model, tuple(input_shape))
        return {"routed": macs, "all_experts": macs}
    taps = model.tap_shapes((None, *tuple(input_shape)))
    trunk = count_macs(model.trunk, tuple(input_shape)) if model.trunk is not None else 0
    gate = count_macs(model.gate, taps[model.gate_tap][1:])
    experts = {
        group: _expert_macs(expert, taps[model.expert_taps[group]][1:])
        for group, expert in model.experts.items()
    }
    routes = {group: trunk + gate + costs["routed"] for group, costs in experts.items()}
    return {
        "trunk": trunk,
        "gate": gate,
        "experts": {group: costs["routed"] for group, costs in experts.items()},
        "routes": routes,
        "routed": max(routes.values()),
        "all_experts": trunk + gate + sum(costs["all_experts"] for costs in experts.values()),
    }


def _expert_macs(expert, input_shape):
    """`{"routed", "all_experts"}` of one expert on its tap (0 for a group without one)."""
    if expert is None:
        return {"routed": 0, "all_experts": 0}
    return routed_macs(expert, input_shape)


def count_params(model):
    """Counts the weights of a built model or layer, trainable or not.

    Args:
        model: `keras.Model` or `keras.layers.Layer`. A built model or layer.

    Returns:
        The number of scalars in all its weights, an `int`.

    Example:

    ```python
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(10)])
    count_params(model)  # 330
    ```
    """
    if not model.built:
        raise ValueError(
            f"Cannot count the parameters of '{model.name}': it is not built yet. "
            "Build it first, e.g. `model.build((None, 224, 224, 3))` or by "
            f"calling it on data. Received: model={model.name} (built=False)"
        )
    return int(model.count_params())


# === Input shapes ===


def _input_specs(model, input_shape):
    """Symbolic inputs (batch dimension `None`) to propagate through `model`."""
    if input_shape is None:
        shapes, dtypes = _built_input_shapes(model)
    else:
        shapes = _check_input_shape(input_shape)
        dtypes = [None] * len(shapes)
        if not model.built:
            model.build(_batched(shapes))
        if isinstance(model, keras.Function) and len(shapes) != len(model.inputs):
            raise ValueError(
                f"Model '{model.name}' has {len(model.inputs)} inputs but "
                f"input_shape describes {len(shapes)}. Pass one shape per input. "
                f"Received: input_shape={input_shape}"
            )
    for shape in shapes:
        _check_known(shape, model)
    return [
        keras.KerasTensor((None, *shape), dtype=dtype or "float32")
        for shape, dtype in zip(shapes, dtypes)
    ]


def _built_input_shapes(model):
    """Per-example shapes and dtypes of the inputs `model` was built with."""
    if not model.built:
        raise ValueError(
            f"Cannot count the MACs of '{model.name}': it is not built yet, so "
            "its layer shapes are unknown. Build it (e.g. start a Sequential "
            "model with `keras.Input(shape)`) or pass the shape of one example, "
            f"e.g. `input_shape=(224, 224, 3)`. Received: input_shape=None"
        )
    try:
        inputs = model.inputs if _is_graph(model) else keras.tree.flatten(model.input)
    except (AttributeError, ValueError):
        raise ValueError(
            f"Cannot tell the input shape of '{model.name}': it was built "
            "without being called on a symbolic input. Pass the shape of one "
            "example, e.g. `input_shape=(224, 224, 3)`. Received: input_shape=None"
        ) from None
    return [tuple(x.shape[1:]) for x in inputs], [x.dtype for x in inputs]


def _check_input_shape(input_shape):
    """Normalizes `input_shape` to a list of per-example shape tuples."""
    several = bool(input_shape) and isinstance(input_shape[0], (tuple, list))
    shapes = [tuple(s) for s in input_shape] if several else [tuple(input_shape)]
    for shape in shapes:
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ValueError(
                "input_shape must be the shape of one example, without the batch "
                "dimension: positive ints, e.g. `(224, 224, 3)`, or a list of such "
                f"tuples for a model with several inputs. Received: input_shape={input_shape}"
            )
    return shapes


def _check_known(shape, model):
    if any(d is None for d in shape):
        raise ValueError(
            f"Model '{model.name}' takes inputs of shape {(None, *shape)} whose "
            "size is not fixed, so its MACs are not defined. Pass the shape of "
            f"one example, e.g. `input_shape=(224, 224, 3)`. Received: input_shape=None"
        )


def _batched(shapes):
    batched = [(None, *shape) for shape in shapes]
    return batched[0] if len(batched) == 1 else batched


# === Graph walk ===


def _is_graph(operation):
    return isinstance(operation, (keras.Function, keras.Sequential))


def _run(operation, args, kwargs, prefix, tally):
    """Propagates shapes through `operation`, tallying the MACs of its layers."""
    if _is_graph(operation):
        return _run_graph(operation, args, f"{prefix}{operation.name}/", tally)
    outputs = operation.compute_output_spec(*args, **kwargs)
    _tally_leaf(operation, args, outputs, prefix + operation.name, tally)
    return outputs


def _run_graph(model, args, prefix, tally):
    if isinstance(model, keras.Sequential):
        return _run_sequential(model, args, prefix, tally)
    return _run_functional(model, args, prefix, tally)


def _run_functional(model, args, prefix, tally):
    # `_run_through_graph` is how Functional itself propagates specs node by
    # node; each node is one call, so shared layers are counted per call.
    def operation_fn(operation):
        return lambda *a, **k: _run(operation, a, k, prefix, tally)

    return model._run_through_graph(args[0], operation_fn=operation_fn)


def _run_sequential(model, args, prefix, tally):
    x = args[0]
    x = x[0] if isinstance(x, (list, tuple)) and len(x) == 1 else x
    for layer in model.layers:
        x = _run(layer, (x,), {}, prefix, tally)
    return x


def _tally_leaf(operation, args, outputs, name, tally):
    macs_per_layer, unknown_layers = tally
    macs = _leaf_macs(operation, _first_shape(args), _first_shape(outputs))
    if macs is None:
        macs = 0
        if name not in unknown_layers:
            unknown_layers.append(name)
    macs_per_layer[name] = macs_per_layer.get(name, 0) + macs


def _first_shape(structure):
    tensors = [x for x in keras.tree.flatten(structure) if isinstance(x, keras.KerasTensor)]
    return tuple(tensors[0].shape) if tensors else ()


# === MACs of one layer ===


def _leaf_macs(operation, input_shape, output_shape):
    """MACs of one call, or `None` for a layer with weights of unknown cost."""
    if callable(getattr(operation, "macs", None)):  # a layer that says its own cost
        return operation.macs(input_shape, output_shape)
    for types, counter in _COUNTERS:
        if isinstance(operation, types):
            return counter(operation, input_shape, output_shape)
    if isinstance(operation, keras.layers.Layer) and operation.weights:
        return _composite_macs(operation, input_shape)
    return 0


def _composite_macs(layer, input_shape):
    """A layer made of layers of known cost (a Transformer block): each of them once at
    every position of `input_shape` (a `Dense` from its kernel's input features, an
    attention over the whole sequence); `None` when one of them holds weights of
    unknown cost, or when it has none."""
    total, parts = 0, [part for part in layer._layers if part.weights]
    for part in parts:
        if isinstance(part, layers.Dense):
            macs = _positions(input_shape) * math.prod(part.kernel.shape)
        else:
            macs = _leaf_macs(part, input_shape, input_shape)
        if macs is None:
            return None
        total += macs
    return total if parts else None


def _positions(shape, data_format="channels_last"):
    """Number of positions of a per-example shape: all but batch and channels."""
    spatial = shape[2:] if data_format == "channels_first" else shape[1:-1]
    return math.prod(spatial)


def _dense_macs(layer, input_shape, output_shape):
    return _positions(output_shape) * input_shape[-1] * layer.units


def _conv_macs(layer, input_shape, output_shape):
    return math.prod(layer.kernel.shape) * _positions(output_shape, layer.data_format)


def _separable_macs(layer, input_shape, output_shape):
    kernels = math.prod(layer.depthwise_kernel.shape) + math.prod(layer.pointwise_kernel.shape)
    return kernels * _positions(output_shape, layer.data_format)


def _transpose_macs(layer, input_shape, output_shape):
    return math.prod(layer.kernel.shape) * _positions(input_shape, layer.data_format)


def _zero_macs(layer, input_shape, output_shape):
    return 0


def _recurrent_macs(layer, input_shape, output_shape):
    """A GRU (3 gates) or LSTM (4): per step, each gate's input and recurrent kernels."""
    gates = 3 if isinstance(layer, layers.GRU) else 4
    steps, features = input_shape[-2], input_shape[-1]
    return steps * gates * (features + layer.units) * layer.units


def _bidirectional_macs(layer, input_shape, output_shape):
    return sum(
        _recurrent_macs(part, input_shape, output_shape)
        for part in (layer.forward_layer, layer.backward_layer)
    )


def _attention_macs(layer, input_shape, output_shape):
    """Self-attention over `steps` positions: the query, key, value and output projections
    (each `features x heads x key_dim` per position), then the scores and the weighted sum
    (`steps x heads x key_dim` each, per position)."""
    steps, features = input_shape[-2], input_shape[-1]
    inner = layer.num_heads * layer.key_dim
    return steps * (4 * features * inner + 2 * steps * inner)


_COUNTERS = (
    (layers.Dense, _dense_macs),
    ((layers.Conv1D, layers.Conv2D, layers.Conv3D), _conv_macs),
    ((layers.DepthwiseConv1D, layers.DepthwiseConv2D), _conv_macs),
    ((layers.SeparableConv1D, layers.SeparableConv2D), _separable_macs),
    ((layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose), _transpose_macs),
    ((layers.GRU, layers.LSTM), _recurrent_macs),
    (layers.Bidirectional, _bidirectional_macs),
    (layers.MultiHeadAttention, _attention_macs),
    (
        (
            layers.BatchNormalization,
            layers.LayerNormalization,
            layers.GroupNormalization,
            layers.Normalization,
            layers.Embedding,
            layers.PReLU,
        ),
        _zero_macs,
    ),
)

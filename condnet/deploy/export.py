"""Export a conditional model with its routing inside the graph.

`model.export(...)` traces `ConditionalModel.call`, which runs every expert on
every row and selects with a one-hot: the artifact a user deploys would lose
the saving routing exists for. Here the exported function routes instead:

    trunk + gate -> route weights -> for each expert:
        rows = where(weight > 0)                  (a sub-batch of dynamic size)
        cond(rows is empty, zeros, expert(gather(features, rows)) * weight)
        scatter the result back to its rows

so each expert runs on its own rows only, no row is dropped, and a batch of
one runs only its chosen expert (the others take the empty branch of a real
conditional). Rows that hedge (`confidence_threshold`) have a non-zero weight
for two experts and run both. TensorFlow traces this into a SavedModel
(`Where`, `GatherV2`, `If`/`StatelessIf`, `ScatterNd`); tf2onnx turns the
same graph into ONNX (`NonZero`, `Gather`, `If`, `ScatterND`), both with a
dynamic batch dimension, so neither format needs a static capacity buffer.

Tracing dynamic shapes needs TensorFlow graphs, so these two formats export
with `KERAS_BACKEND=tensorflow`; a `.keras` file trained on any backend loads
there. The exported artifacts need neither Keras nor condnet to run.

A model that reads documents (a text run's, whose `preprocessor` is an
adapted `TextVectorization`) exports to a SavedModel whose signature takes
strings: the vectorizer (lower case, punctuation stripped, words split, the
vocabulary looked up) runs inside the graph, before the routed model, so the
artifact reads raw text as `predict` does. tf2onnx does not convert those
string ops (`StaticRegexReplace`, `StringSplitV2`, the vocabulary's
`LookupTableFindV2`) and would write a graph ONNX Runtime refuses, so `onnx`
refuses such a model.

An image holding NaN or an infinity has no prediction, here as in
`ConditionalModel.predict`: its `route` is -1 and its `classes` and `groups`
are NaN, and no expert runs on it. (What a network makes of such pixels
differs between runtimes: TensorFlow's fused convolutions turn NaN into 0,
ONNX Runtime propagates it; a rule on the input gives every runtime the
same answer.)
"""

import warnings
from pathlib import Path

import keras

from condnet.choices import INFERENCE_ROUTINGS
from condnet.models.precision import precision_of, with_precision

FORMATS = ("tf_saved_model", "onnx")
ONNX_OPSET = 17
OUTPUTS = ("classes", "groups", "route")


def export_model(model, path, format="tf_saved_model", input_shape=None, routing="hard"):
    """Write `model` to `path` as a SavedModel directory or an ONNX file.

    Args:
        model: a built `ConditionalModel` (nested conditional experts route too).
        path: the directory (SavedModel) or `.onnx` file to write.
        format: `"tf_saved_model"` or `"onnx"`.
        input_shape: one input's shape without the batch, e.g. `(32, 32, 3)`;
            defaults to the shape the model was built with.
        routing: `"hard"` routes in the graph (each expert on its own rows
            only); `"soft"` writes the mixture of every expert, the all-experts
            artifact to compare against.

    The signature takes `images` (float32, `(batch, *input_shape)`, pixels as
    the model takes them), or for a model with a `preprocessor` `text`
    (strings, `(batch,)`; `input_shape` is then unused), and returns `classes`
    (batch, num_classes), `groups` (the gate's probabilities) and `route`
    (int32, the chosen expert). An ONNX file names its columns in its
    metadata (`onnx_metadata`).
    Returns the path written.
    """
    check_export(model, format, routing)
    path = Path(path)
    if model.preprocessor is not None:
        _write_saved_model(model, _text_function(model, routing), path)
        return path
    input_shape = _input_shape(model, input_shape)
    if format == "onnx" and precision_of(model) == "mixed_bfloat16":
        # tf2onnx writes mismatched float16/bfloat16 types that onnxruntime refuses; the
        # weights of a mixed model are float32, so the float32 copy is the exact model.
        model = with_precision(model, "float32")
    import tensorflow as tf

    function = tf.function(
        lambda images: routed_outputs(model, images, routing),
        input_signature=[tf.TensorSpec((None, *input_shape), tf.float32, name="images")],
        autograph=False,
    )
    if format == "tf_saved_model":
        _write_saved_model(model, function, path)
    else:
        _write_onnx(model, input_shape, routing, path)
    return path


def _text_function(model, routing):
    """The SavedModel's function of a model that reads documents: strings -> the model's
    vectorizer (token ids, as `predict` computes them) -> the routed outputs."""
    import tensorflow as tf

    def documents(text):
        ids = tf.cast(model.preprocessor(text), tf.int32)
        return routed_outputs(model, ids, routing)

    spec = tf.TensorSpec((None,), tf.string, name="text")
    return tf.function(documents, input_signature=[spec], autograph=False)


def routed_outputs(model, images, routing="hard", conditional=True):
    """`{"classes", "groups", "route"}` of a batch, each expert on its own rows (TensorFlow).

    `conditional=False` leaves out the `cond` around each expert: an expert
    with no rows then runs on an empty sub-batch (for tf2onnx, see onnx_graph).
    """
    import tensorflow as tf

    outputs = _front_outputs(model, images, routing)
    taps, weights, finite = (outputs.pop(key) for key in ("taps", "weights", "finite"))
    blocks = [
        _expert_block(model, group, g, images, taps, weights, routing, conditional)
        for g, group in enumerate(model.hierarchy.groups)
    ]
    classes = tf.where(finite, tf.concat(blocks, axis=-1), float("nan"))
    return {"classes": classes, "groups": outputs["groups"], "route": outputs["route"]}


def _front_outputs(model, images, routing):
    """Trunk taps, gate `groups`, route `weights` and `route` of a batch, and `finite`
    ((batch, 1): the rows whose image is finite); the other rows get NaN groups, zero
    weights (no expert runs on them) and route -1."""
    import tensorflow as tf

    taps = model.tap_features(images, training=False)
    groups = tf.cast(model.gate(taps[model.gate_tap], training=False), tf.float32)
    weights = groups if routing == "soft" else _hard_weights(groups, model.confidence_threshold)
    values = tf.reshape(tf.cast(images, tf.float32), [tf.shape(images)[0], -1])
    finite = tf.reduce_all(tf.math.is_finite(values), axis=1, keepdims=True)
    route = tf.argmax(weights, axis=-1, output_type=tf.int32)
    return {
        "taps": taps,
        "finite": finite,
        "groups": tf.where(finite, groups, float("nan")),
        "weights": tf.where(finite, weights, 0.0),
        "route": tf.where(finite[:, 0], route, -1),
    }


def _hard_weights(groups, threshold):
    """`routing.route_weights` at inference (hard, or top two below `threshold`) in plain
    TensorFlow ops: Keras's argmax adds Bitcast ops that ONNX has no kernel for."""
    import tensorflow as tf

    num_groups = groups.shape[-1]
    top = tf.one_hot(tf.argmax(groups, axis=-1), num_groups, dtype=tf.float32)
    if threshold is None:
        return top
    second = tf.one_hot(tf.argmax(groups - top * 2.0, axis=-1), num_groups, dtype=tf.float32)
    pair = (top + second) * groups
    pair = pair / tf.maximum(tf.reduce_sum(pair, axis=-1, keepdims=True), 1e-7)
    unsure = tf.reduce_max(groups, axis=-1, keepdims=True) < threshold
    return tf.where(unsure, pair, top)


def _expert_block(model, group, g, images, taps, weights, routing, conditional):
    """(batch, classes of `group`): weight x the expert's probabilities, 0 off its rows."""
    import tensorflow as tf

    tap = model.expert_taps[group]
    features = images if tap is None else taps[tap]
    width = len(model.hierarchy.classes_of(group))
    batch = tf.shape(weights, out_type=tf.int64)[0]
    column = weights[:, g]
    if routing == "soft":
        return column[:, None] * _expert_probabilities(model, group, features, routing, conditional)
    rows = tf.reshape(tf.where(column > 0), [-1])

    def run():
        chosen = tf.gather(features, rows)
        probabilities = _expert_probabilities(model, group, chosen, routing, conditional)
        weighted = probabilities * tf.gather(column, rows)[:, None]
        return tf.scatter_nd(rows[:, None], weighted, tf.stack([batch, width]))

    def skip():
        return tf.zeros(tf.stack([batch, width]), tf.float32)

    return tf.cond(tf.size(rows) > 0, run, skip) if conditional else run()


def _expert_probabilities(model, group, features, routing, conditional=True):
    import tensorflow as tf

    expert = model.experts[group]
    if hasattr(expert, "hierarchy") and hasattr(expert, "routes_at_inference"):
        # A nested conditional expert routes by its own routing (soft: its mixture).
        nested = routing if expert.routes_at_inference else "soft"
        return routed_outputs(expert, features, nested, conditional)["classes"]
    return tf.cast(model.expert_probabilities(group, features, training=False), tf.float32)


# === Writing ===


def _write_saved_model(model, function, path):
    archive = keras.export.ExportArchive()
    archive.track(model)
    if model.preprocessor is not None:  # its vocabulary's lookup table goes in too
        archive.track(model.preprocessor)
    archive.add_endpoint("serve", function)
    archive.write_out(str(path), verbose=False)


def _write_onnx(model, input_shape, routing, path):
    import tensorflow as tf

    from condnet.deploy.onnx_graph import routed_onnx

    taps = model.tap_shapes((None, *input_shape))
    names = {tap: f"tap_{i}" for i, tap in enumerate(dict.fromkeys(model.expert_taps.values()))}

    def front(images):
        outputs = _front_outputs(model, images, routing)
        features = outputs.pop("taps")
        for tap, name in names.items():
            outputs[name] = tf.identity(images if tap is None else features[tap])
        return outputs

    def expert(group):
        # Nested conditional experts route without `cond` here (see onnx_graph).
        return lambda features: _expert_probabilities(model, group, features, routing, False)

    spec = tf.TensorSpec((None, *input_shape), tf.float32, name="images")
    pieces = {}
    for g, group in enumerate(model.hierarchy.groups):
        tap = model.expert_taps[group]
        shape = input_shape if tap is None else tuple(taps[tap][1:])
        features = tf.TensorSpec((None, *shape), tf.float32, name="features")
        pieces[g] = (_to_onnx(expert(group), features, ["probabilities"]), names[tap])
    widths = {
        g: len(model.hierarchy.classes_of(group)) for g, group in enumerate(model.hierarchy.groups)
    }
    outputs = ["finite", "groups", "route", "weights", *names.values()]
    front_proto = _to_onnx(front, spec, outputs)
    proto = routed_onnx(front_proto, pieces, widths, routing, onnx_metadata(model.hierarchy))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_bytes(proto.SerializeToString())
    temporary.replace(path)


def onnx_metadata(hierarchy):
    """The ONNX file's `metadata_props`, JSON texts that name what its outputs hold:
    `classes` (the class of each column of `classes`), `groups` (the group of each
    column of `groups`, and of each `route` index) and `hierarchy` (group -> classes).

    onnxruntime reads them with `session.get_modelmeta().custom_metadata_map`.
    """
    import json

    return {
        "classes": json.dumps(hierarchy.classes),
        "groups": json.dumps(hierarchy.groups),
        "hierarchy": json.dumps(hierarchy.to_dict()),
    }


def _to_onnx(function, spec, output_names):
    """tf2onnx's ModelProto of `function(spec)`, outputs renamed to `output_names`."""
    import tensorflow as tf

    tf2onnx = _needs("tf2onnx", "ONNX export", "export")

    # Keras's own ONNX export applies this patch for numpy >= 2 (tf2onnx still
    # uses removed numpy aliases); it is idempotent.
    from keras.src.export.tf2onnx_lib import patch_tf2onnx

    with warnings.catch_warnings():  # its hasattr(np, "object") probe warns on numpy 2
        warnings.simplefilter("ignore", FutureWarning)
        patch_tf2onnx()
    traced = tf.function(function, input_signature=[spec], autograph=False)
    proto, _ = tf2onnx.convert.from_function(traced, input_signature=[spec], opset=ONNX_OPSET)
    # Structured outputs come out sorted by key (a single tensor: one output).
    _rename_outputs(proto, sorted(output_names))
    return proto


def _rename_outputs(model_proto, names):
    """tf2onnx names outputs `Identity:0`...; give them the names of the dict keys."""
    graph = model_proto.graph
    renames = {output.name: name for output, name in zip(graph.output, names)}
    for output in graph.output:
        output.name = renames[output.name]
    for node in graph.node:
        node.output[:] = [renames.get(name, name) for name in node.output]


# === Checks ===


def _needs(module, what, extra):
    """Import `module`, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{what} needs the {module} package: pip install 'condnet[{extra}]'"
        ) from None


def _check_graph_requirements(preprocessor, format):
    """A preprocessor that needs packages inside a TensorFlow graph (a keras-hub tokenizer:
    tensorflow-text) says so in `graph_requirements`; refuse the SavedModel without them."""
    import importlib.util

    needed = getattr(preprocessor, "graph_requirements", ())
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if format == "tf_saved_model" and missing:
        packages = " ".join(name.replace("_", "-") for name in missing)
        raise ImportError(
            "A SavedModel that takes strings runs the model's "
            f"{type(preprocessor).__name__} inside its TensorFlow graph, where it needs "
            f"{', '.join(missing)}, which is not installed (`condnet predict` and `serve` "
            f"tokenize in Python without it): pip install {packages} (tensorflow-text "
            "installs the full tensorflow package beside tensorflow-cpu). "
            "Received: format='tf_saved_model'"
        )


def check_export(model, format, routing):
    """Refuse what `export_model` cannot write, before anything is traced or written."""
    if format not in FORMATS:
        raise ValueError(
            f"format must be one of {list(FORMATS)} (a .keras file is the run's own "
            f"model.keras). Received: format={format!r}"
        )
    if routing not in INFERENCE_ROUTINGS:
        raise ValueError(
            f"routing must be one of {list(INFERENCE_ROUTINGS)}: hard routes in the graph, soft "
            f"runs every expert. Received: routing={routing!r}"
        )
    preprocessor = getattr(model, "preprocessor", None)
    if format == "onnx" and preprocessor is not None:
        raise ValueError(
            "A model that reads documents cannot be exported to ONNX: its "
            f"{type(preprocessor).__name__} runs TensorFlow string ops (a TextVectorization's "
            "StaticRegexReplace, StringSplitV2 and LookupTableFindV2 of the vocabulary; a "
            "keras-hub tokenizer's tensorflow-text ops) that tf2onnx does not convert to ONNX "
            "operators. Export it with --format tf_saved_model (format='tf_saved_model'), "
            "which carries the vectorizer inside and takes strings. Received: format='onnx'"
        )
    _check_graph_requirements(preprocessor, format)
    if format == "onnx":
        _needs("tf2onnx", "ONNX export", "export")  # before anything is traced or written
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"Exporting to {format} traces a TensorFlow graph with dynamic sub-batches, so it "
            "needs KERAS_BACKEND=tensorflow (a model trained on any backend loads there). "
            f"Received: backend {keras.backend.backend()!r}"
        )
    from condnet.models.conditional_model import ConditionalModel

    if not getattr(model, "built", False) or not isinstance(model, ConditionalModel):
        raise ValueError(
            "export_model needs a built ConditionalModel (load one with "
            "keras.models.load_model): it writes the model's routing into the graph. An "
            "ensemble or a flat Keras model has no routing of its own; save it with "
            "model.save (`condnet export --format keras`) or keras.Model.export. "
            f"Received: {type(model).__name__}"
        )


def _input_shape(model, input_shape):
    if input_shape is None:
        shapes = getattr(model, "_build_shapes_dict", None) or {}
        shape = next(iter(shapes.values()), None)
        if shape is None:
            raise ValueError(
                "The model does not record the shape it was built with: pass input_shape, "
                "e.g. input_shape=(32, 32, 3)."
            )
        input_shape = tuple(shape)[1:]
    try:
        shape = tuple(int(side) for side in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or min(shape) < 1:
        raise ValueError(
            "input_shape must be the shape of one input without the batch, e.g. "
            f"(32, 32, 3) for images. Received: input_shape={input_shape!r}"
        )
    return shape

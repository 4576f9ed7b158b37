import subprocess
import sys

import keras
import numpy as np
import pytest

from condnet import ConditionalModel, Hierarchy
from condnet.deploy.export import export_model
from condnet.testing import cats_and_dogs_model, mlp, sign_gate
from condnet.vision.image_model import build_image_model

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="SavedModel and ONNX export trace TensorFlow graphs (KERAS_BACKEND=tensorflow)",
)

BATCH_SIZES = (1, 7, 32, 256)

# Runs in a fresh interpreter that never imports condnet (nor, for ONNX,
# TensorFlow or Keras): the artifacts must stand alone.
STANDALONE = """
import sys
import numpy as np
path, kind, inputs, out = sys.argv[1:]
x = np.load(inputs)
results = {}
if kind == "tf_saved_model":
    import tensorflow as tf
    loaded = tf.saved_model.load(path)  # keep it: its variables die with it
    serve = loaded.serve
    for b in [1, 7, 32, 256]:
        results[str(b)] = {k: v.numpy() for k, v in serve(tf.constant(x[:b])).items()}
else:
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for b in [1, 7, 32, 256]:
        results[str(b)] = dict(zip(names, session.run(None, {"images": x[:b]})))
assert not any(m.startswith("condnet") for m in sys.modules), "condnet was imported"
if kind == "onnx":
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules
np.savez(out, **{f"{b}/{k}": v for b, r in results.items() for k, v in r.items()})
"""


def _run_standalone(path, kind, x, tmp_path):
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / f"{kind}.npz"
    subprocess.run(
        [sys.executable, "-c", STANDALONE, str(path), kind, str(tmp_path / "x.npy"), str(out)],
        check=True,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    loaded = np.load(out)
    return {b: {k: loaded[f"{b}/{k}"] for k in ("classes", "groups", "route")} for b in BATCH_SIZES}


def _assert_matches_predict(model, x, results):
    expected = model.predict(x, batch_size=64, verbose=0)
    for b, outputs in results.items():
        np.testing.assert_allclose(outputs["classes"], expected["classes"][:b], atol=1e-5)
        np.testing.assert_allclose(outputs["groups"], expected["groups"][:b], atol=1e-5)
        np.testing.assert_array_equal(outputs["route"], expected["route"][:b])


@pytest.fixture(scope="module")
def image_model():
    hierarchy = Hierarchy({"a": ["p", "q"], "b": ["r", "s", "t"], "c": ["u"], "d": ["v", "w"]})
    model = build_image_model(hierarchy, image_size=16, filters=(4, 8, 8), routing="hard")
    rng = np.random.default_rng(0)
    colours = rng.uniform(0, 255, (256, 1, 1, 3))
    x = np.clip(colours + rng.normal(0, 30, (256, 16, 16, 3)), 0, 255).astype("float32")
    model(x[:2])
    spread_gate(model, x)
    return model, x


def spread_gate(model, x):
    """An untrained gate sends every row to one group. Give its last layer logits that
    make each group win a quarter-like share of these rows, whatever the random
    initialisation: project the gate's hidden features on their main direction and let
    the group whose centre (a quantile of that projection) is nearest win. Nearest
    centre in one dimension is linear: logit_g = c_g * p - c_g**2 / 2."""
    import keras

    dense = [layer for layer in model.gate.layers if layer.get_weights()][-1]
    taps = model.tap_features(x)
    hidden = keras.Model(model.gate.inputs, dense.input)(taps[model.gate_tap])
    hidden = np.asarray(keras.ops.convert_to_numpy(hidden), "float64")
    mean = hidden.mean(axis=0)
    direction = np.linalg.svd(hidden - mean, full_matrices=False)[2][0]
    projection = (hidden - mean) @ direction
    groups = dense.get_weights()[1].shape[0]
    centres = np.quantile(projection, (np.arange(groups) + 0.5) / groups)
    scale = 4.0 / projection.var()  # a group two logits above its neighbours at its centre
    kernel = scale * np.outer(direction, centres)
    bias = -scale * ((mean @ direction) * centres + centres**2 / 2)
    dense.set_weights([kernel.astype("float32"), bias.astype("float32")])


@pytest.mark.parametrize("kind", ["tf_saved_model", "onnx"])
def test_an_exported_image_model_routes_like_predict_at_every_batch_size(
    kind, image_model, tmp_path
):
    model, x = image_model
    routes = model.predict(x, verbose=0)["route"]
    assert len(set(routes)) == model.hierarchy.num_groups  # every expert sees rows
    path = export_model(model, tmp_path / ("model.onnx" if kind == "onnx" else "saved"), kind)
    _assert_matches_predict(model, x, _run_standalone(path, kind, x, tmp_path))


def test_the_onnx_graph_runs_each_expert_inside_an_if(image_model, tmp_path):
    import onnx

    model, _ = image_model
    graph = onnx.load(export_model(model, tmp_path / "m.onnx", "onnx")).graph
    branches = [n for n in graph.node if n.op_type == "If"]
    assert len(branches) == model.hierarchy.num_groups
    outside = {n.op_type for n in graph.node}
    then = [n for b in branches for a in b.attribute if a.name == "then_branch" for n in a.g.node]
    inside = {n.op_type for n in then}
    # The trunk's convolutions run for every row; each expert's only in its branch.
    expert_convolutions = sum(n.op_type == "Conv" for n in then)
    assert "Conv" in outside and "NonZero" in outside and "ScatterND" in inside
    assert expert_convolutions == 2 * 3  # three groups of several classes, two convs each


def test_the_onnx_file_names_its_groups_and_classes_in_output_order(image_model, tmp_path):
    import json

    onnx = pytest.importorskip("onnx")
    model, _ = image_model
    proto = onnx.load(export_model(model, tmp_path / "m.onnx", "onnx"))
    metadata = {prop.key: json.loads(prop.value) for prop in proto.metadata_props}
    assert metadata == {
        "classes": ["p", "q", "r", "s", "t", "u", "v", "w"],
        "groups": ["a", "b", "c", "d"],
        "hierarchy": {"a": ["p", "q"], "b": ["r", "s", "t"], "c": ["u"], "d": ["v", "w"]},
    }
    assert metadata["classes"] == list(model.hierarchy.classes)


def _poisoned_model(routing="hard", **kwargs):
    """Rows with x[:, 0] > 0 go to `cat`; the `dog` expert outputs NaN wherever it runs."""
    model = cats_and_dogs_model(routing=routing, gate=sign_gate(), **kwargs)
    model(np.zeros((1, 8), "float32"))
    dog = model.experts["dog"]
    dog.set_weights([np.full_like(w, np.nan) for w in dog.get_weights()])
    return model


@pytest.mark.parametrize("kind", ["tf_saved_model", "onnx"])
def test_rows_never_touch_the_experts_they_were_not_routed_to(kind, tmp_path):
    # If the dog expert ran on a row at all (dense one-hot selection: 0 x NaN),
    # that row's classes would be NaN. Routed, cat rows stay finite.
    model = _poisoned_model()
    x = np.random.default_rng(1).normal(size=(256, 8)).astype("float32")
    x[:, 0] = np.abs(x[:, 0]) + 0.5
    x[200:, 0] *= -1  # the last rows go to the dog expert
    path = export_model(model, tmp_path / ("m.onnx" if kind == "onnx" else "saved"), kind)
    results = _run_standalone(path, kind, x, tmp_path)
    for b, outputs in results.items():
        assert np.isfinite(outputs["classes"][:200]).all(), b
    assert np.isnan(results[256]["classes"][200:, 2:]).all()
    soft = export_model(model, tmp_path / "soft.onnx", "onnx", routing="soft")
    # The all-experts artifact runs the dog expert on cat rows too: NaN in its columns.
    assert np.isnan(_run_standalone(soft, "onnx", x, tmp_path)[1]["classes"][:, 2:]).all()


@pytest.mark.parametrize("kind", ["tf_saved_model", "onnx"])
def test_hedging_rows_and_nested_experts_export_as_they_predict(kind, tmp_path):
    inner = ConditionalModel(
        Hierarchy({"small": ["pug"], "big": ["beagle", "boxer"]}),
        gate=mlp(2, name="inner_gate", seed=7),
        experts={"small": None, "big": mlp(2, name="big", seed=9)},
        routing="hard",
    )
    model = ConditionalModel(
        Hierarchy(
            {"cat": ["persian", "siamese"], "dog": {"small": ["pug"], "big": ["beagle", "boxer"]}}
        ),
        gate=mlp(2, name="gate", seed=5),
        experts={"cat": mlp(2, name="cat", seed=2), "dog": inner},
        routing="hard",
        confidence_threshold=0.9,
    )
    x = np.random.default_rng(2).normal(size=(256, 8)).astype("float32")
    model(x[:2])
    groups = model.predict(x, verbose=0)["groups"]
    assert (groups.max(axis=1) < 0.9).any()  # some rows hedge and run both experts
    path = export_model(model, tmp_path / ("m.onnx" if kind == "onnx" else "saved"), kind)
    _assert_matches_predict(model, x, _run_standalone(path, kind, x, tmp_path))


def test_soft_export_is_the_mixture_of_every_expert(tmp_path):
    model = cats_and_dogs_model(routing="hard")
    x = np.random.default_rng(3).normal(size=(256, 8)).astype("float32")
    model(x[:2])
    path = export_model(model, tmp_path / "soft.onnx", "onnx", routing="soft")
    model.routing = "soft"
    _assert_matches_predict(model, x, _run_standalone(path, "onnx", x, tmp_path))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"format": "torchscript"}, "format must be one of"),
        ({"routing": "gumbel"}, "routing must be one of"),
        ({"input_shape": (0, 8)}, "input_shape must be"),
    ],
)
def test_bad_export_arguments_say_what_was_received(kwargs, message, tmp_path):
    model = cats_and_dogs_model()
    model(np.zeros((1, 8), "float32"))
    with pytest.raises(ValueError, match=message) as error:
        export_model(model, tmp_path / "out", **kwargs)
    assert "Received" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_model_that_is_not_conditional_is_refused(tmp_path):
    flat = mlp(3)
    with pytest.raises(ValueError, match="built ConditionalModel") as error:
        export_model(flat, tmp_path / "out")
    assert "Functional" in str(error.value)
    assert not list(tmp_path.iterdir())


def test_a_missing_exporter_names_the_extra_that_installs_it(monkeypatch, tmp_path):
    import importlib

    real = importlib.import_module

    def without_tf2onnx(name, *args):
        if name == "tf2onnx":
            raise ImportError("No module named 'tf2onnx'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_tf2onnx)
    model = cats_and_dogs_model()
    model(np.zeros((1, 8), "float32"))
    with pytest.raises(ImportError, match=r"pip install 'condnet\[export\]'"):
        export_model(model, tmp_path / "m.onnx", "onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("routing", ["hard", "soft"])
@pytest.mark.parametrize("kind", ["tf_saved_model", "onnx"])
def test_images_with_nan_or_infinity_have_no_prediction_exported_as_in_predict(
    kind, routing, image_model, tmp_path
):
    # TensorFlow's fused convolutions turn NaN pixels into 0 and ONNX Runtime keeps
    # them: without a rule on the input, predict and the export answered differently.
    if kind == "onnx":
        pytest.importorskip("onnxruntime")
    model, x = image_model
    x = x[:8].copy()
    x[0] = np.nan
    x[1, 3, 4, 1] = np.inf
    x[2, 0, 0, 0] = -np.inf
    model.routing = routing
    try:
        expected = model.predict(x, verbose=0)
        path = export_model(
            model, tmp_path / ("m.onnx" if kind == "onnx" else "saved"), kind, routing=routing
        )
        np.testing.assert_array_equal(expected["route"][:3], -1)
        assert np.isnan(expected["classes"][:3]).all() and np.isnan(expected["groups"][:3]).all()
        assert np.isfinite(expected["classes"][3:]).all() and (expected["route"][3:] >= 0).all()
        # NaN where predict has NaN, the same routes, the same probabilities elsewhere.
        _assert_matches_predict(model, x, _run_standalone(path, kind, x, tmp_path))
    finally:
        model.routing = "hard"


def test_predict_flags_only_array_rows_that_are_not_finite():
    from condnet.models.conditional_model import flag_non_finite

    outputs = {"classes": np.ones((3, 2), "float32"), "route": np.array([1, 0, 1], "int32")}
    x = np.zeros((3, 4), "float32")
    x[1, 2] = np.nan
    flagged = flag_non_finite(x, outputs)
    np.testing.assert_array_equal(flagged["route"], [1, -1, 1])
    assert np.isnan(flagged["classes"][1]).all() and flagged["classes"].dtype == np.float32
    assert flag_non_finite(x[[0, 2]], outputs) is outputs  # nothing to flag: left as it is
    assert flag_non_finite(np.full((3, 4), 7, "uint8"), outputs) is outputs


def test_an_ensemble_is_refused_with_what_to_do_instead(tmp_path):
    from condnet.models.ensemble import Ensemble

    model = cats_and_dogs_model()
    model(np.zeros((1, 8), "float32"))
    ensemble = Ensemble(model.hierarchy, [model])
    ensemble(np.zeros((1, 8), "float32"))
    with pytest.raises(ValueError, match="has no routing of its own; save it with model.save"):
        export_model(ensemble, tmp_path / "m.onnx", "onnx")
    assert not list(tmp_path.iterdir())


def test_a_mixed_bfloat16_model_exports_to_onnx_in_float32(image_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from condnet.models.precision import with_precision

    model, x = image_model
    mixed = with_precision(model, "mixed_bfloat16")  # as trained on a recent GPU
    path = export_model(mixed, tmp_path / "mixed.onnx", "onnx")
    results = _run_standalone(path, "onnx", x, tmp_path)  # onnxruntime loads it
    _assert_matches_predict(model, x, results)  # the exact float32 model


# === Documents ===


@pytest.fixture(scope="module")
def text_model():
    """A text model with its vectorizer (a vocabulary of 8 words: the others are out of
    it), its gate spread over the groups, and 256 documents of 1 to 30 words, some in
    upper case or with punctuation."""
    from condnet.data.text import make_vectorizer
    from condnet.text.text_model import build_text_model

    words = "purr whisker kitten bark leash puppy ticket bus stop engine wheel Sedan! the,".split()
    rng = np.random.default_rng(4)
    documents = [" ".join(rng.choice(words, size=rng.integers(1, 31))) for _ in range(256)]
    hierarchy = Hierarchy({"animals": ["cat", "dog"], "vehicles": ["bus", "car", "van"]})
    vectorizer = make_vectorizer(documents[:100], vocabulary_size=10, sequence_length=16)
    model = build_text_model(
        hierarchy, vectorizer.vocabulary_size(), 16, "cnn", routing="hard", preprocessor=vectorizer
    )
    ids = model.preprocess(documents)
    model(ids[:2])
    spread_gate(model, ids)
    return model, np.array(documents)


def test_a_text_model_exports_a_saved_model_that_reads_strings_and_routes_like_predict(
    text_model, tmp_path
):
    model, documents = text_model
    assert len(set(model.predict(documents, verbose=0)["route"])) == 2  # both experts see rows
    path = export_model(model, tmp_path / "saved", "tf_saved_model")
    results = _run_standalone(path, "tf_saved_model", documents, tmp_path)  # no condnet there
    _assert_matches_predict(model, documents, results)


def test_a_text_model_is_refused_by_onnx_with_the_format_that_carries_it(text_model, tmp_path):
    model, _ = text_model
    with pytest.raises(
        ValueError, match="cannot be exported to ONNX: its TextVectorization"
    ) as error:
        export_model(model, tmp_path / "m.onnx", "onnx")
    assert "--format tf_saved_model" in str(error.value) and "Received: format='onnx'" in str(
        error.value
    )
    assert not list(tmp_path.iterdir())


def test_a_hub_text_model_needs_tensorflow_text_for_a_saved_model_of_strings(tmp_path):
    import importlib.util

    keras_hub = pytest.importorskip("keras_hub")
    if importlib.util.find_spec("tensorflow_text") is not None:
        pytest.skip("tensorflow-text is installed: the SavedModel can hold the tokenizer")
    from condnet.testing import tiny_bert_preset
    from condnet.text.hub_text_model import build_hub_text_model

    preset = tiny_bert_preset(keras_hub, tmp_path / "preset", ["a", "cat", "bus"])
    model = build_hub_text_model({"a": ["x", "y"], "b": ["z", "w"]}, preset, 8, routing="hard")
    with pytest.raises(ImportError, match=r"HubTokenizer inside its TensorFlow graph.*pip install"):
        export_model(model, tmp_path / "saved", "tf_saved_model")
    assert not (tmp_path / "saved").exists()  # refused before anything is written

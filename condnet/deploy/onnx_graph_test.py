"""The routing graph built from hand-written ONNX pieces (no TensorFlow or tf2onnx needed)."""

import numpy as np
import pytest

from condnet.deploy.onnx_graph import OPSET, routed_onnx

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

KERNELS = {0: np.array([[1.0, 2.0], [3.0, 4.0]]), 1: np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 1.0]])}


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "piece", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _value(name, shape, kind=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, kind, shape)


def _front():
    """Two groups; the input holds each row's route weights (the gate's probabilities as
    `groups`, its arg max as `route`) and is the features the experts read (`tap`)."""
    nodes = [
        helper.make_node("Identity", ["images"], ["groups"]),
        helper.make_node("Identity", ["images"], ["weights"]),
        helper.make_node("Identity", ["images"], ["tap"]),
        helper.make_node("ArgMax", ["images"], ["arg_max"], axis=1, keepdims=0),
        helper.make_node("Cast", ["arg_max"], ["route"], to=TensorProto.INT32),
        helper.make_node("ReduceMax", ["images"], ["largest"], axes=[1], keepdims=1),
        helper.make_node("IsNaN", ["largest"], ["nan"]),
        helper.make_node("Not", ["nan"], ["finite"]),
    ]
    outputs = [_value(n, ["batch", 2]) for n in ("groups", "weights", "tap")]
    outputs += [_value("route", ["batch"], TensorProto.INT32)]
    outputs += [_value("finite", ["batch", 1], TensorProto.BOOL)]
    return _model(nodes, [_value("images", ["batch", 2])], outputs)


def _expert(g, fails=False):
    """features @ KERNELS[g]; `fails`: the expert fails whenever it runs (an index past
    its kernel's rows), so that a test sees whether it ran."""
    kernel = numpy_helper.from_array(KERNELS[g].astype("float32"), "kernel")
    nodes = [helper.make_node("MatMul", ["x", "kernel"], ["y"])]
    initializers = [kernel]
    if fails:
        rows = numpy_helper.from_array(np.array([0, 7], np.int64), "past_the_end")
        initializers.append(rows)  # the right shape for MatMul, so only running it fails
        nodes = [
            helper.make_node("Gather", ["kernel", "past_the_end"], ["bad"], axis=0),
            helper.make_node("MatMul", ["x", "bad"], ["y"]),
        ]
    width = KERNELS[g].shape[1]
    return _model(nodes, [_value("x", ["rows", 2])], [_value("y", ["rows", width])], initializers)


def _routed(routing, fails=(), metadata=None):
    experts = {g: (_expert(g, fails=g in fails), "tap") for g in KERNELS}
    widths = {g: kernel.shape[1] for g, kernel in KERNELS.items()}
    model = routed_onnx(_front(), experts, widths, routing, metadata)
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return model, lambda x: session.run(None, {"images": np.asarray(x, "float32")})


def _expected(x, weights):
    """Each group's block: its expert's classes times the row's weight for the group."""
    return np.concatenate([(x @ KERNELS[g]) * weights[:, g : g + 1] for g in KERNELS], axis=1)


def test_hard_routing_gives_each_row_its_own_experts_classes_and_zeros_elsewhere():
    _, run = _routed("hard")
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    classes, groups, route = run(x)
    np.testing.assert_allclose(classes, _expected(x, x), rtol=1e-6)
    assert classes.shape == (4, 5) and (classes[[0, 3], 2:] == 0).all()
    np.testing.assert_array_equal(groups, x)
    np.testing.assert_array_equal(route, [0, 1, 1, 0])


def test_hard_routing_skips_an_expert_that_no_row_routes_to():
    _, run = _routed("hard", fails={1})
    x = np.array([[1.0, 0.0], [1.0, 0.0]])
    (classes, _, _) = run(x)  # expert 1 would fail had it run
    np.testing.assert_allclose(classes, _expected(x, x), rtol=1e-6)
    with pytest.raises(Exception, match="(?i)indices|out of bounds"):
        run(np.array([[1.0, 0.0], [0.0, 1.0]]))  # one row routes to it: it runs, and fails


def test_hard_routing_of_a_batch_of_one_runs_its_one_expert():
    _, run = _routed("hard", fails={0})
    (classes, _, route) = run(np.array([[0.0, 1.0]]))
    np.testing.assert_allclose(classes, [[0.0, 0.0, 0.5, 2.0, 1.0]], rtol=1e-6)
    np.testing.assert_array_equal(route, [1])


def test_soft_routing_weights_every_expert_on_every_row():
    _, run = _routed("soft")
    x = np.array([[0.25, 0.75], [0.9, 0.1]])
    (classes, _, route) = run(x)
    np.testing.assert_allclose(classes, _expected(x, x), rtol=1e-6)
    assert (classes != 0).all()  # every expert ran on every row
    np.testing.assert_array_equal(route, [1, 0])


@pytest.mark.parametrize("routing", ["hard", "soft"])
def test_a_row_that_is_not_finite_gets_nan_classes_and_the_others_keep_theirs(routing):
    _, run = _routed(routing)
    x = np.array([[1.0, 0.0], [np.nan, 1.0]])
    (classes, _, _) = run(x)
    assert np.isnan(classes[1]).all()
    np.testing.assert_allclose(classes[0], _expected(x[:1], x[:1])[0], rtol=1e-6)


def test_the_routed_graph_carries_its_metadata_and_opset():
    model, _ = _routed("hard", metadata={"condnet.routing": "hard", "classes": "a,b"})
    assert {p.key: p.value for p in model.metadata_props} == {
        "condnet.routing": "hard",
        "classes": "a,b",
    }
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    assert [o.name for o in model.graph.output] == ["classes", "groups", "route"]

"""An ONNX graph that routes: the front, then each expert inside an `If` on its own rows.

tf2onnx converts the front (trunk + gate + route weights) and each expert
as graphs of their own; tf2onnx cannot convert a convolution inside a
TensorFlow `cond` (the frozen kernel loses its shape in the branch), so the
routing around them is written here in ONNX ops:

    weight = Gather(weights, g, axis=1)          # (batch,)
    rows = Squeeze(Transpose(NonZero(weight > 0)))
    If(Size(rows) > 0):
        then: ScatterND(zeros, rows, expert(Gather(features, rows)) * weight[rows])
        else: zeros                               # the expert does not run
    classes = Where(finite, Concat(blocks of every group), NaN)

Sub-batches have dynamic sizes, so no capacity buffer is needed and no row is
dropped; a batch of one runs one expert.
"""

import numpy as np

OPSET = 17


def routed_onnx(front, experts, num_classes_of, routing, metadata=None):
    """Compose converted pieces into one ModelProto.

    Args:
        front: ModelProto with input `images` and outputs `finite` ((batch, 1)
            bool: the rows whose image is finite; the others get NaN classes),
            `groups`, `route`, `weights` and one output per tap name that an
            expert reads.
        experts: {group index: (ModelProto with one input and one output, tap output name)}.
        num_classes_of: {group index: number of classes of that group}.
        routing: "hard" (each expert in an `If` on its rows) or "soft" (every expert, every row).
        metadata: {key: text} written to the model's `metadata_props`.
    """
    import onnx
    from onnx import TensorProto, compose, helper

    main = compose.add_prefix_graph(front.graph, "front/", rename_inputs=False)
    nodes = list(main.node)
    initializers = list(main.initializer)
    constants = {
        "zero": np.array(0.0, np.float32),
        "zero_rows": np.array(0, np.int64),
        "axis1": np.array([1], np.int64),
        "first": np.array([0], np.int64),
        "nan": np.array(np.nan, np.float32),
    }
    for name, value in constants.items():
        initializers.append(onnx.numpy_helper.from_array(value, f"routing/{name}"))
    nodes.append(helper.make_node("Shape", ["front/groups"], ["routing/shape"]))
    nodes.append(
        helper.make_node("Gather", ["routing/shape", "routing/first"], ["routing/batch"], axis=0)
    )
    blocks = []
    for g, (expert, tap) in sorted(experts.items()):
        block, more_nodes, more_initializers = _block(
            g, expert, f"front/{tap}", num_classes_of[g], routing, helper, compose, onnx
        )
        nodes += more_nodes
        initializers += more_initializers
        blocks.append(block)
    nodes.append(helper.make_node("Concat", blocks, ["routing/classes"], axis=1))
    nodes.append(
        helper.make_node("Where", ["front/finite", "routing/classes", "routing/nan"], ["classes"])
    )
    nodes.append(helper.make_node("Identity", ["front/groups"], ["groups"]))
    nodes.append(helper.make_node("Identity", ["front/route"], ["route"]))
    outputs = [
        helper.make_tensor_value_info("classes", TensorProto.FLOAT, ["batch", None]),
        helper.make_tensor_value_info("groups", TensorProto.FLOAT, ["batch", None]),
        helper.make_tensor_value_info("route", TensorProto.INT32, ["batch"]),
    ]
    graph = helper.make_graph(
        nodes, "condnet_routed", list(front.graph.input), outputs, initializers
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="condnet",
    )
    helper.set_model_props(model, metadata or {})
    onnx.checker.check_model(model)
    return model


def _block(g, expert, features, width, routing, helper, compose, onnx):
    """(output name, nodes, initializers) of group g's (batch, width) block of `classes`."""
    p = f"group{g}/"
    sub = compose.add_prefix_graph(expert.graph, f"{p}expert/")
    expert_in, expert_out = sub.input[0].name, sub.output[0].name
    index = onnx.numpy_helper.from_array(np.array(g, np.int64), f"{p}index")
    size = onnx.numpy_helper.from_array(np.array([width], np.int64), f"{p}width")
    nodes = [helper.make_node("Gather", ["front/weights", f"{p}index"], [f"{p}weight"], axis=1)]
    if routing == "soft":
        nodes += [helper.make_node("Identity", [features], [expert_in])]
        nodes += list(sub.node)
        nodes += [
            helper.make_node("Unsqueeze", [f"{p}weight", "routing/axis1"], [f"{p}w"]),
            helper.make_node("Mul", [expert_out, f"{p}w"], [f"{p}block"]),
        ]
        return f"{p}block", nodes, [index, size, *sub.initializer]
    nodes += [
        helper.make_node("Greater", [f"{p}weight", "routing/zero"], [f"{p}chosen"]),
        helper.make_node("NonZero", [f"{p}chosen"], [f"{p}nonzero"]),
        helper.make_node("Transpose", [f"{p}nonzero"], [f"{p}indices"], perm=[1, 0]),
        helper.make_node("Squeeze", [f"{p}indices", "routing/axis1"], [f"{p}rows"]),
        helper.make_node("Size", [f"{p}rows"], [f"{p}count"]),
        helper.make_node("Greater", [f"{p}count", "routing/zero_rows"], [f"{p}any"]),
        helper.make_node("Concat", ["routing/batch", f"{p}width"], [f"{p}shape"], axis=0),
        helper.make_node(
            "ConstantOfShape",
            [f"{p}shape"],
            [f"{p}zeros"],
            value=onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0]),
        ),
    ]
    then_nodes = [
        helper.make_node("Gather", [features, f"{p}rows"], [expert_in], axis=0),
        *sub.node,
        helper.make_node("Gather", [f"{p}weight", f"{p}rows"], [f"{p}row_weight"]),
        helper.make_node("Unsqueeze", [f"{p}row_weight", "routing/axis1"], [f"{p}w"]),
        helper.make_node("Mul", [expert_out, f"{p}w"], [f"{p}weighted"]),
        helper.make_node(
            "ScatterND", [f"{p}zeros", f"{p}indices", f"{p}weighted"], [f"{p}scattered"]
        ),
    ]
    value = helper.make_tensor_value_info
    then_branch = helper.make_graph(
        then_nodes,
        f"{p}run",
        [],
        [value(f"{p}scattered", onnx.TensorProto.FLOAT, None)],
        list(sub.initializer),
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", [f"{p}zeros"], [f"{p}skipped"])],
        f"{p}skip",
        [],
        [value(f"{p}skipped", onnx.TensorProto.FLOAT, None)],
    )
    nodes.append(
        helper.make_node(
            "If",
            [f"{p}any"],
            [f"{p}block"],
            then_branch=then_branch,
            else_branch=else_branch,
        )
    )
    return f"{p}block", nodes, [index, size]

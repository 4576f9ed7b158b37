import math

import keras
import pytest
from keras import layers

from condnet.evaluation.cost import count_macs, count_params, routed_macs
from condnet.hierarchy import Hierarchy
from condnet.vision.image_model import build_image_model


def _model(input_shape, *stack):
    inputs = keras.Input(input_shape)
    x = inputs
    for layer in stack:
        x = layer(x)
    return keras.Model(inputs, x)


# === Hand-computed counts ===


def test_dense_counts_inputs_times_units():
    model = _model((8,), layers.Dense(4), layers.Dense(2))
    assert count_macs(model) == 8 * 4 + 4 * 2


def test_dense_on_sequence_counts_every_position():
    model = _model((5, 8), layers.Dense(4))
    assert count_macs(model) == 5 * 8 * 4


@pytest.mark.parametrize(
    "padding, strides, side",
    [("same", 1, 8), ("valid", 1, 6), ("same", 2, 4), ("valid", 2, 3)],
)
def test_conv2d_counts_kernel_times_output_positions(padding, strides, side):
    model = _model((8, 8, 3), layers.Conv2D(4, 3, strides=strides, padding=padding))
    assert count_macs(model) == side * side * (3 * 3 * 3) * 4


def test_grouped_conv_divides_input_channels():
    model = _model((8, 8, 4), layers.Conv2D(6, 3, padding="same", groups=2))
    assert count_macs(model) == 8 * 8 * (3 * 3 * 2) * 6


def test_conv1d_and_conv3d_count_their_output_positions():
    assert count_macs(_model((10, 3), layers.Conv1D(4, 3))) == 8 * 3 * 3 * 4
    model = _model((4, 4, 4, 2), layers.Conv3D(5, 3, padding="same"))
    assert count_macs(model) == 4**3 * 3**3 * 2 * 5


def test_depthwise_conv_counts_one_filter_per_channel():
    model = _model((8, 8, 3), layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"))
    assert count_macs(model) == 8 * 8 * (3 * 3) * 3 * 2


def test_separable_conv_counts_depthwise_plus_pointwise():
    model = _model((8, 8, 3), layers.SeparableConv2D(4, 3, padding="same"))
    assert count_macs(model) == 8 * 8 * (3 * 3 * 3 + 3 * 4)


def test_conv_transpose_counts_input_positions():
    model = _model((4, 4, 3), layers.Conv2DTranspose(4, 3, strides=2, padding="same"))
    assert count_macs(model) == 4 * 4 * (3 * 3) * 3 * 4


def test_elementwise_layers_count_zero():
    model = _model(
        (8, 8, 3),
        layers.BatchNormalization(),
        layers.ReLU(),
        layers.MaxPooling2D(),
        layers.LayerNormalization(),
        layers.GlobalAveragePooling2D(),
    )
    total, macs_per_layer, unknown = count_macs(model, return_details=True)
    assert total == 0
    assert len(macs_per_layer) == 5
    assert unknown == []


def test_embedding_counts_zero():
    model = _model((5,), layers.Embedding(100, 8), layers.Dense(2))
    assert count_macs(model) == 5 * 8 * 2


# === Graphs ===


def test_nested_model_is_counted_once_per_call():
    sub = keras.Sequential([keras.Input((8,)), layers.Dense(4, name="dense")], name="sub")
    inputs = keras.Input((8,))
    merged = layers.Add(name="add")([sub(inputs), sub(inputs)])
    model = keras.Model(inputs, layers.Dense(3, name="head")(merged))
    total, macs_per_layer, _ = count_macs(model, return_details=True)
    assert total == 2 * 8 * 4 + 4 * 3
    assert macs_per_layer == {"sub/dense": 64, "add": 0, "head": 12}


def test_shared_layer_is_counted_once_per_call():
    shared = layers.Dense(4)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, shared(shared(inputs)))
    assert count_macs(model) == 2 * 4 * 4


def test_nested_functional_uses_the_shape_it_is_called_with():
    image = keras.Input((None, None, 3))
    fcn = keras.Model(image, layers.Conv2D(4, 3, padding="same")(image), name="fcn")
    outer_input = keras.Input((16, 16, 3))
    outer = keras.Model(outer_input, fcn(outer_input))
    assert count_macs(outer) == 16 * 16 * 27 * 4


def test_input_shape_overrides_a_variable_size():
    image = keras.Input((None, None, 3))
    model = keras.Model(image, layers.Conv2D(4, 3, padding="same")(image))
    assert count_macs(model, input_shape=(8, 8, 3)) == 8 * 8 * 27 * 4
    assert count_macs(model, input_shape=(16, 16, 3)) == 16 * 16 * 27 * 4


def test_multi_input_model_takes_one_shape_per_input():
    a, b = keras.Input((4,)), keras.Input((6,))
    merged = layers.Concatenate()([layers.Dense(2)(a), layers.Dense(3)(b)])
    model = keras.Model([a, b], layers.Dense(1)(merged))
    assert count_macs(model) == 4 * 2 + 6 * 3 + 5 * 1
    with pytest.raises(ValueError, match="has 2 inputs but input_shape describes 1"):
        count_macs(model, input_shape=(4,))


def test_single_layer_is_counted_with_input_shape():
    assert count_macs(layers.Dense(5), input_shape=(7,)) == 35


# === Applications ===


def _vgg16_conv_macs(side):
    stages = [[(3, 64), (64, 64)], [(64, 128), (128, 128)]]
    stages += [[(128, 256)] + [(256, 256)] * 2, [(256, 512)] + [(512, 512)] * 2]
    stages += [[(512, 512)] * 3]
    total = 0
    for stage in stages:
        total += sum(side * side * 9 * cin * cout for cin, cout in stage)
        side //= 2
    return total


@pytest.mark.slow
def test_vgg16_matches_analytic_count():
    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    assert count_macs(model) == _vgg16_conv_macs(32)


@pytest.mark.slow
@pytest.mark.parametrize(
    "application, published",
    [
        (keras.applications.ResNet50, 3.86e9),
        (keras.applications.EfficientNetB0, 0.39e9),
        (keras.applications.MobileNetV3Small, 56e6),
    ],
)
def test_applications_match_published_counts(application, published):
    model = application(weights=None, input_shape=(224, 224, 3))
    total, macs_per_layer, unknown = count_macs(model, return_details=True)
    assert unknown == []
    assert sum(macs_per_layer.values()) == total
    assert abs(total - published) / published < 0.03


# === Details and errors ===


def test_return_details_lists_unknown_layers_with_weights():
    tokens = keras.Input((5, 8))
    recurrent = layers.SimpleRNN(4, return_sequences=True, name="rnn")(tokens)
    model = keras.Model(tokens, layers.Dense(3, name="head")(recurrent))
    total, macs_per_layer, unknown = count_macs(model, return_details=True)
    assert total == 5 * 4 * 3
    assert macs_per_layer == {"rnn": 0, "head": 60}
    assert unknown == ["rnn"]


def _kernel_sizes(*kernels):
    return sum(math.prod(kernel.shape) for kernel in kernels)


@pytest.mark.parametrize("kind", [layers.GRU, layers.LSTM])
def test_recurrent_layers_count_their_kernels_at_every_step(kind):
    steps = 7
    tokens = keras.Input((steps, 8))
    recurrent = kind(6, return_sequences=True, name="rnn")
    bidirectional = layers.Bidirectional(kind(5), name="both")
    model = keras.Model(tokens, bidirectional(recurrent(tokens)))
    total, macs_per_layer, unknown = count_macs(model, return_details=True)
    assert unknown == []
    cell = recurrent.cell
    assert macs_per_layer["rnn"] == steps * _kernel_sizes(cell.kernel, cell.recurrent_kernel)
    cells = [bidirectional.forward_layer.cell, bidirectional.backward_layer.cell]
    both = sum(_kernel_sizes(c.kernel, c.recurrent_kernel) for c in cells)
    assert macs_per_layer["both"] == steps * both
    assert total == macs_per_layer["rnn"] + macs_per_layer["both"]


def test_self_attention_counts_its_projections_and_its_scores():
    steps, heads, key_dim = 5, 2, 4
    tokens = keras.Input((steps, 8))
    attention = layers.MultiHeadAttention(heads, key_dim, name="attention")
    model = keras.Model(tokens, attention(tokens, tokens))
    total, unknown = count_macs(model, return_details=True)[::2]
    projections = [attention.query_dense, attention.key_dense, attention.value_dense]
    kernels = _kernel_sizes(*[p.kernel for p in projections], attention.output_dense.kernel)
    assert unknown == []
    assert total == steps * kernels + 2 * steps * steps * heads * key_dim


def test_unbuilt_model_asks_for_input_shape():
    model = keras.Sequential([layers.Dense(3)])
    with pytest.raises(ValueError, match="not built yet.*pass the shape of one example"):
        count_macs(model)
    assert count_macs(model, input_shape=(4,)) == 12


def test_variable_size_asks_for_input_shape():
    image = keras.Input((None, None, 3))
    model = keras.Model(image, layers.Conv2D(4, 3)(image))
    with pytest.raises(ValueError, match=r"size is not fixed.*input_shape=\(224, 224, 3\)"):
        count_macs(model)


@pytest.mark.parametrize("input_shape", [(None, 8), (0, 3), ()])
def test_input_shape_must_be_one_example(input_shape):
    model = _model((8,), layers.Dense(2))
    with pytest.raises(ValueError, match="without the batch dimension"):
        count_macs(model, input_shape=input_shape)


def test_count_params_includes_non_trainable_weights():
    model = _model((8,), layers.Dense(4), layers.BatchNormalization())
    assert count_params(model) == (8 * 4 + 4) + 4 * 4


def test_count_params_of_unbuilt_model_says_to_build_it():
    with pytest.raises(ValueError, match="not built yet. Build it first"):
        count_params(keras.Sequential([layers.Dense(3)]))


class _Block(layers.Layer):
    """A Transformer block as keras-hub writes one: a layer of layers, not a graph."""

    def __init__(self, inner=None, **kwargs):
        super().__init__(**kwargs)
        self.attention = layers.MultiHeadAttention(2, 4)
        self.norm = layers.LayerNormalization()
        self.inner = inner or layers.Dense(16)
        self.outer = layers.Dense(8)

    def call(self, x):
        x = self.norm(x + self.attention(x, x))
        return x + self.outer(self.inner(x))


def test_a_layer_made_of_known_layers_counts_each_at_every_position():
    steps, block = 5, _Block(name="block")
    tokens = keras.Input((steps, 8))
    model = keras.Model(tokens, block(tokens))
    total, unknown = count_macs(model, return_details=True)[::2]
    attention = block.attention
    projections = [attention.query_dense, attention.key_dense, attention.value_dense]
    kernels = _kernel_sizes(*[p.kernel for p in projections], attention.output_dense.kernel)
    dense = steps * (8 * 16 + 16 * 8)
    assert unknown == []
    assert total == steps * kernels + 2 * steps * steps * 2 * 4 + dense


def test_a_layer_holding_a_layer_of_unknown_cost_stays_unknown():
    block = _Block(inner=layers.SimpleRNN(8, return_sequences=True), name="block")
    tokens = keras.Input((5, 8))
    model = keras.Model(tokens, block(tokens))
    assert count_macs(model, return_details=True)[2] == ["block"]


# === Routed cost of a condnet model ===

NESTED = Hierarchy(
    {
        "animals": {"pets": ["cat", "dog"], "wild": ["wolf", "fox", "bear"]},
        "vehicles": ["car", "ship"],
    }
)


def test_routed_macs_count_one_expert_and_all_experts():
    hierarchy = Hierarchy({"vehicles": ["car", "truck", "ship"], "animals": ["cat", "dog"]})
    model = build_image_model(hierarchy, image_size=32, filters=(8, 16, 32, 32))
    macs = routed_macs(model, (32, 32, 3))
    shared = macs["trunk"] + macs["gate"]
    assert macs["routes"] == {g: shared + macs["experts"][g] for g in hierarchy.groups}
    assert macs["routed"] == shared + max(macs["experts"].values())
    assert macs["all_experts"] == shared + sum(macs["experts"].values())


def test_routed_macs_of_a_nested_expert_count_its_costliest_route_and_soft_every_expert():
    model = build_image_model(NESTED, image_size=16, filters=(4, 8, 8))
    inner = model.experts["animals"]
    taps = model.tap_shapes((None, 16, 16, 3))
    tap = taps[model.expert_taps["animals"]][1:]
    inner_experts = [count_macs(e, tap) for e in inner.experts.values()]
    inner_gate = count_macs(inner.gate, tap)
    macs = routed_macs(model, (16, 16, 3))
    assert macs["experts"]["animals"] == inner_gate + max(inner_experts)  # one route per level
    shared = count_macs(model.trunk, (16, 16, 3)) + count_macs(model.gate, taps[model.gate_tap][1:])
    vehicles = count_macs(model.experts["vehicles"], taps[model.expert_taps["vehicles"]][1:])
    assert macs["routed"] == shared + max(inner_gate + max(inner_experts), vehicles)
    assert macs["all_experts"] == shared + inner_gate + sum(inner_experts) + vehicles


def test_routed_macs_of_a_flat_model_and_an_ensemble():
    from condnet.models.ensemble import Ensemble

    flat = _model((8,), layers.Dense(4))
    assert routed_macs(flat, (8,)) == {"routed": 32, "all_experts": 32}
    model = build_image_model(NESTED, image_size=16, filters=(4, 8, 8))
    single = routed_macs(model, (16, 16, 3))
    doubled = routed_macs(Ensemble(NESTED, [model, model]), (16, 16, 3))
    assert doubled == {"routed": 2 * single["routed"], "all_experts": 2 * single["all_experts"]}

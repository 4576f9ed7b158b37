"""A ConditionalModel for documents: token ids -> embeddings -> a text trunk -> heads.

The model reads int32 token ids `(batch, sequence_length)`, as a
`keras.layers.TextVectorization` adapted on the training documents gives
them (`condnet.data.text`), so that the compiled model holds no string op and
runs alike on TensorFlow, JAX and PyTorch. The trunk is one of the three the
Keras text-classification examples teach:

- `"bag"`: the mean of the embeddings of the document's words, padding left
  out (a bag of words, as fastText; Joulin et al. 2016). The cheapest: a routed
  document costs the gate's and one expert's Dense layers.
- `"cnn"`: two 1D convolutions (kernel 5, ReLU) with a max pooling between.
- `"gru"`: a bidirectional GRU over the sequence.
- `"transformer"`: one Transformer encoder block (self-attention and a
  feed-forward layer, residuals and layer normalisation) on token plus
  position embeddings.

The gate and every expert are heads on the trunk's features: global max
pooling of a sequence (the strongest evidence for a class anywhere in the
document, as the Keras 1D-CNN example pools; `"bag"` gives one vector already),
dropout, a softmax Dense in float32.
"""

import keras
from keras import layers, ops

from condnet.choices import HUB_TEXT_TRUNK, TEXT_TRUNKS
from condnet.hierarchy import Hierarchy
from condnet.models.conditional_model import ConditionalModel

TAP = "features"


def build_text_model(
    hierarchy,
    vocabulary_size,
    sequence_length=256,
    trunk="cnn",
    embedding_dim=64,
    width=128,
    dropout=0.3,
    routing="soft",
    **kwargs,
):
    """A ConditionalModel over token ids: a text trunk, a gate head, one head per group.

    Args:
        hierarchy: `Hierarchy` or dict. Groups and classes.
        vocabulary_size: int. Ids run from 0 to `vocabulary_size - 1` (the
            vectorizer's `vocabulary_size()`).
        sequence_length: int. Ids per document. Defaults to 256.
        trunk: `"bag"`, `"cnn"`, `"gru"` or `"transformer"`. Defaults to
            `"cnn"`.
        embedding_dim: int. Defaults to 64.
        width: int. Filters of the convolutions, units of the GRU (both
            directions together) or of the encoder's feed-forward layer.
            Defaults to 128.
        dropout: float. Before each head's classifier. Defaults to 0.3.
        routing: str. Routing of the ConditionalModel. Defaults to `"soft"`.
        **kwargs: passed to `ConditionalModel`.
    """
    hierarchy = hierarchy if isinstance(hierarchy, Hierarchy) else Hierarchy(hierarchy)
    _check(vocabulary_size, sequence_length, trunk, embedding_dim, width)
    features = text_trunk(vocabulary_size, sequence_length, trunk, embedding_dim, width)
    return heads_on(features, hierarchy, dropout, routing, **kwargs)


def heads_on(trunk, hierarchy, dropout=0.3, routing="soft", **kwargs):
    """A ConditionalModel on a text trunk: a gate head and one head per group (`text_head`),
    all reading the trunk's `"features"` tap. `build_text_model` and
    `build_hub_text_model` assemble their models with it."""
    shape = tuple(trunk.output[TAP].shape[1:])

    def head(units, name):
        return text_head(shape, units, name, dropout)

    return ConditionalModel(
        hierarchy,
        trunk=trunk,
        gate=head(hierarchy.num_groups, "gate"),
        experts={group: _expert(hierarchy, group, head, routing) for group in hierarchy.groups},
        gate_tap=TAP,
        expert_taps={group: TAP for group in hierarchy.groups},
        routing=routing,
        **kwargs,
    )


def text_trunk(vocabulary_size, sequence_length, trunk="cnn", embedding_dim=64, width=128):
    """The trunk model: token ids -> `{"features": (steps, channels)}`."""
    tokens = keras.Input((sequence_length,), dtype="int32", name="tokens")
    x = layers.Embedding(vocabulary_size, embedding_dim, name="embedding")(tokens)
    if trunk == "bag":
        x = TokenMean(name="mean")(x, tokens)
    elif trunk == "cnn":
        x = layers.Conv1D(width, 5, activation="relu", name="conv_1")(x)
        x = layers.MaxPooling1D(2, name="pool_1")(x)
        x = layers.Conv1D(width, 5, activation="relu", name="conv_2")(x)
    elif trunk == "gru":
        recurrent = layers.GRU(max(1, width // 2), return_sequences=True)
        x = layers.Bidirectional(recurrent, name="bigru")(x)
    else:
        x = PositionEmbedding(sequence_length, name="positions")(x)
        x = encoder_block(x, heads=2, width=width)
    return keras.Model(tokens, {TAP: layers.Identity(name=TAP)(x)}, name="trunk")


def encoder_block(x, heads, width):
    """One Transformer encoder block (post-norm, as in Vaswani et al. 2017)."""
    channels = x.shape[-1]
    attention = layers.MultiHeadAttention(heads, max(1, channels // heads), name="attention")
    x = layers.Add(name="residual_1")([x, attention(x, x)])
    x = layers.LayerNormalization(name="norm_1")(x)
    hidden = layers.Dense(width, activation="relu", name="ffn_1")(x)
    x = layers.Add(name="residual_2")([x, layers.Dense(channels, name="ffn_2")(hidden)])
    return layers.LayerNormalization(name="norm_2")(x)


def text_head(input_shape, units, name, dropout):
    """A head on the trunk's features: global max pooling of a `(steps, channels)`
    sequence (a vector is read as it is), dropout, a float32 softmax."""
    inputs = keras.Input(input_shape)
    x = layers.GlobalMaxPooling1D()(inputs) if len(input_shape) == 2 else inputs
    x = layers.Dropout(dropout)(x) if dropout else x
    outputs = layers.Dense(units, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def _expert(hierarchy, group, head, routing):
    """One group's expert: None for a single class, a nested ConditionalModel for subgroups."""
    classes = hierarchy.classes_of(group)
    if len(classes) == 1:
        return None  # a single-class group needs no expert: its class has probability 1
    name = "expert_" + "".join(c if c.isalnum() or c in "_-" else "_" for c in group)
    sub = hierarchy.subhierarchy(group)
    if sub is None:
        return head(len(classes), name)
    return ConditionalModel(
        sub,
        gate=head(sub.num_groups, f"{name}_gate"),
        experts={g: _expert(sub, g, head, routing) for g in sub.groups},
        routing=routing,
        name=name,
    )


@keras.saving.register_keras_serializable(package="condnet")
class TokenMean(layers.Layer):
    """The mean of a document's token vectors over its tokens that are not padding:
    `(vectors (steps, channels), tokens (steps,))` -> `(channels,)`. A document of
    padding only gives zeros (Keras's masked average pooling would give NaN there).

    Args:
        pad_token_id: int. The id that pads a document: 0 for a `TextVectorization`,
            the preset tokenizer's `pad_token_id` for a keras-hub backbone (1 for
            RoBERTa). Defaults to 0.
    """

    def __init__(self, pad_token_id=0, **kwargs):
        super().__init__(**kwargs)
        self.pad_token_id = int(pad_token_id)

    def call(self, embeddings, tokens):
        real = ops.not_equal(ops.cast(tokens, "int32"), self.pad_token_id)
        real = ops.cast(real, embeddings.dtype)[..., None]
        total = ops.sum(embeddings * real, axis=-2)
        return total / ops.maximum(ops.sum(real, axis=-2), 1.0)

    def compute_output_shape(self, embeddings_shape, tokens_shape=None):
        return (*embeddings_shape[:-2], embeddings_shape[-1])

    def macs(self, input_shape, output_shape):
        """Additions and one division per channel, which `count_macs` does not count."""
        return 0

    def get_config(self):
        return {**super().get_config(), "pad_token_id": self.pad_token_id}


@keras.saving.register_keras_serializable(package="condnet")
class PositionEmbedding(layers.Layer):
    """Adds a learned embedding of each position to a `(steps, channels)` sequence."""

    def __init__(self, sequence_length, **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = int(sequence_length)

    def build(self, input_shape):
        self.positions = self.add_weight(
            shape=(self.sequence_length, input_shape[-1]), initializer="glorot_uniform"
        )

    def call(self, inputs):
        steps = ops.shape(inputs)[-2]
        return inputs + ops.cast(self.positions[:steps], inputs.dtype)

    def macs(self, input_shape, output_shape):
        """An addition, which `count_macs` does not count (as a bias)."""
        return 0

    def get_config(self):
        return {**super().get_config(), "sequence_length": self.sequence_length}


def _check(vocabulary_size, sequence_length, trunk, embedding_dim, width):
    if trunk == HUB_TEXT_TRUNK:
        raise ValueError(
            "trunk='hub' is a pretrained keras-hub backbone with its own tokenizer, not a "
            "trunk over this vocabulary: build it with "
            "condnet.text.hub_text_model.build_hub_text_model(hierarchy, preset). "
            "Received: trunk='hub'"
        )
    if trunk not in TEXT_TRUNKS:
        built_in = [name for name in TEXT_TRUNKS if name != HUB_TEXT_TRUNK]
        raise ValueError(f"`trunk` must be one of {built_in}. Received: trunk={trunk!r}")
    # The cnn trunk's two convolutions of 5 and its pooling need 13 ids; an id is 0
    # (padding), 1 (out of vocabulary) or a word.
    smallest = {"vocabulary_size": 3, "sequence_length": 13 if trunk == "cnn" else 1}
    sizes = dict(vocabulary_size=vocabulary_size, sequence_length=sequence_length)
    sizes.update(embedding_dim=embedding_dim, width=width)
    for name, value in sizes.items():
        if not (isinstance(value, int) and not isinstance(value, bool)):
            raise TypeError(f"`{name}` must be an int. Received: {name}={value!r}")
        if value < smallest.get(name, 1):
            raise ValueError(
                f"`{name}` must be at least {smallest.get(name, 1)} (trunk={trunk!r}). "
                f"Received: {name}={value}"
            )

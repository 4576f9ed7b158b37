"""A keras-hub text backbone preset as a text model's trunk, with the preset's own tokenizer.

`build_hub_text_model` reads two things from a preset (a built-in name, a
`kaggle://` / `hf://` handle, or a local preset directory, which works
offline): the pretrained backbone (BERT, RoBERTa, DistilBERT, ...) and its
`TextClassifierPreprocessor` (the preset's tokenizer and the packer that adds
its start and end tokens and pads). The preprocessor becomes the model's
`preprocessor` (`HubTokenizer`), so `model.keras` holds its vocabulary and
`predict` takes documents. As with the `TextVectorization` of the trunks
trained from scratch, the documents are tokenised eagerly, outside the
compiled step, and the compiled model reads token ids on TensorFlow, JAX and
PyTorch alike. keras-hub 0.32's tokenizers (WordPiece, byte-pair,
SentencePiece) run in Python there, without tensorflow-text; only a
TensorFlow graph holding the tokenizer (a SavedModel that takes strings)
needs tensorflow-text.

The trunk: token ids -> the backbone's inputs (the padding mask from the
preset's pad id, one segment) -> the backbone's token vectors -> their mean
over the tokens that are not padding, the tap `"features"` that the gate and
every expert read, as light heads read a pretrained image backbone's pooled
features. The mean rather than the first token's vector (or BERT's pooled
output): a frozen encoder's mean token vector is the better sentence feature
(Reimers and Gurevych 2019, arXiv 1908.10084), and every backbone has one.
The backbone is the trunk's layer `"backbone"`, frozen unless asked otherwise.
"""

import keras
from keras import layers, ops

from condnet.hierarchy import Hierarchy
from condnet.text.text_model import TAP, TokenMean, heads_on

# What a keras-hub text backbone may take; the trunk makes each from the token ids.
BACKBONE_INPUTS = ("token_ids", "padding_mask", "segment_ids")


def build_hub_text_model(
    hierarchy,
    preset,
    sequence_length=256,
    dropout=0.3,
    routing="soft",
    trainable_backbone=False,
    tokenizer=None,
    **kwargs,
):
    """A ConditionalModel on a keras-hub text backbone preset, reading documents.

    Needs `keras-hub` (`pip install "condnet[hub]"`).

    Args:
        hierarchy: `Hierarchy` or dict. Groups and classes.
        preset: str. A keras-hub text backbone preset: a built-in name such
            as `"bert_tiny_en_uncased"`, a `kaggle://` / `hf://` handle
            (downloaded once, then cached) or a local preset directory (saved
            with `save_to_preset`; works offline). It must hold a tokenizer.
        sequence_length: int. Token ids per document, start and end tokens
            included (the rest is cut). At most the backbone's
            `max_sequence_length`. Defaults to 256.
        dropout: float. Before each head's classifier. Defaults to 0.3.
        routing: str. Routing of the ConditionalModel. Defaults to `"soft"`.
        trainable_backbone: bool. `False` freezes the backbone (the gate and
            the experts train on its features, as on a pretrained image
            backbone); unfreeze it later to fine-tune. Defaults to `False`.
        tokenizer: `HubTokenizer` of the same preset and `sequence_length`
            (`hub_tokenizer`), e.g. the one the training documents were read
            with. Defaults to `None`: made here.
        **kwargs: passed to `ConditionalModel`.

    Returns:
        A `ConditionalModel` whose `preprocessor` is the preset's tokenizer:
        `predict` takes a list of strings.

    Example:

    ```python
    model = build_hub_text_model({"pets": ["cat", "dog"], "cars": ["bus", "van"]}, "bert_preset/")
    model.compile()
    model.predict(["my cat sleeps"])["route"]
    ```
    """
    hierarchy = hierarchy if isinstance(hierarchy, Hierarchy) else Hierarchy(hierarchy)
    _check_sequence_length(sequence_length)
    if tokenizer is None:
        tokenizer = hub_tokenizer(preset, sequence_length)
    elif not isinstance(tokenizer, HubTokenizer) or tokenizer.sequence_length != sequence_length:
        raise ValueError(
            f"`tokenizer` must be a HubTokenizer of {sequence_length} ids (the "
            "sequence_length), as hub_tokenizer(preset, sequence_length) makes. Received: "
            f"tokenizer={tokenizer!r:.100}"
        )
    keras_hub = _import_keras_hub(preset)
    backbone = _from_preset(keras_hub.models.Backbone, preset, "a backbone")
    embedded = getattr(backbone, "vocabulary_size", None)
    if embedded is not None and tokenizer.vocabulary_size() > embedded:
        raise ValueError(  # ids past the embedding: NaN on JAX, an error elsewhere
            f"The tokenizer has {tokenizer.vocabulary_size()} tokens, but the backbone of "
            f"{preset!r} embeds {embedded}: they come from different presets. Pass the "
            f"tokenizer of the same preset (hub_tokenizer(preset)). Received: preset={preset!r}"
        )
    trunk = hub_text_trunk(backbone, sequence_length, tokenizer.pad_token_id)
    trunk.get_layer("backbone").trainable = bool(trainable_backbone)
    return heads_on(trunk, hierarchy, dropout, routing, preprocessor=tokenizer, **kwargs)


def hub_tokenizer(preset, sequence_length=256):
    """The preset's `TextClassifierPreprocessor` as a `HubTokenizer`: documents -> int32
    token ids `(batch, sequence_length)`, start and end tokens included."""
    _check_sequence_length(sequence_length)
    keras_hub = _import_keras_hub(preset)
    preprocessor = _from_preset(
        keras_hub.models.TextClassifierPreprocessor,
        preset,
        "a text preprocessor (a tokenizer)",
        sequence_length=sequence_length,
    )
    tokenizer = HubTokenizer(preprocessor, name="tokenizer")
    _check_tokenizes(tokenizer, preset)
    return tokenizer


def hub_text_trunk(backbone, sequence_length, pad_token_id=0):
    """The trunk model: token ids `(sequence_length,)` -> `{"features": (hidden,)}`, the
    mean of `backbone`'s token vectors over the ids that are not `pad_token_id`.

    The backbone's layers up to its token vectors become the trunk's layer
    `"backbone"` (BERT's pooled output, which the mean does not read, is left out:
    it neither runs nor counts among the layers that fine-tuning unfreezes)."""
    names = _backbone_inputs(backbone)
    maximum = getattr(backbone, "max_sequence_length", None)
    if maximum is not None and sequence_length > maximum:
        raise ValueError(
            f"The backbone '{backbone.name}' reads at most {maximum} tokens per document. "
            f"Pass a sequence_length of {maximum} or less. "
            f"Received: sequence_length={sequence_length}"
        )
    encoder = keras.Model(backbone.input, _token_vectors(backbone), name="backbone")
    tokens = keras.Input((sequence_length,), dtype="int32", name="tokens")
    inputs = BackboneInputs(names, pad_token_id, name="backbone_inputs")(tokens)
    features = TokenMean(pad_token_id, name="mean")(encoder(inputs), tokens)
    return keras.Model(tokens, {TAP: layers.Identity(name=TAP)(features)}, name="trunk")


# === Layers ===


@keras.saving.register_keras_serializable(package="condnet")
class HubTokenizer(layers.Layer):
    """Documents -> the token ids a keras-hub text backbone reads, by the preset's preprocessor.

    Wraps a keras-hub `TextClassifierPreprocessor` (the preset's tokenizer,
    and a packer that adds the start and end tokens, pads and cuts to its
    `sequence_length`) and keeps the token ids: the trunk makes the padding
    mask and the segment ids from them (`BackboneInputs`). It is a
    `ConditionalModel`'s `preprocessor`: saved inside `model.keras` with
    the tokenizer's vocabulary, and run eagerly by `predict`. keras-hub
    0.32 tokenises eagerly in Python on every backend; inside a
    `tf.function` it needs tensorflow-text.

    Args:
        preprocessor: a keras-hub `TextClassifierPreprocessor`, e.g.
            `keras_hub.models.TextClassifierPreprocessor.from_preset(preset,
            sequence_length=128)`.

    Call arguments:
        inputs: a list or a 1D array of strings.

    Returns int32 token ids, `(batch, sequence_length)`.

    Example:

    ```python
    tokenizer = HubTokenizer(TextClassifierPreprocessor.from_preset("bert_preset/"))
    tokenizer(["the dog barks"])  # [[cls, the, dog, bark, ##s, sep, pad, ...]]
    ```
    """

    # What a TensorFlow graph holding it (a SavedModel that takes strings) needs:
    # keras-hub's tokenizers run tensorflow-text ops there (condnet.deploy.export checks).
    graph_requirements = ("tensorflow_text",)

    def __init__(self, preprocessor, **kwargs):
        for needed in ("tokenizer", "sequence_length"):
            if not hasattr(preprocessor, needed):
                raise TypeError(
                    "HubTokenizer wraps a keras-hub TextClassifierPreprocessor (it has a "
                    f"`tokenizer` and a `sequence_length`); this one has no `{needed}`. "
                    f"Received: preprocessor of type {type(preprocessor).__name__}"
                )
        super().__init__(**kwargs)
        self.preprocessor = preprocessor
        # Strings go to keras-hub as they are (its layers convert them themselves).
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.built = True

    @property
    def sequence_length(self):
        return int(self.preprocessor.sequence_length)

    @property
    def pad_token_id(self):
        return int(self.preprocessor.tokenizer.pad_token_id)

    def vocabulary_size(self):
        """The size of the preset tokenizer's vocabulary."""
        return int(self.preprocessor.tokenizer.vocabulary_size())

    def call(self, inputs):
        return self.preprocessor(inputs)["token_ids"]

    def get_config(self):
        preprocessor = keras.saving.serialize_keras_object(self.preprocessor)
        return {**super().get_config(), "preprocessor": preprocessor}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["preprocessor"], dict):
            config["preprocessor"] = keras.saving.deserialize_keras_object(config["preprocessor"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="condnet")
class BackboneInputs(layers.Layer):
    """Token ids -> the dict of inputs a keras-hub text backbone takes: `"token_ids"`,
    `"padding_mask"` (1 where the id is not `pad_token_id`) and `"segment_ids"` (all
    0: a document is one segment), those of `names`.

    Args:
        names: list of str. The backbone's inputs, some of `BACKBONE_INPUTS`.
        pad_token_id: int. The id that pads a document. Defaults to 0.
    """

    def __init__(self, names, pad_token_id=0, **kwargs):
        unknown = sorted(set(names) - set(BACKBONE_INPUTS))
        if unknown or "token_ids" not in names:
            raise ValueError(
                f"BackboneInputs makes {list(BACKBONE_INPUTS)} from token ids, token_ids "
                f"among them. Received: names={list(names)}"
            )
        super().__init__(**kwargs)
        self.names = list(names)
        self.pad_token_id = int(pad_token_id)

    def call(self, tokens):
        tokens = ops.cast(tokens, "int32")
        made = {
            "token_ids": tokens,
            "padding_mask": ops.cast(ops.not_equal(tokens, self.pad_token_id), "int32"),
            "segment_ids": ops.zeros_like(tokens),
        }
        return {name: made[name] for name in self.names}

    def get_config(self):
        return {**super().get_config(), "names": self.names, "pad_token_id": self.pad_token_id}


# === Checks ===


def _check_sequence_length(sequence_length):
    if not isinstance(sequence_length, int) or isinstance(sequence_length, bool):
        raise TypeError(
            f"`sequence_length` must be an int. Received: sequence_length={sequence_length!r}"
        )
    if sequence_length < 3:  # a start token, a word, an end token
        raise ValueError(
            "`sequence_length` must be at least 3: a start token, a word and an end token. "
            f"Received: sequence_length={sequence_length}"
        )


def _import_keras_hub(preset):
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(
            f"The text backbone {preset!r} is a keras-hub preset, which needs keras-hub: "
            f'pip install keras-hub (or pip install "condnet[hub]"). Received: '
            f"preset={preset!r}"
        ) from error
    return keras_hub


def _from_preset(cls, preset, what, **kwargs):
    try:
        return cls.from_preset(preset, **kwargs)
    except Exception as error:  # unknown preset, no network, an image preset, no tokenizer
        raise ValueError(
            f"keras-hub could not load {what} from the preset {preset!r} "
            f"({type(error).__name__}: {error}). A text backbone preset holds a text backbone "
            "and its tokenizer (BERT, RoBERTa, DistilBERT, ...); offline, use a local preset "
            "directory (saved with `backbone.save_to_preset(path)` and "
            f"`tokenizer.save_to_preset(path)`). Received: preset={preset!r}"
        ) from error


def _check_tokenizes(tokenizer, preset):
    """keras-hub versions before the Python tokenizers need tensorflow-text even eagerly."""
    try:
        tokenizer(["a"])
    except Exception as error:
        raise ImportError(
            f"The tokenizer of the keras-hub preset {preset!r} cannot tokenize here "
            f"({type(error).__name__}: {error}). keras-hub 0.32 tokenizes in Python on every "
            "backend; older versions need tensorflow-text: pip install -U keras-hub. "
            f"Received: preset={preset!r}"
        ) from error


def _backbone_inputs(backbone):
    inputs = getattr(backbone, "input", None) if backbone.built else None
    names = list(inputs) if isinstance(inputs, dict) else []
    if "token_ids" not in names or set(names) - set(BACKBONE_INPUTS):
        raise ValueError(
            f"A text backbone takes a dict of {list(BACKBONE_INPUTS)} (token_ids among them); "
            f"'{backbone.name}' takes {names or inputs}. Pick a text encoder preset (BERT, "
            f"RoBERTa, DistilBERT, ...). Received: backbone of type {type(backbone).__name__}"
        )
    return names


def _token_vectors(backbone):
    """The backbone's symbolic `(steps, hidden)` token vectors: its output, or its
    `"sequence_output"`."""
    outputs = backbone.output
    if isinstance(outputs, dict):
        outputs = outputs.get("sequence_output")
    if outputs is None or len(outputs.shape) != 3:
        raise ValueError(
            f"A text backbone outputs one vector per token, (batch, steps, hidden), or a dict "
            f"holding them as 'sequence_output'. Received: '{backbone.name}' outputs {outputs}"
        )
    return outputs

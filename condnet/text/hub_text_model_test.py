import sys

import keras
import numpy as np
import pytest

from condnet.evaluation.baseline import flat_baseline, routed_macs
from condnet.evaluation.cost import count_macs
from condnet.models.conditional_model import ConditionalModel
from condnet.models.dispatch import bucket_size
from condnet.testing import RowCounter, tiny_bert_preset, tiny_resnet_backbone
from condnet.text.hub_text_model import (
    BackboneInputs,
    HubTokenizer,
    build_hub_text_model,
    hub_text_trunk,
    hub_tokenizer,
)
from condnet.text.text_model import build_text_model, text_head

TREE = {"animals": ["cat", "dog"], "vehicles": ["bus", "car", "train"]}
WORDS = "the a my and cat dog bus car train purr bark engine ticket rail".split()
DOCUMENTS = ["The dogs bark", "my cat and a purr", "a bus ticket", "the car engine", "rail train"]
LABELS = np.array([1, 0, 2, 3, 4], "int32")
HIDDEN = 16  # tiny_bert_preset's hidden_dim


def numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def keras_hub():
    return pytest.importorskip("keras_hub")


@pytest.fixture(scope="module")
def preset(keras_hub, tmp_path_factory):
    return tiny_bert_preset(keras_hub, tmp_path_factory.mktemp("bert") / "preset", WORDS)


def test_a_hub_text_model_predicts_strings_and_reloads_safely_with_its_vocabulary(preset, tmp_path):
    model = build_hub_text_model(TREE, preset, sequence_length=12, routing="hard")
    before = model.predict(DOCUMENTS, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded.preprocessor, HubTokenizer)
    vocabulary = loaded.preprocessor.preprocessor.tokenizer.get_vocabulary()  # from the file
    assert vocabulary == model.preprocessor.preprocessor.tokenizer.get_vocabulary()
    assert len(loaded.trainable_variables) == len(model.trainable_variables)  # still frozen
    after = loaded.predict(DOCUMENTS, verbose=0)
    for key in ("classes", "groups", "route"):
        np.testing.assert_allclose(after[key], before[key], atol=1e-6)
    ids = model.preprocess(DOCUMENTS)  # what the compiled model reads
    assert ids.shape == (5, 12) and ids.dtype.kind == "i"
    np.testing.assert_allclose(
        model.predict(ids, verbose=0)["classes"], before["classes"], atol=1e-6
    )


def test_the_preset_tokenizer_adds_its_start_and_end_tokens_and_pads(preset):
    tokenizer = hub_tokenizer(preset, sequence_length=8)
    words = tokenizer.preprocessor.tokenizer
    expected = [words.token_to_id(t) for t in ("[CLS]", "the", "dog", "##s", "bark", "[SEP]")]
    assert numpy(tokenizer(["The dogs bark"])).tolist() == [[*expected, 0, 0]]
    assert tokenizer.pad_token_id == 0 and tokenizer.sequence_length == 8
    assert tokenizer.vocabulary_size() == len(set(WORDS)) + 6  # 5 special tokens and ##s


def test_the_hub_trunk_averages_the_token_vectors_and_leaves_the_padding_out(keras_hub, preset):
    backbone = keras_hub.models.Backbone.from_preset(preset)
    ids = numpy(hub_tokenizer(preset, 8)(["the dog barks"]))
    features = numpy(hub_text_trunk(backbone, 8)(ids)["features"])
    longer = numpy(hub_tokenizer(preset, 16)(["the dog barks"]))
    padded = numpy(hub_text_trunk(backbone, 16)(longer)["features"])
    np.testing.assert_allclose(padded, features, atol=1e-5)  # more padding, same features
    inputs = {"token_ids": ids, "segment_ids": 0 * ids, "padding_mask": (ids != 0).astype("int32")}
    vectors = numpy(backbone(inputs)["sequence_output"])[0]
    np.testing.assert_allclose(features[0], vectors[ids[0] != 0].mean(axis=0), atol=1e-5)


def test_backbone_inputs_mask_the_pad_id_of_the_preset():
    made = BackboneInputs(["token_ids", "padding_mask"], pad_token_id=1)(np.array([[0, 5, 2, 1]]))
    assert sorted(made) == ["padding_mask", "token_ids"]  # only what the backbone takes
    assert numpy(made["padding_mask"]).tolist() == [[1, 1, 1, 0]]  # RoBERTa pads with 1


def test_routed_inference_on_a_hub_trunk_runs_only_the_chosen_expert(keras_hub, preset):
    trunk = hub_text_trunk(keras_hub.models.Backbone.from_preset(preset), 12)
    counters, experts = {}, {}
    for group, classes in TREE.items():
        inputs = keras.Input((HIDDEN,))
        counters[group] = RowCounter(name=f"{group}_rows")
        head = text_head((HIDDEN,), len(classes), f"{group}_head", 0.0)
        experts[group] = keras.Model(inputs, head(counters[group](inputs)), name=group)
    gate = text_head((HIDDEN,), 2, "gate", 0.0)
    tokenizer = hub_tokenizer(preset, 12)
    model = ConditionalModel(
        TREE, gate=gate, experts=experts, trunk=trunk, routing="hard", preprocessor=tokenizer
    )
    documents = DOCUMENTS * 8
    route = model.predict(documents, verbose=0)["route"]  # builds; counts from here
    for counter in counters.values():
        counter.rows.assign(0.0)
    model.predict(documents, batch_size=40, verbose=0)
    seen = {g: int(numpy(c.rows)) for g, c in counters.items()}
    routed = {g: int((route == i).sum()) for i, g in enumerate(TREE)}
    if keras.backend.backend() == "jax":  # jax runs each expert on a fixed bucket of rows
        routed = {g: bucket_size(n) if n else 0 for g, n in routed.items()}
    assert seen == routed


def test_the_backbone_stays_frozen_unless_asked_while_the_heads_learn(preset):
    keras.utils.set_random_seed(0)
    model = build_hub_text_model(TREE, preset, 12)
    backbone = model.trunk.get_layer("backbone")
    assert backbone.weights and not backbone.trainable_weights
    start = [numpy(w) for w in backbone.weights]
    gate = numpy(model.gate.weights[0])
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.fit(model.preprocess(DOCUMENTS), LABELS, epochs=2, verbose=0)
    assert all(np.array_equal(numpy(w), s) for w, s in zip(backbone.weights, start))
    assert not np.array_equal(numpy(model.gate.weights[0]), gate)
    tuned = build_hub_text_model(TREE, preset, 12, trainable_backbone=True)
    trainable = {w.path for w in tuned.trainable_weights}
    assert {w.path for w in tuned.trunk.get_layer("backbone").weights} <= trainable


def test_the_cost_of_a_hub_trunk_counts_its_transformer_block(preset):
    model = build_hub_text_model(TREE, preset, 12)
    _, per_layer, unknown = count_macs(model.trunk, return_details=True)
    steps, inner = 12, 2 * HIDDEN
    attention = steps * (4 * HIDDEN * HIDDEN + 2 * steps * HIDDEN)
    assert per_layer["backbone/transformer_layer_0"] == attention + 2 * steps * HIDDEN * inner
    assert unknown == ["backbone/position_embedding"]  # a lookup; its cost is 0 anyway
    macs = routed_macs(model, (12,))
    assert macs["routed"] > macs["trunk"] > attention


def test_the_flat_baseline_reads_the_same_frozen_backbone(preset):
    model = build_hub_text_model(TREE, preset, 12)
    flat = flat_baseline(model, (12,))
    (backbone,) = [layer for layer in flat._flatten_layers() if layer.name == "backbone"]
    source = model.trunk.get_layer("backbone")
    assert all(np.array_equal(numpy(a), numpy(b)) for a, b in zip(backbone.weights, source.weights))
    probabilities = flat.predict(model.preprocess(DOCUMENTS), verbose=0)
    assert probabilities.shape == (5, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


# === Errors ===


def test_a_sequence_longer_than_the_backbone_reads_is_refused(preset):
    with pytest.raises(ValueError, match=r"at most 64 tokens.*Received: sequence_length=65"):
        build_hub_text_model(TREE, preset, 65)
    with pytest.raises(ValueError, match=r"at least 3.*Received: sequence_length=2"):
        build_hub_text_model(TREE, preset, 2)
    with pytest.raises(TypeError, match=r"Received: sequence_length='long'"):
        hub_tokenizer(preset, "long")


def test_an_image_preset_or_a_missing_one_is_refused_by_name(keras_hub, tmp_path):
    tiny_resnet_backbone(keras_hub).save_to_preset(tmp_path / "resnet")
    for preset in (tmp_path / "resnet", tmp_path / "missing"):
        with pytest.raises(ValueError, match=r"(?s)could not load a text preprocessor.*Received"):
            build_hub_text_model(TREE, str(preset))
    with pytest.raises(ValueError, match=r"takes a dict of .*token_ids.*Pick a text encoder"):
        hub_text_trunk(tiny_resnet_backbone(keras_hub), 12)


def test_a_tokenizer_that_needs_tensorflow_text_says_how_to_upgrade(keras_hub, preset, monkeypatch):
    def needs_tensorflow_text(self, *args, **kwargs):
        raise ImportError("BertTokenizer requires `tensorflow-text`")

    monkeypatch.setattr(
        keras_hub.models.BertTextClassifierPreprocessor, "call", needs_tensorflow_text
    )
    with pytest.raises(ImportError, match=r"(?s)cannot tokenize here.*pip install -U keras-hub"):
        hub_tokenizer(preset, 12)


def test_without_keras_hub_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # import keras_hub raises ImportError
    with pytest.raises(ImportError, match=r"pip install keras-hub.*Received: preset='bert'"):
        build_hub_text_model(TREE, "bert")


def test_wrong_parts_are_refused_with_what_was_received(keras_hub, preset, tmp_path):
    with pytest.raises(TypeError, match=r"TextClassifierPreprocessor.*Received: preprocessor"):
        HubTokenizer(keras.layers.Identity())
    with pytest.raises(ValueError, match=r"Received: names=\['image'\]"):
        BackboneInputs(["image"])
    with pytest.raises(ValueError, match=r"HubTokenizer of 12 ids"):
        build_hub_text_model(TREE, preset, 12, tokenizer=hub_tokenizer(preset, 8))
    other = tiny_bert_preset(keras_hub, tmp_path / "other", [*WORDS, "extra", "words"])
    with pytest.raises(
        ValueError, match=r"The tokenizer has 22 tokens, but the backbone.*embeds 20"
    ):
        build_hub_text_model(TREE, preset, 12, tokenizer=hub_tokenizer(other, 12))
    with pytest.raises(ValueError, match=r"trunk='hub'.*build_hub_text_model"):
        build_text_model(TREE, 20, trunk="hub")

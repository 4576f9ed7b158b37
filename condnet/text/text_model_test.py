import keras
import numpy as np
import pytest

from condnet.evaluation.baseline import routed_macs
from condnet.evaluation.cost import count_macs
from condnet.models.conditional_model import ConditionalModel
from condnet.models.dispatch import bucket_size
from condnet.testing import RowCounter, assert_reload_equal
from condnet.text.text_model import TokenMean, build_text_model, text_head, text_trunk

TREE = {"animals": ["cat", "dog"], "vehicles": ["bus", "car", "train"]}
CLASSES = ["cat", "dog", "bus", "car", "train"]
FILLER = "the a of and to in it is that was for on with as at by this from".split()


def keyword_corpus(count, length=20, seed=0):
    """Token ids of documents whose class is the one keyword id they hold, among filler."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), count)
    ids = rng.integers(2, 2 + len(FILLER), (count, length))
    ids[np.arange(count), rng.integers(0, length, count)] = 2 + len(FILLER) + labels
    return ids.astype("int32"), labels.astype("int32")


VOCABULARY = 2 + len(FILLER) + len(CLASSES)


@pytest.mark.parametrize("trunk", ["bag", "cnn", "gru", "transformer"])
def test_every_trunk_builds_counts_its_cost_and_reloads_safely(trunk, tmp_path):
    model = build_text_model(TREE, VOCABULARY, sequence_length=20, trunk=trunk, width=16)
    ids, _ = keyword_corpus(8)
    outputs = model.predict(ids, verbose=0)
    assert outputs["classes"].shape == (8, 5)
    np.testing.assert_allclose(outputs["classes"].sum(axis=1), 1.0, atol=1e-5)
    unknown = count_macs(model.trunk, return_details=True)[2]
    assert unknown == []  # every layer's cost is known
    assert routed_macs(model, (20,))["routed"] > routed_macs(model, (20,))["trunk"]
    assert_reload_equal(model, ids, tmp_path)


def test_the_bag_trunk_averages_the_words_and_leaves_the_padding_out():
    trunk = text_trunk(VOCABULARY, 6, "bag", embedding_dim=4)
    table = keras.ops.convert_to_numpy(trunk.get_layer("embedding").embeddings)
    ids = np.array([[5, 7, 0, 0, 0, 0], [5, 7, 5, 7, 0, 0], [0] * 6], "int32")
    features = keras.ops.convert_to_numpy(trunk(ids)["features"])
    np.testing.assert_allclose(features[0], table[[5, 7]].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(features[1], features[0], atol=1e-6)  # same words, more padding
    np.testing.assert_array_equal(features[2], np.zeros(4))  # padding only: zeros, not NaN


@pytest.mark.slow
@pytest.mark.parametrize("trunk", ["bag", "cnn", "transformer"])
def test_a_text_model_learns_which_keyword_decides_the_class(trunk):
    keras.utils.set_random_seed(0)
    model = build_text_model(TREE, VOCABULARY, sequence_length=20, trunk=trunk, width=32)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    ids, labels = keyword_corpus(512)
    model.fit(ids, labels, epochs=8, batch_size=32, verbose=0)
    test_ids, test_labels = keyword_corpus(200, seed=1)
    model.routing = "hard"
    predicted = model.predict(test_ids, verbose=0)["classes"].argmax(axis=1)
    assert (predicted == test_labels).mean() > 0.9


def test_routed_inference_on_text_runs_only_the_chosen_expert():
    trunk = text_trunk(VOCABULARY, 20, "cnn", width=16)
    shape = tuple(trunk.output["features"].shape[1:])
    counters, experts = {}, {}
    for group, classes in TREE.items():
        inputs = keras.Input(shape)
        counters[group] = RowCounter(name=f"{group}_rows")
        head = text_head(shape, len(classes), f"{group}_head", 0.0)
        experts[group] = keras.Model(inputs, head(counters[group](inputs)), name=group)
    gate = text_head(shape, 2, "gate", 0.0)
    model = ConditionalModel(TREE, gate=gate, experts=experts, trunk=trunk, routing="hard")
    ids, _ = keyword_corpus(40)
    route = model.predict(ids, verbose=0)["route"]  # builds; counts from here
    for counter in counters.values():
        counter.rows.assign(0.0)
    model.predict(ids, batch_size=40, verbose=0)
    seen = {g: int(keras.ops.convert_to_numpy(c.rows)) for g, c in counters.items()}
    routed = {g: int((route == i).sum()) for i, g in enumerate(TREE)}
    if keras.backend.backend() == "jax":  # jax runs each expert on a fixed bucket of rows
        routed = {g: bucket_size(n) if n else 0 for g, n in routed.items()}
    assert seen == routed


def test_bad_sizes_and_trunks_are_refused_with_what_was_received():
    with pytest.raises(ValueError, match=r"trunk.*'lstm'"):
        build_text_model(TREE, VOCABULARY, trunk="lstm")
    with pytest.raises(
        ValueError, match=r"sequence_length.*at least 13.*Received: sequence_length=8"
    ):
        build_text_model(TREE, VOCABULARY, sequence_length=8)
    with pytest.raises(TypeError, match=r"vocabulary_size must be an int|`vocabulary_size`"):
        build_text_model(TREE, 12.5)


def test_the_vectorizer_travels_inside_the_model_file_and_predict_reads_text(tmp_path):
    from condnet.data.text import make_vectorizer, token_ids

    documents = [f"a post about the {name} and the {other}" for name in CLASSES for other in FILLER]
    vectorizer = make_vectorizer(documents, sequence_length=16)
    model = build_text_model(
        TREE, vectorizer.vocabulary_size(), 16, trunk="bag", preprocessor=vectorizer
    )
    model.routing = "hard"
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert loaded.preprocessor.get_vocabulary() == vectorizer.get_vocabulary()
    asked = ["the dog and a bus", "a train", "words it never saw"]
    from_text = loaded.predict(asked, verbose=0)
    from_ids = model.predict(token_ids(vectorizer, asked), verbose=0)
    np.testing.assert_allclose(from_text["classes"], from_ids["classes"], atol=1e-6)
    np.testing.assert_array_equal(from_text["route"], from_ids["route"])


def test_the_token_mean_leaves_out_the_pad_id_it_is_given():
    vectors = np.arange(12, dtype="float32").reshape(1, 4, 3)
    tokens = np.array([[0, 5, 1, 1]], "int32")  # RoBERTa: 0 starts a document, 1 pads
    mean = keras.ops.convert_to_numpy(TokenMean(pad_token_id=1)(vectors, tokens))
    np.testing.assert_allclose(mean[0], vectors[0, :2].mean(axis=0))
    assert TokenMean.from_config(TokenMean(pad_token_id=1).get_config()).pad_token_id == 1

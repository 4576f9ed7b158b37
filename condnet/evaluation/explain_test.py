import keras
import numpy as np
import pytest
from keras import layers
from PIL import Image

from condnet.evaluation.explain import (
    MAX_COPIES,
    PANEL,
    explain,
    explainer,
    occlusion_grid,
    occlusion_map,
    patch_boxes,
    peak_of,
    render_explanation,
    summary_of,
)
from condnet.models.conditional_model import ConditionalModel

SIDE = 16
HALF = SIDE // 2
TREE = {"marked": ["bright", "dim"], "plain": ["dark", "light"]}  # as folders sort


def _quadrant_head(name, crop, sign, rescale):
    """A fixed softmax over two outputs decided by the mean of one quadrant: the second
    output wins when the quadrant is bright with sign 1, the first with sign -1."""
    inputs = keras.Input((SIDE, SIDE, 3))
    x = layers.Rescaling(1 / 255)(inputs) if rescale else inputs
    x = layers.GlobalAveragePooling2D()(layers.Cropping2D(crop)(x))
    dense = layers.Dense(2, activation="softmax", name=f"{name}_dense")
    outputs = dense(x)
    kernel = np.tile(np.array([[-4.0, 4.0]], "float32") * sign / 3, (3, 1))
    dense.set_weights([kernel, np.array([2.0, -2.0], "float32") * sign])
    return keras.Model(inputs, outputs, name=name)


TOP_LEFT = ((0, HALF), (0, HALF))
BOTTOM_RIGHT = ((HALF, 0), (HALF, 0))


def quadrant_model(trunk=True):
    """The gate picks `marked` when the top-left quadrant is bright; the expert of
    `marked` picks `bright` when the bottom-right quadrant is. Nothing else matters."""
    rescale = not trunk
    experts = {
        "marked": _quadrant_head("marked", BOTTOM_RIGHT, -1, rescale),  # bright is first
        "plain": _quadrant_head("plain", TOP_LEFT, 1, rescale),
    }
    gate = _quadrant_head("gate", TOP_LEFT, -1, rescale)  # marked is group 0
    if not trunk:
        return ConditionalModel(TREE, gate=gate, experts=experts, routing="hard")
    inputs = keras.Input((SIDE, SIDE, 3))
    body = keras.Model(inputs, layers.Rescaling(1 / 255, name="pixels")(inputs), name="trunk")
    return ConditionalModel(TREE, gate=gate, experts=experts, trunk=body, routing="hard")


def marked_image():
    """Black, with the top-left (decides the group) and bottom-right (the class) lit."""
    image = np.zeros((SIDE, SIDE, 3), "uint8")
    image[:HALF, :HALF] = 255
    image[HALF:, HALF:] = 255
    return image


def _inside(peak, rows, columns):
    return peak["row"] in rows and peak["column"] in columns


# === The maps ===


@pytest.mark.parametrize("trunk", [True, False], ids=["trunk", "no trunk"])
def test_explain_peaks_where_the_gate_and_the_expert_read(trunk):
    model = quadrant_model(trunk)
    image = marked_image()
    why = explain(model, image)
    assert (why["group"], why["class"]) == ("marked", "bright")
    assert _inside(why["gate_peak"], range(HALF), range(HALF))
    assert _inside(why["expert_peak"], range(HALF, SIDE), range(HALF, SIDE))
    assert why["gate_peak"]["drop"] > 0.01 and why["expert_peak"]["drop"] > 0.01
    # Pixels no patch over the other part's quadrant covers change nothing.
    assert np.all(why["gate_map"][HALF + 2 :, :] == 0) and np.all(
        why["gate_map"][:, HALF + 2 :] == 0
    )
    assert np.all(why["expert_map"][: HALF - 2, :] == 0)
    assert np.all(why["gate_map"][:HALF, :HALF] > 0) and np.all(why["expert_map"][HALF:, HALF:] > 0)
    outputs = model.predict(image[None], verbose=0)  # the routed answer it explains
    assert outputs["route"][0] == 0
    np.testing.assert_allclose(why["group_probability"], outputs["groups"][0, 0], rtol=1e-5)
    np.testing.assert_allclose(why["class_probability"], outputs["classes"][0, 0], rtol=1e-5)


def test_explain_follows_the_mark_to_the_other_expert():
    image = marked_image()
    image[:HALF, :HALF] = 0  # the top-left dark: the gate picks `plain`, whose expert reads it
    why = explain(quadrant_model(), image)
    assert (why["group"], why["class"]) == ("plain", "dark")
    assert _inside(why["expert_peak"], range(HALF), range(HALF))
    assert np.all(why["expert_map"][HALF + 2 :, HALF + 2 :] == 0)


def test_explain_runs_the_trunk_gate_and_only_the_chosen_expert_once(monkeypatch):
    model = quadrant_model()
    calls = []
    original = keras.Model.predict_on_batch

    def counted(self, x):
        calls.append((self.name, len(x)))
        return original(self, x)

    monkeypatch.setattr(keras.Model, "predict_on_batch", counted)
    why = explain(model, marked_image())
    assert calls == [("trunk", 50), ("gate", 50), ("marked", 50)]  # the image + 7 x 7 copies
    calls.clear()
    assert explain(model, marked_image(), batch_size=32)["gate_peak"] == why["gate_peak"]
    assert calls == [("trunk", 32), ("trunk", 18), ("gate", 32), ("gate", 18)] + [
        ("marked", 32),
        ("marked", 18),
    ]
    assert why["copies"] == 49 and why["patch_size"] == (4, 4) and why["stride"] == (2, 2)


def test_summary_leaves_out_the_maps():
    summary = summary_of(explain(quadrant_model(), marked_image()))
    assert "gate_map" not in summary and "expert_map" not in summary
    assert set(summary["group_probabilities"]) == {"marked", "plain"}
    assert summary["gate_peak"]["x"] < 0.5 < summary["expert_peak"]["x"]


# === The grid ===


@pytest.mark.parametrize(
    "shape, patch, stride, copies",
    [
        ((32, 32), (8, 8), (4, 4), 49),
        ((224, 224), (56, 56), (28, 28), 49),
        ((30, 45), (8, 12), (4, 6), 49),
    ],
)
def test_the_default_grid_scales_with_the_image(shape, patch, stride, copies):
    assert occlusion_grid(shape) == (patch, stride)
    assert len(patch_boxes(shape, patch, stride)) == copies


@pytest.mark.parametrize(
    "shape, patch, stride", [((17, 23), (5, 7), (3, 4)), ((9, 9), (9, 9), (1, 1))]
)
def test_the_patches_cover_every_pixel(shape, patch, stride):
    boxes = patch_boxes(shape, patch, stride)
    covered = occlusion_map(shape, boxes, patch, np.ones(len(boxes)))
    assert np.all(covered == 1)
    assert max(top for top, _ in boxes) + patch[0] == shape[0]


def test_the_number_of_copies_is_bounded():
    with pytest.raises(ValueError, match=f"more than the {MAX_COPIES} allowed. Pass a larger"):
        occlusion_grid((224, 224), patch_size=8, stride=2)
    with pytest.raises(ValueError, match="patch_size must be from 1 to the image's side"):
        occlusion_grid((16, 16), patch_size=20)
    with pytest.raises(TypeError, match="stride must be an int or a"):
        occlusion_grid((16, 16), stride=1.5)


# === Errors ===


def test_explain_refuses_what_it_cannot_explain():
    model = quadrant_model()
    with pytest.raises(ValueError, match=r"one image of shape .* not a batch"):
        explain(model, marked_image()[None])
    with pytest.raises(ValueError, match=r"reads images of shape \(16, 16, 3\); resize"):
        explain(model, np.zeros((8, 8, 3)))
    nan = marked_image().astype("float32")
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        explain(model, nan)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        explain(model, marked_image(), batch_size=0)
    with pytest.raises(ValueError, match="fill must be 'mean'"):
        explain(model, marked_image(), fill="grey")
    with pytest.raises(TypeError, match="Received: model of type Functional"):
        explain(model.gate, marked_image())


# === The picture ===


def test_render_draws_the_evidence_in_red_where_each_part_read(tmp_path):
    why = explain(quadrant_model(), marked_image())
    path = render_explanation(marked_image(), why, tmp_path / "why.png", caption="a.png")
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    margin, top = 8, 8 + 2 * 16 + 4
    assert picture.shape[1] == 3 * PANEL + 4 * margin

    def panel(index, rows, columns):  # one quadrant of panel `index`, away from its edges
        left = margin + index * (PANEL + margin)
        quarter = PANEL // 2
        r, c = top + rows * quarter + 24, left + columns * quarter + 24
        return picture[r : r + quarter - 48, c : c + quarter - 48]

    def reddish(pixels):
        return np.mean(pixels[..., 0] - pixels[..., 2])

    assert reddish(panel(0, 0, 0)) == 0  # the image itself: white
    assert reddish(panel(1, 0, 0)) > 100 and reddish(panel(1, 1, 1)) < 5  # gate: top-left
    assert reddish(panel(2, 1, 1)) > 100 and reddish(panel(2, 0, 0)) < 5  # expert: bottom-right


def test_explainer_decodes_the_file_at_the_model_input_size(tmp_path):
    Image.fromarray(marked_image()).resize((64, 64), Image.NEAREST).save(tmp_path / "big.png")
    explainer(quadrant_model())(tmp_path / "big.png", tmp_path / "why.png", "true bright")
    assert Image.open(tmp_path / "why.png").size[0] == 3 * PANEL + 32
    assert explainer(quadrant_model().gate) is None  # no gate to explain


def test_the_peak_of_a_plateau_is_its_centre():
    values = np.zeros((9, 9), "float32")
    values[1:6, 2:5] = 0.5
    assert peak_of(values) == {"row": 3, "column": 3, "y": 0.3889, "x": 0.3889, "drop": 0.5}


# === The report's gallery ===


def test_the_report_explains_its_misrouted_examples_only(tmp_path):
    from condnet.evaluation.report import write_report
    from condnet.evaluation.report_test import make_metrics
    from condnet.hierarchy import Hierarchy

    Image.fromarray(marked_image()).save(tmp_path / "marked.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    example = {"true": "bright", "true_group": "marked", "confidence": 0.9}
    examples = [
        {**example, "path": tmp_path / "marked.png", "predicted": "light", "expert": "plain"},
        {**example, "path": tmp_path / "broken.png", "predicted": "light", "expert": "plain"},
        {**example, "path": tmp_path / "marked.png", "predicted": "bright", "expert": "marked"},
    ]
    run = tmp_path / "run"
    metrics = make_metrics(Hierarchy(TREE))
    write_report(
        run, Hierarchy(TREE), metrics, examples=examples, explain=explainer(quadrant_model())
    )
    assert sorted(p.name for p in (run / "examples").glob("why-*")) == ["why-misrouted-00.png"]
    assert Image.open(run / "examples" / "why-misrouted-00.png").size[0] == 3 * PANEL + 32
    for page in ("report.md", "report.html"):
        text = (run / page).read_text()
        assert "Why they were misrouted" in text and "examples/why-misrouted-00.png" in text
    write_report(tmp_path / "plain", Hierarchy(TREE), metrics, examples=examples)
    assert not list((tmp_path / "plain" / "examples").glob("why-*"))  # only when asked


# === Words ===


def test_the_keyword_that_decides_a_documents_class_weighs_most():
    from condnet.data.text import make_vectorizer, token_ids
    from condnet.evaluation.explain import weighed_words
    from condnet.text.text_model import build_text_model

    keras.utils.set_random_seed(0)
    tree = {"animals": ["cat", "dog"], "vehicles": ["bus", "car"]}
    classes, filler = ["cat", "dog", "bus", "car"], "the a of and to in it is".split()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    texts = [
        " ".join([*rng.choice(filler, 6), classes[label], *rng.choice(filler, 6)])
        for label in labels
    ]
    vectorizer = make_vectorizer(texts, sequence_length=16)
    model = build_text_model(tree, vectorizer.vocabulary_size(), 16, trunk="bag",
                             preprocessor=vectorizer)  # fmt: skip
    model.compile(optimizer=keras.optimizers.Adam(0.02))
    model.fit(token_ids(vectorizer, texts), labels, epochs=6, batch_size=32, verbose=0)
    model.routing = "hard"
    asked = ["the a dog of and to the", "a bus in it is the of", "the unheard words cat"]
    found = weighed_words(model, asked, top=2)
    assert [words[0][0] for words in found] == ["dog", "bus", "cat"]
    assert all(weight > 0 for words in found for _, weight in words)
    assert all(word != "unheard" for word, _ in found[2])  # not in the vocabulary: never tried
    only = weighed_words(model, asked, top=2, max_words=1)[0]  # the most frequent word only
    assert {word for word, _ in only} <= {"the"}

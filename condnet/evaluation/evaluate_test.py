import keras
import numpy as np
import pytest
from keras import layers
from PIL import Image

from condnet.data.image_folder import ImageFolder
from condnet.data.scan import scan_directory
from condnet.evaluation.evaluate import evaluate_model
from condnet.models.conditional_model import ConditionalModel
from condnet.testing import truncated_jpeg

COLOURS = {"red": (250, 0, 0), "orange": (250, 150, 0), "green": (0, 250, 0), "blue": (0, 0, 250)}
TREE = {"cool": ["blue", "green"], "warm": ["orange", "red"]}  # as the folders sort


def _fixed_softmax(kernel, bias, name):
    inputs = keras.Input((3,))
    dense = layers.Dense(len(bias), activation="softmax", name=f"{name}_dense")
    outputs = dense(inputs)
    dense.set_weights([np.array(kernel, "float32"), np.array(bias, "float32")])
    return keras.Model(inputs, outputs, name=name)


def colour_model(image_size=8, routing="hard"):
    """A ConditionalModel that names the colour of a plain image (COLOURS), exactly."""
    inputs = keras.Input((image_size, image_size, 3))
    mean = layers.GlobalAveragePooling2D(name="mean")(layers.Rescaling(1 / 255)(inputs))
    trunk = keras.Model(inputs, mean, name="trunk")
    gate = _fixed_softmax([[-20, 20], [20, -20], [20, -20]], [0, 0], "gate")
    warm = _fixed_softmax([[0, 0], [20, -20], [0, 0]], [-6, 6], "warm")
    cool = _fixed_softmax([[0, 0], [-20, 20], [20, -20]], [0, 0], "cool")
    return ConditionalModel(
        TREE, gate=gate, experts={"warm": warm, "cool": cool}, trunk=trunk, routing=routing
    )


def make_colour_folders(root, per_class=6):
    """root/<group>/<colour>/<n>.png, every image of one colour."""
    for group, names in TREE.items():
        for name in names:
            (root / group / name).mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                Image.new("RGB", (10, 10), COLOURS[name]).save(root / group / name / f"{n}.png")
    return root


def test_colour_model_names_each_colour():
    images = np.stack([np.full((8, 8, 3), COLOURS[name], "float32") for name in COLOURS])
    outputs = colour_model().predict(images, verbose=0)
    np.testing.assert_array_equal(outputs["classes"].argmax(-1), [3, 2, 1, 0])
    np.testing.assert_array_equal(outputs["route"], [1, 1, 0, 0])


@pytest.mark.parametrize("substitute_unreadable", [True, False])
def test_evaluate_model_leaves_images_that_fail_to_decode_out(tmp_path, substitute_unreadable):
    make_colour_folders(tmp_path)
    broken = truncated_jpeg(tmp_path / "warm" / "orange" / "5a.jpg")
    hierarchy, paths, labels = scan_directory(tmp_path)
    assert len(paths) == 25 and str(broken) in paths
    data = ImageFolder(
        paths,
        labels,
        hierarchy,
        image_size=8,
        batch_size=4,
        shuffle=True,
        seed=0,
        substitute_unreadable=substitute_unreadable,
    )
    with pytest.warns(UserWarning, match=r"Left 1 image\(s\) that cannot be decoded.*5a.jpg"):
        metrics = evaluate_model(colour_model(), data)
    assert metrics["num_samples"] == 24
    assert metrics["num_skipped"] == 1
    assert metrics["skipped"] == [
        {"path": str(broken), "error": "cannot decode: " + data.unreadable[str(broken)]}
    ]
    assert metrics["skipped"][0]["error"].startswith("cannot decode: unreadable (OSError")
    assert metrics["accuracy"] == 1.0  # no row was scored on another row's image or label
    assert metrics["per_class"]["orange"]["support"] == 6
    assert data.substitutions == {}


def test_evaluate_model_counts_nothing_skipped_on_good_images(tmp_path):
    make_colour_folders(tmp_path, per_class=2)
    hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(paths, labels, hierarchy, image_size=8, batch_size=3)
    metrics = evaluate_model(colour_model(), data)
    assert (metrics["num_samples"], metrics["num_skipped"], metrics["skipped"]) == (8, 0, [])


def test_evaluate_model_progress_is_a_bool_and_its_line_goes_to_standard_error(tmp_path, capsys):
    make_colour_folders(tmp_path, per_class=2)
    hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(paths, labels, hierarchy, image_size=8, batch_size=3)
    evaluate_model(colour_model(), data, progress=True, progress_label="hard routing")
    captured = capsys.readouterr()
    assert captured.err.startswith("hard routing: 3/3 batches, ") and captured.out == ""
    evaluate_model(colour_model(), data)
    assert capsys.readouterr().err == ""  # progress=False by default: no line
    with pytest.raises(TypeError, match="progress must be True .* progress_label=.*'hard"):
        evaluate_model(colour_model(), data, progress="hard routing")


def test_evaluate_model_error_when_no_image_decodes(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        truncated_jpeg(tmp_path / name)
    paths = [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    data = ImageFolder(paths, [0, 2], TREE, image_size=8)
    with pytest.raises(ValueError, match=r"None of the 2 images to evaluate can be decoded"):
        evaluate_model(colour_model(), data)

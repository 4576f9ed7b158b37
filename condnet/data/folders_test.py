import json
import math
import warnings

import keras
import numpy as np
import pytest
from PIL import Image

from condnet.data.folders import (
    ImageFolder,
    load_folders,
    scan_directory,
    split_indices,
)
from condnet.hierarchy import Hierarchy

TREE = {"round": ["circle", "ring"], "angular": ["square"]}


def _write_image(path, color=(200, 30, 30), size=(10, 12), format=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=format)


def _color(index):
    return (40 * index % 256, 255 - 30 * index % 256, 90)


def _make_nested(root, tree=TREE, per_class=3, size=(10, 12)):
    """Writes root/<group>/<class>/<n>.png, one colour per class."""
    index = 0
    for group, classes in tree.items():
        for name in classes:
            for n in range(per_class):
                _write_image(root / group / name / f"{n}.png", _color(index), size)
            index += 1
    return root


def _make_flat(root, classes=("circle", "ring", "square"), per_class=3):
    for index, name in enumerate(classes):
        for n in range(per_class):
            _write_image(root / name / f"{n}.png", _color(index))
    return root


# === scan_directory ===


def test_scan_directory_reads_nested_layout_sorted(tmp_path):
    _make_nested(tmp_path)
    hierarchy, paths, labels = scan_directory(tmp_path)
    assert hierarchy == Hierarchy({"angular": ["square"], "round": ["circle", "ring"]})
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert paths[0] == str(tmp_path / "angular" / "square" / "0.png")
    assert paths[-1] == str(tmp_path / "round" / "ring" / "2.png")


def test_scan_directory_reads_subgroups_into_nested_hierarchy(tmp_path):
    for parts in [
        ("animals", "pets", "cat"),
        ("animals", "pets", "dog"),
        ("animals", "wild", "wolf"),
        ("plants", "tree"),
    ]:
        _write_image(tmp_path.joinpath(*parts, "0.png"))
    hierarchy, paths, labels = scan_directory(tmp_path)
    expected = {"animals": {"pets": ["cat", "dog"], "wild": ["wolf"]}, "plants": ["tree"]}
    assert hierarchy == Hierarchy(expected)
    assert hierarchy.depth == 3
    assert paths[2] == str(tmp_path / "animals" / "wild" / "wolf" / "0.png")
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])


@pytest.mark.parametrize("source", ["object", "dict", "json", "yaml"])
def test_scan_directory_reads_flat_layout_with_hierarchy(tmp_path, source):
    root = _make_flat(tmp_path / "images")
    hierarchy = {"round": ["ring", "circle"], "angular": ["square"]}
    if source == "object":
        hierarchy = Hierarchy(hierarchy)
    elif source == "json":
        (tmp_path / "h.json").write_text(json.dumps(hierarchy))
        hierarchy = tmp_path / "h.json"
    elif source == "yaml":
        (tmp_path / "h.yaml").write_text("round: [ring, circle]\nangular: [square]\n")
        hierarchy = str(tmp_path / "h.yaml")
    found, paths, labels = scan_directory(root, hierarchy)
    assert found.classes == ["ring", "circle", "square"]
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert paths[0] == str(root / "ring" / "0.png")


def test_scan_directory_reads_every_image_format(tmp_path):
    folder = tmp_path / "a" / "x"
    _write_image(folder / "1.png")
    _write_image(folder / "2.JPG", format="JPEG")
    _write_image(folder / "3.jpeg")
    _write_image(folder / "4.bmp")
    _write_image(folder / "5.webp")
    frames = [Image.new("RGB", (8, 8), c) for c in [(250, 0, 0), (0, 0, 250)]]
    frames[0].save(folder / "6.gif", save_all=True, append_images=frames[1:])
    _write_image(tmp_path / "b" / "y" / "1.png")
    _, paths, _ = scan_directory(tmp_path)
    names = [p.rsplit("/", 1)[-1] for p in paths]
    assert names == ["1.png", "2.JPG", "3.jpeg", "4.bmp", "5.webp", "6.gif", "1.png"]
    images, _ = ImageFolder(paths, [0] * 7, {"a": ["x"], "b": ["y"]}, image_size=8).numpy()
    assert images[5, 0, 0, 0] > 200 and images[5, 0, 0, 2] < 50  # first gif frame


def test_scan_directory_ignores_hidden_and_other_files(tmp_path):
    _make_nested(tmp_path, per_class=1)
    _write_image(tmp_path / "round" / "ring" / ".hidden.png")
    _write_image(tmp_path / "round" / ".ipynb_checkpoints" / "x" / "0.png")
    _write_image(tmp_path / ".cache" / "c" / "0.png")
    (tmp_path / "round" / "ring" / "notes.txt").write_text("not an image")
    (tmp_path / "round" / "ring" / ".DS_Store").write_bytes(b"\x00\x01")
    (tmp_path / "README.md").write_text("about the data")
    hierarchy, paths, _ = scan_directory(tmp_path)
    assert hierarchy.classes == ["square", "circle", "ring"]
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["0.png"] * 3


def test_scan_directory_skips_corrupt_files_with_one_warning(tmp_path):
    _make_nested(tmp_path, per_class=2)
    ring = tmp_path / "round" / "ring"
    (ring / "broken.png").write_bytes(b"not a png at all")
    good = (ring / "0.png").read_bytes()
    (ring / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning) as record:
        _, paths, labels = scan_directory(tmp_path)
    assert len(record) == 1
    message = str(record[0].message)
    assert "Skipped 2 unreadable image(s)" in message
    assert str(ring / "broken.png") in message and str(ring / "cut.png") in message
    assert len(paths) == len(labels) == 6
    assert not any("broken" in p or "cut" in p for p in paths)


def test_image_folder_replaces_images_that_fail_to_decode(tmp_path):
    _make_nested(tmp_path, per_class=2)
    truncated = tmp_path / "round" / "ring" / "1.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype="uint8")
    Image.fromarray(noise).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:1500])  # passes verify()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(paths, labels, hierarchy, image_size=8, batch_size=7)
    with pytest.warns(UserWarning, match="fails to decode.*1.jpg"):
        images, batch_labels = data[0]
    assert images.shape == (7, 8, 8, 3)
    row = paths.index(str(truncated))
    assert batch_labels[row] == labels[row + 1]  # replaced by the next sample
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once only
        data[0]
        assert len(data.numpy()[0]) == len(paths) - 1


def test_scan_directory_error_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*Received: root=.*nowhere"):
        scan_directory(tmp_path / "nowhere")


def test_scan_directory_error_file_instead_of_folder(tmp_path):
    _write_image(tmp_path / "a.png")
    with pytest.raises(ValueError, match="not a file. Received: root=.*a.png"):
        scan_directory(tmp_path / "a.png")


def test_scan_directory_error_empty_folder(tmp_path):
    _write_image(tmp_path / "lonely.png")
    with pytest.raises(ValueError, match="no class or group folders.*1 visible"):
        scan_directory(tmp_path)


def test_scan_directory_error_flat_layout_without_hierarchy(tmp_path):
    _make_flat(tmp_path)
    with pytest.raises(ValueError, match=r"looks like a flat.*--hierarchy FILE.*hierarchy="):
        scan_directory(tmp_path)


def test_scan_directory_error_empty_class_folder(tmp_path):
    _make_nested(tmp_path)
    (tmp_path / "angular" / "star").mkdir()
    (tmp_path / "angular" / "star" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"class folder .*star' has no images.*notes.txt"):
        scan_directory(tmp_path)


def test_scan_directory_error_class_folder_not_in_hierarchy(tmp_path):
    _make_flat(tmp_path, classes=("circle", "ring", "square", "blob"))
    with pytest.raises(ValueError, match=r"not classes of the hierarchy: \['blob'\]"):
        scan_directory(tmp_path, TREE)


def test_scan_directory_error_hierarchy_class_without_folder(tmp_path):
    _make_flat(tmp_path, classes=("circle", "square"))
    with pytest.raises(ValueError, match=r"have no folder.*\['ring'\]"):
        scan_directory(tmp_path, TREE)


def test_scan_directory_error_empty_group_folder(tmp_path):
    _make_nested(tmp_path)
    (tmp_path / "curved").mkdir()
    with pytest.raises(ValueError, match="group folder .*curved' has no class folders"):
        scan_directory(tmp_path)


def test_scan_directory_error_classes_mixed_with_subgroups(tmp_path):
    _make_nested(tmp_path)
    _write_image(tmp_path / "round" / "more" / "oval" / "0.png")
    with pytest.raises(ValueError, match=r"mixes class folders \['circle', 'ring'\]"):
        scan_directory(tmp_path)


def test_scan_directory_error_folders_not_a_valid_hierarchy(tmp_path):
    _make_nested(tmp_path, tree={"a": ["same"], "b": ["same"]})
    with pytest.raises(ValueError, match="do not form a valid hierarchy.*unique"):
        scan_directory(tmp_path)


def test_scan_directory_error_only_unreadable_images(tmp_path):
    _make_nested(tmp_path)
    (tmp_path / "angular" / "star").mkdir()
    (tmp_path / "angular" / "star" / "0.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="None of the 1 images.*star"):
        scan_directory(tmp_path)


def test_scan_directory_error_hierarchy_of_wrong_type(tmp_path):
    _make_flat(tmp_path)
    with pytest.raises(TypeError, match="Received: list"):
        scan_directory(tmp_path, ["circle", "ring"])


# === split_indices ===


def test_split_indices_is_stratified_deterministic_and_disjoint():
    labels = np.repeat([0, 1, 2, 3], [10, 5, 2, 1])
    train, validation = split_indices(labels, 0.2, seed=3)
    again = split_indices(labels, 0.2, seed=3)
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(validation, again[1])
    assert not set(train) & set(validation)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, validation])), np.arange(18))
    np.testing.assert_array_equal(np.bincount(labels[validation], minlength=4), [2, 1, 1, 0])
    other = split_indices(labels, 0.2, seed=4)[1]
    assert not np.array_equal(validation, other)


def test_split_indices_without_validation():
    train, validation = split_indices([0, 0, 1, 1], 0.0, seed=0)
    np.testing.assert_array_equal(train, [0, 1, 2, 3])
    assert validation.size == 0


@pytest.mark.parametrize("split", [1.0, -0.1, 2])
def test_split_indices_error_split_out_of_range(split):
    with pytest.raises(ValueError, match=rf"\[0, 1\).*validation_split={split}"):
        split_indices([0, 1], split, seed=0)


def test_split_indices_error_split_of_wrong_type():
    with pytest.raises(TypeError, match="validation_split='0.2' of type str"):
        split_indices([0, 1], "0.2", seed=0)


# === ImageFolder ===


@pytest.mark.parametrize("color_mode, channels", [("rgb", 3), ("grayscale", 1)])
def test_image_folder_batches_resized_images(tmp_path, color_mode, channels):
    _make_nested(tmp_path)
    _write_image(tmp_path / "round" / "ring" / "big.png", (10, 20, 30), size=(40, 25))
    hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(
        paths, labels, hierarchy, image_size=(6, 5), batch_size=4, color_mode=color_mode
    )
    assert len(data) == 3 and data.num_samples == 10
    images, batch_labels = data[2]
    assert images.shape == (2, 6, 5, channels) and images.dtype == np.float32
    assert batch_labels.dtype == np.int32
    np.testing.assert_array_equal(batch_labels, labels[8:])
    expected = (10, 20, 30) if channels == 3 else (round(0.299 * 10 + 0.587 * 20 + 0.114 * 30),)
    big = paths.index(str(tmp_path / "round" / "ring" / "big.png"))
    np.testing.assert_allclose(images[big - 8, 3, 2], expected, atol=1)
    assert images.max() <= 255 and images.min() >= 0


def test_image_folder_shuffles_every_epoch(tmp_path):
    _make_nested(tmp_path, per_class=4)
    hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(paths, labels, hierarchy, image_size=4, batch_size=12, shuffle=True, seed=0)
    first = data[0][1]
    data.on_epoch_end()
    second = data[0][1]
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(np.sort(first), np.sort(second))
    np.testing.assert_array_equal(np.sort(first), labels)
    fixed = ImageFolder(paths, labels, hierarchy, image_size=4, batch_size=12)
    fixed.on_epoch_end()
    np.testing.assert_array_equal(fixed[0][1], labels)


def test_image_folder_cache_keeps_decoded_images(tmp_path):
    _make_nested(tmp_path, per_class=1)
    hierarchy, paths, labels = scan_directory(tmp_path)
    cached = ImageFolder(paths, labels, hierarchy, image_size=4)
    streamed = ImageFolder(paths, labels, hierarchy, image_size=4, cache=False)
    assert cached.cache and not streamed.cache
    before = cached[0][0]
    for path in paths:
        _write_image(tmp_path / path, (0, 0, 0), size=(3, 3))
    np.testing.assert_array_equal(cached[0][0], before)
    assert streamed[0][0].max() == 0


def test_image_folder_subset_and_numpy(tmp_path):
    _make_nested(tmp_path)
    hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(paths, labels, hierarchy, image_size=3, batch_size=2, seed=1)
    rows = np.flatnonzero(hierarchy.group_labels(labels) == hierarchy.group_index("round"))
    subset = data.subset(rows)
    assert subset.paths == [paths[row] for row in rows]
    assert subset.hierarchy == hierarchy and subset.batch_size == 2
    images, subset_labels = subset.numpy()
    assert images.shape == (6, 3, 3, 3)
    np.testing.assert_array_equal(subset_labels, [1, 1, 1, 2, 2, 2])
    np.testing.assert_allclose(images[0, 0, 0], _color(0))  # circle, written first
    masked = data.subset(labels == 0)
    assert masked.num_samples == 3


def test_image_folder_error_lengths_differ(tmp_path):
    with pytest.raises(ValueError, match="one entry per image. Received: 2 paths and 1 labels"):
        ImageFolder(["a.png", "b.png"], [0], TREE)


def test_image_folder_error_label_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ImageFolder(["a.png"], [5], TREE)


def test_image_folder_error_subset_index_out_of_range(tmp_path):
    data = ImageFolder(["a.png", "b.png"], [0, 1], TREE)
    with pytest.raises(ValueError, match=r"\[0, 2\). Received: indices containing \[7\]"):
        data.subset([0, 7])


def test_image_folder_trains_a_model(tmp_path):
    _make_nested(tmp_path, per_class=4)
    train, validation = load_folders(tmp_path, image_size=8, batch_size=4, validation_split=0.25)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(train.hierarchy.num_classes, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(train, validation_data=validation, epochs=1, verbose=0)
    assert math.isfinite(history.history["loss"][0])
    assert math.isfinite(history.history["val_loss"][0])
    assert model.predict(validation, verbose=0).shape == (3, 3)


# === load_folders ===


def test_load_folders_splits_nested_folders(tmp_path):
    _make_nested(tmp_path, per_class=5)
    train, validation = load_folders(tmp_path, image_size=(4, 6), validation_split=0.2)
    assert train.hierarchy == validation.hierarchy
    assert train.hierarchy.groups == ["angular", "round"]
    assert (train.num_samples, validation.num_samples) == (12, 3)
    assert not set(train.paths) & set(validation.paths)
    np.testing.assert_array_equal(validation.labels, [0, 1, 2])
    assert train.shuffle and not validation.shuffle
    assert train[0][0].shape == (12, 4, 6, 3)
    again, _ = load_folders(tmp_path, image_size=4)
    assert again.paths == train.paths


def test_load_folders_without_validation(tmp_path):
    root = _make_flat(tmp_path / "flat")
    train, validation = load_folders(root, TREE, validation_split=0, color_mode="grayscale")
    assert validation is None and train.num_samples == 9
    assert train[0][0].shape[-1] == 1


def test_load_folders_error_no_validation_sample(tmp_path):
    _make_nested(tmp_path, per_class=1)
    with pytest.raises(ValueError, match="holds out no sample.*validation_split=0"):
        load_folders(tmp_path)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"image_size": 0}, "image_size=0"),
        ({"image_size": (32, -1)}, r"image_size=\(32, -1\)"),
        ({"image_size": "big"}, "image_size='big'"),
        ({"color_mode": "rgba"}, "color_mode='rgba'"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"validation_split": 1}, "validation_split=1"),
    ],
)
def test_load_folders_error_bad_options_before_reading(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        load_folders(tmp_path / "not-read-yet", **options)

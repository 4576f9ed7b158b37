import numpy as np
import pytest

from condnet.data.scan import scan_directory
from condnet.data.splits import load_folders, split_folders, split_indices
from condnet.testing import IMAGE_TREE as TREE
from condnet.testing import flat_images, nested_images


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


def test_load_folders_splits_nested_folders(tmp_path):
    nested_images(tmp_path, per_class=5)
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
    root = flat_images(tmp_path / "flat")
    train, validation = load_folders(root, TREE, validation_split=0, color_mode="grayscale")
    assert validation is None and train.num_samples == 9
    assert train[0][0].shape[-1] == 1


def test_load_folders_error_no_validation_sample(tmp_path):
    nested_images(tmp_path, per_class=1)
    with pytest.raises(ValueError, match="holds out no sample.*validation_split=0"):
        load_folders(tmp_path)


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"image_size": 0}, ValueError, "image_size=0"),
        ({"image_size": (32, -1)}, ValueError, r"image_size=\(32, -1\)"),
        ({"image_size": (32, 4096)}, ValueError, r"2048 pixels a side.*image_size=\(32, 4096\)"),
        ({"image_size": "big"}, TypeError, "image_size='big'"),
        ({"color_mode": "rgba"}, ValueError, "color_mode='rgba'"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"validation_split": 1}, ValueError, "validation_split=1"),
    ],
)
def test_load_folders_error_bad_options_before_reading(tmp_path, options, error, match):
    with pytest.raises(error, match=match):
        load_folders(tmp_path / "not-read-yet", **options)


def test_split_folders_builds_the_folders_load_folders_reads(tmp_path):
    nested_images(tmp_path, per_class=5)
    hierarchy, paths, labels = scan_directory(tmp_path)
    rows = split_indices(labels, 0.2, seed=7)
    train, validation = split_folders(
        hierarchy, paths, labels, rows, seed=7, image_size=4, batch_size=5
    )
    expected = load_folders(tmp_path, image_size=4, batch_size=5, validation_split=0.2, seed=7)
    for built, loaded in zip((train, validation), expected):
        assert built.paths == loaded.paths and built.shuffle == loaded.shuffle
        np.testing.assert_array_equal(built.labels, loaded.labels)
        np.testing.assert_array_equal(built[0][0], loaded[0][0])
        np.testing.assert_array_equal(built[0][1], loaded[0][1])
    assert (train.seed, validation.seed) == (7, None)


def test_split_folders_without_validation_rows_gives_no_validation_folder(tmp_path):
    nested_images(tmp_path, per_class=2)
    hierarchy, paths, labels = scan_directory(tmp_path)
    train, validation = split_folders(
        hierarchy, paths, labels, ([4, 0, 2], []), shuffle=False, image_size=(4, 6)
    )
    assert validation is None and not train.shuffle
    assert train.paths == [paths[4], paths[0], paths[2]]
    np.testing.assert_array_equal(train.labels, labels[[4, 0, 2]])
    assert train[0][0].shape == (3, 4, 6, 3)

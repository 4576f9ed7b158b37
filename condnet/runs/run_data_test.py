"""Tests of a run's data: its explicit split's rows and its split's fingerprint."""

import types

import pytest

from condnet.runs.options import TrainingOptions
from condnet.runs.run_data import _split_rows, check_split, load_data, write_split


def _folder(data_dir, *names):
    """What the split's fingerprint reads of a folder: its file paths."""
    return types.SimpleNamespace(paths=[str(data_dir / name) for name in names])


def test_a_split_is_checked_against_the_files_it_was_drawn_from(tmp_path):
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    run_dir.mkdir()
    train, validation = _folder(data_dir, "a/x/1.png", "a/x/2.png"), _folder(data_dir, "b/y/3.png")
    write_split(run_dir, data_dir, train, validation)
    check_split(run_dir, data_dir, train, validation)  # the same files: accepted
    added = _folder(data_dir, "a/x/1.png", "a/x/2.png", "a/x/4.png")
    with pytest.raises(ValueError, match="changed since the run drew its split: 1 file.*4.png"):
        check_split(run_dir, data_dir, added, validation)
    moved = _folder(data_dir, "a/x/1.png", "b/y/3.png")
    with pytest.raises(ValueError, match="split differently.*move 2 image"):
        check_split(run_dir, data_dir, moved, _folder(data_dir, "a/x/2.png"))


def test_a_damaged_split_file_is_refused(tmp_path):
    (tmp_path / "split.json").write_text("{")
    with pytest.raises(ValueError, match="split.json' is damaged.*Restore it"):
        check_split(tmp_path, tmp_path, _folder(tmp_path, "x.png"), None)


def test_a_run_without_a_split_file_is_not_checked(tmp_path):
    check_split(tmp_path, tmp_path, _folder(tmp_path, "x.png"), None)


def test_split_rows_past_the_folder_are_refused(tmp_path):
    options = TrainingOptions(split=([0, 1], [5]))
    assert _split_rows(options, 6, tmp_path, "images") == ([0, 1], [5])
    with pytest.raises(ValueError, match="rows up to 5, but .* holds 3 images.*scan_directory"):
        _split_rows(options, 3, tmp_path, "images")


def test_an_explicit_split_loads_the_rows_it_names(shapes):
    options = TrainingOptions(split=([0, 1, 2], [3]), image_size=32, batch_size=4)
    train, validation = load_data(options, shapes / "train")
    assert (train.num_samples, validation.num_samples) == (3, 1)

import json
import os
import socket

import numpy as np
import pytest

from condnet.data.demo_data import make_shapes_dataset
from condnet.data.scan import scan_directory
from condnet.runs.cli import main
from condnet.runs.cross_validation import cross_validate, fold_indices, summarize, summary_table
from condnet.runs.lock import LOCK, RunLocked

LABELS = np.repeat([0, 1, 2], [5, 7, 9])


def test_folds_partition_the_data_exactly():
    splits = fold_indices(LABELS, folds=3, seed=0)
    validation = np.concatenate([rows for _, rows in splits])
    assert sorted(validation.tolist()) == list(range(len(LABELS)))  # each row validated once
    for train, rows in splits:
        assert sorted(np.concatenate([train, rows]).tolist()) == list(range(len(LABELS)))
        assert not set(train) & set(rows)
    assert sorted(len(rows) for _, rows in splits) == [7, 7, 7]


def test_folds_spread_every_class_across_the_folds():
    for _, rows in fold_indices(LABELS, folds=5, seed=0):
        counts = np.bincount(LABELS[rows], minlength=3)
        assert counts.tolist() in ([1, 1, 1], [1, 1, 2], [1, 2, 2], [1, 2, 1])
        assert all(n >= 1 for n in counts)


def test_folds_depend_only_on_the_seed():
    first = fold_indices(LABELS, folds=3, seed=7)
    again = fold_indices(LABELS, folds=3, seed=7)
    other = fold_indices(LABELS, folds=3, seed=8)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other))


def test_summary_has_the_mean_and_sample_std_of_the_folds():
    rows = [
        {"fold": 1, "accuracy": 0.5, "group_accuracy": 0.75, "hierarchical_f1": 0.6},
        {"fold": 2, "accuracy": 0.7, "group_accuracy": 0.25, "hierarchical_f1": 0.8},
    ]
    summary = summarize(rows)
    np.testing.assert_allclose(summary["mean"]["accuracy"], 0.6)
    np.testing.assert_allclose(summary["std"]["group_accuracy"], np.std([0.75, 0.25], ddof=1))
    table = summary_table(summary)
    assert "fold-1" in table and "0.600 ± 0.141" in table


@pytest.mark.parametrize(
    "folds, error, message",
    [
        (1, ValueError, "folds must be an int >= 2.*folds=1"),
        (0, ValueError, "folds must be an int >= 2.*folds=0"),
        (2.5, TypeError, "folds must be an int. Received: folds=2.5"),
    ],
)
def test_cross_validate_needs_two_folds_or_more(tmp_path, folds, error, message):
    with pytest.raises(error, match=message):
        cross_validate(tmp_path / "missing", tmp_path / "cv", folds=folds)


def test_cross_validate_refuses_more_folds_than_the_smallest_class(tmp_path):
    make_shapes_dataset(tmp_path / "data", samples_per_class=3, image_size=16)
    with pytest.raises(ValueError, match="folds=4 needs at least 4.*class 'square' has 3"):
        cross_validate(tmp_path / "data", tmp_path / "cv", folds=4)
    assert not (tmp_path / "cv").exists()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"validation_split": 0.3}, TypeError, "leave out \\['validation_split'\\]"),
        ({"hierarchy": "auto"}, ValueError, "Discover the hierarchy once"),
    ],
)
def test_cross_validate_rejects_options_it_decides_itself(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        cross_validate(tmp_path, tmp_path / "cv", folds=2, **kwargs)


def test_cross_validate_refuses_an_out_dir_inside_the_data(tmp_path):
    make_shapes_dataset(tmp_path / "data", samples_per_class=3, image_size=16)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="is inside the image folder DATA_DIR"):
        cross_validate(tmp_path / "data", tmp_path / "data" / "cv", folds=2)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_cross_validate_refuses_a_locked_out_dir(tmp_path):
    make_shapes_dataset(tmp_path / "data", samples_per_class=3, image_size=16)
    (tmp_path / "cv").mkdir()
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "time": "T", "command": "c"}
    (tmp_path / "cv" / LOCK).write_text(json.dumps(holder))
    with pytest.raises(RunLocked, match=f"locked by pid {os.getppid()}"):
        cross_validate(tmp_path / "data", tmp_path / "cv", folds=2)
    assert os.listdir(tmp_path / "cv") == [LOCK]  # no fold was started


@pytest.mark.one_backend(
    reason=(
        "the folds and the summary are numpy and files; training runs on every backend in "
        "recipe_test, and a run per fold on three backends costs CI minutes"
    )
)
@pytest.mark.slow
def test_cli_cv_trains_one_run_per_fold_and_writes_the_summary(tmp_path, capsys):
    data = tmp_path / "data"
    make_shapes_dataset(data, samples_per_class=6, image_size=32)
    argv = ["cv", str(data), "--out", str(tmp_path / "cv"), "--folds", "2", "--epochs", "1"]
    tiny = ["--image-size", "32", "--batch-size", "16", "--no-augment", "--no-baseline", "--quiet"]
    assert main(argv + tiny) == 0
    printed = capsys.readouterr().out
    assert "mean ± std" in printed and "hierarchical_f1" in printed

    summary = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert [row["fold"] for row in summary["per_fold"]] == [1, 2]
    for name in ("accuracy", "group_accuracy", "hierarchical_f1"):
        values = [row[name] for row in summary["per_fold"]]
        np.testing.assert_allclose(summary["mean"][name], np.mean(values))
        np.testing.assert_allclose(summary["std"][name], np.std(values, ddof=1))

    _, _, labels = scan_directory(data)
    validated = []
    for row in summary["per_fold"]:
        options = json.loads((tmp_path / "cv" / f"fold-{row['fold']}" / "config.json").read_text())
        train_rows, validation_rows = options["options"]["split"]
        assert sorted(train_rows + validation_rows) == list(range(len(labels)))
        assert row["num_validation"] == len(validation_rows) == 18
        metrics = json.loads((tmp_path / "cv" / f"fold-{row['fold']}" / "metrics.json").read_text())
        assert metrics["num_samples"] == len(validation_rows)  # scored on its own fold
        assert not (tmp_path / "cv" / f"fold-{row['fold']}" / "report.md").exists()  # cv.md is
        validated += validation_rows
    assert sorted(validated) == list(range(len(labels)))

    assert main(argv + tiny) == 2  # a second run does not clobber the first
    assert "already holds a cross-validation" in capsys.readouterr().err


@pytest.mark.parametrize("verbose, heading", [(2, True), (0, False)])
def test_each_fold_is_announced_on_standard_error(tmp_path, monkeypatch, capsys, verbose, heading):
    make_shapes_dataset(tmp_path / "data", samples_per_class=3, image_size=16)
    metrics = {"accuracy": 0.5, "group_accuracy": 0.5, "hierarchical_f1": 0.5}
    monkeypatch.setattr("condnet.runs.recipe.train", lambda *a, **k: {"metrics": metrics})
    cross_validate(tmp_path / "data", tmp_path / "cv", folds=2, verbose=verbose)
    captured = capsys.readouterr()
    assert ("=== Fold 2/2: " in captured.err) is heading
    assert "=== Fold" not in captured.out  # standard output holds results only

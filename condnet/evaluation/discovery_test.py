import json
import shutil
import sys

import numpy as np
import pytest

from condnet.data.demo_data import make_shapes_dataset
from condnet.evaluation.discovery import (
    confusion_affinity,
    discover_from_folder,
    discover_hierarchy,
    flat_class_names,
)
from condnet.hierarchy import Hierarchy
from condnet.runs.recipe import train

NAMES = ["a", "b", "c", "d", "e", "f"]
TINY = dict(image_size=32, filters=(8, 8, 8, 8), batch_size=16, verbose=0)


def _blocks(blocks, n=6, within=8.0, across=0.5, correct=30.0):
    """Counts: `correct` on the diagonal, `within` between classes of a block."""
    confusion = np.full((n, n), across)
    for block in blocks:
        for i in block:
            for j in block:
                confusion[i, j] = within
    np.fill_diagonal(confusion, correct)
    return confusion


@pytest.fixture(scope="module")
def flat_shapes(tmp_path_factory):
    """The shapes data set as a flat folder root/<class>/*."""
    nested = tmp_path_factory.mktemp("nested")
    make_shapes_dataset(nested, samples_per_class=10, image_size=32)
    flat = tmp_path_factory.mktemp("flat")
    for folder in nested.glob("*/*"):
        shutil.copytree(folder, flat / folder.name)
    return flat


def test_discover_hierarchy_finds_the_confused_blocks():
    confusion = _blocks([(0, 2, 4), (1, 3, 5)])  # interleaved: a c e | b d f
    hierarchy = discover_hierarchy(confusion, NAMES, num_groups=2)
    assert hierarchy == Hierarchy({"group_1": ["a", "c", "e"], "group_2": ["b", "d", "f"]})


def test_discover_hierarchy_orders_groups_by_their_first_class():
    confusion = _blocks([(3, 4), (0, 5), (1, 2)])
    hierarchy = discover_hierarchy(confusion, NAMES, num_groups=3, seed=3)
    assert hierarchy.to_dict() == {
        "group_1": ["a", "f"],
        "group_2": ["b", "c"],
        "group_3": ["d", "e"],
    }


def test_confusion_affinity_is_symmetric_rates_without_diagonal():
    confusion = np.array([[8.0, 2.0, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, 5.0]])
    affinity = confusion_affinity(confusion)
    np.testing.assert_allclose(affinity, affinity.T)
    np.testing.assert_allclose(np.diag(affinity), 0.0)
    np.testing.assert_allclose(affinity[0, 1], (0.2 + 0.25) / 2, atol=1e-5)
    assert 0 < affinity[0, 2] < 1e-5  # a faint link keeps the graph connected


@pytest.mark.parametrize(
    "num_groups, error, message",
    [
        (1, ValueError, "between 2 and 5.*6 classes.*num_groups=1"),
        (6, ValueError, "between 2 and 5.*num_groups=6"),
        ("2", TypeError, "num_groups must be an int"),
    ],
)
def test_discover_hierarchy_rejects_a_bad_number_of_groups(num_groups, error, message):
    with pytest.raises(error, match=message):
        discover_hierarchy(_blocks([(0, 1, 2)]), NAMES, num_groups=num_groups)


def test_discover_hierarchy_rejects_a_confusion_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\(6, 6\).*shape \(5, 5\)"):
        discover_hierarchy(np.eye(5), NAMES)


def test_discovery_without_scikit_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(ImportError, match=r'pip install "condnet\[discovery\]"'):
        discover_hierarchy(_blocks([(0, 1, 2)]), NAMES)


def test_discovery_refuses_a_nested_folder(tmp_path):
    (tmp_path / "round" / "circle").mkdir(parents=True)
    with pytest.raises(ValueError, match="looks nested"):
        flat_class_names(tmp_path)


def test_discover_from_folder_checks_num_groups_before_training(flat_shapes):
    with pytest.raises(ValueError, match="between 2 and 5.*6 classes"):
        discover_from_folder(flat_shapes, num_groups=6, epochs=1, **TINY)


@pytest.mark.slow
def test_discover_from_folder_returns_the_validation_confusions(flat_shapes):
    hierarchy, confusion = discover_from_folder(flat_shapes, num_groups=2, epochs=1, **TINY)
    assert sorted(hierarchy.classes) == sorted(p.name for p in flat_shapes.iterdir())
    assert hierarchy.groups == ["group_1", "group_2"]
    assert confusion.shape == (6, 6)
    assert confusion.sum(axis=1).tolist() == [2] * 6  # 20% of 10 images per class


@pytest.mark.one_backend(
    reason=(
        "discovery itself runs on every backend in the tests above; this adds the run that "
        "writes hierarchy.discovered.json, whose file handling is the same on every backend, "
        "and a whole run per backend costs CI minutes"
    )
)
@pytest.mark.slow
def test_train_with_auto_hierarchy_writes_the_discovered_hierarchy(flat_shapes, tmp_path, capsys):
    run = tmp_path / "run"
    loud = {**TINY, "verbose": 2, "baseline": False}
    result = train(flat_shapes, run, hierarchy="auto", epochs=1, augment=False, **loud)
    discovered = Hierarchy.from_file(run / "hierarchy.discovered.json")
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    # the run's progress lines go to standard error
    assert "=== Discovery: training a flat classifier for 1 epochs to find 2 groups" in captured.err
    for group in discovered.groups:  # the groups it found, by name and classes
        assert f"{group}: {', '.join(discovered.classes_of(group))}" in printed
    assert sorted(discovered.classes) == sorted(p.name for p in flat_shapes.iterdir())
    assert result["model"].hierarchy == discovered
    options = json.loads((run / "config.json").read_text())["options"]
    assert options["hierarchy"] == discovered.to_dict()  # resume keeps the groups
    again = train(
        flat_shapes,
        tmp_path / "again",
        hierarchy=str(run / "hierarchy.discovered.json"),
        epochs=1,
        augment=False,
        baseline=False,
        **TINY,
    )
    assert again["model"].hierarchy == discovered

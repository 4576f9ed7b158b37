import json

import numpy as np
import pytest

from condnet.hierarchy import Hierarchy
from condnet.testing import CATS_AND_DOGS

DEEP = {
    "vehicles": {"air": ["airplane"], "road": ["automobile", "truck"]},
    "animals": {"pets": ["cat", "dog"], "wild": ["deer", "horse"]},
}


def test_hierarchy_index_maps_follow_group_order():
    hierarchy = Hierarchy(CATS_AND_DOGS)
    assert hierarchy.classes == ["persian", "siamese", "beagle", "pug", "boxer"]
    assert hierarchy.class_to_group.tolist() == [0, 0, 1, 1, 1]
    assert hierarchy.class_to_local.tolist() == [0, 1, 0, 1, 2]
    assert hierarchy.group_slice("dog") == slice(2, 5)
    assert hierarchy.group_of("pug") == "dog"
    assert hierarchy.path("siamese") == ("cat", "siamese")


def test_hierarchy_label_conversion_round_trips():
    hierarchy = Hierarchy(CATS_AND_DOGS)
    labels = hierarchy.encode(["pug", "persian", ("dog", "boxer")])
    assert labels.tolist() == [3, 0, 4]
    assert hierarchy.decode(labels) == ["pug", "persian", "boxer"]
    assert hierarchy.group_labels(labels).tolist() == [1, 0, 1]
    assert hierarchy.local_labels(labels).tolist() == [1, 0, 2]
    one_hot = np.eye(5)[labels]
    assert hierarchy.check_labels(one_hot).tolist() == [3, 0, 4]


def test_hierarchy_deeper_tree_has_paths_and_subtrees():
    hierarchy = Hierarchy(DEEP)
    assert hierarchy.depth == 3
    assert hierarchy.groups == ["vehicles", "animals"]
    assert hierarchy.path("dog") == ("animals", "pets", "dog")
    assert hierarchy.classes_of("animals") == ["cat", "dog", "deer", "horse"]
    assert hierarchy.subhierarchy("animals") == Hierarchy(DEEP["animals"])
    assert Hierarchy(CATS_AND_DOGS).subhierarchy("cat") is None


def test_hierarchy_config_and_file_round_trip(tmp_path):
    hierarchy = Hierarchy(DEEP)
    assert Hierarchy.from_config(json.loads(json.dumps(hierarchy.get_config()))) == hierarchy
    hierarchy.save(tmp_path / "h.json")
    assert Hierarchy.from_file(tmp_path / "h.json") == hierarchy
    (tmp_path / "h.yaml").write_text("cat: [persian, siamese]\ndog: [beagle, pug, boxer]\n")
    assert Hierarchy.from_file(tmp_path / "h.yaml") == Hierarchy(CATS_AND_DOGS)


@pytest.mark.parametrize(
    "groups, error, message",
    [
        ({"cat": ["persian"]}, ValueError, "at least 2 groups"),
        ({"cat": [], "dog": ["pug"]}, ValueError, "'cat' is empty"),
        ({"cat": ["pug"], "dog": ["pug"]}, ValueError, r"Duplicated: \['pug'\]"),
        (["cat", "dog"], TypeError, "Received at the top level: list"),
        ({"cat": "persian", "dog": ["pug"]}, TypeError, "Group 'cat' must map to a list"),
        ({"a": {"x": ["1"]}, "b": ["2"]}, ValueError, "Received at a: 1 group"),
    ],
)
def test_hierarchy_rejects_bad_trees(groups, error, message):
    with pytest.raises(error, match=message):
        Hierarchy(groups)


def test_hierarchy_rejects_unknown_and_out_of_range_labels():
    hierarchy = Hierarchy(CATS_AND_DOGS)
    with pytest.raises(ValueError, match=r"not classes of the hierarchy: \['tabby'\]"):
        hierarchy.encode(["pug", "tabby"])
    with pytest.raises(ValueError, match=r"in \[0, 5\).*containing \[5, 7\]"):
        hierarchy.check_labels([0, 5, 7])
    with pytest.raises(ValueError, match="Unknown group 'bird'"):
        hierarchy.classes_of("bird")


def test_hierarchy_file_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="Hierarchy file not found"):
        Hierarchy.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json' is not valid JSON"):
        Hierarchy.from_file(tmp_path / "bad.json")

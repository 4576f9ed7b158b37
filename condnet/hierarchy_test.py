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


@pytest.mark.parametrize(
    "paths, message",
    [
        (
            [("dog", "persian"), ("dog", "pug")],
            r"\('dog', 'persian'\) does not lead to 'persian', whose path is \('cat', 'persian'\)",
        ),
        ([("fish", "pug")], r"\('fish', 'pug'\) names 'fish', which is not a group"),
        ([("dog", "dog", "pug")], r"Received: labels containing \[\('dog', 'dog', 'pug'\)\]"),
    ],
)
def test_hierarchy_refuses_a_label_path_that_does_not_lead_to_its_class(paths, message):
    with pytest.raises(ValueError, match=message):
        Hierarchy(CATS_AND_DOGS).encode(paths)


def test_hierarchy_encodes_label_paths_of_a_deeper_tree():
    hierarchy = Hierarchy(
        {"animals": {"pets": ["cat", "dog"], "wild": ["wolf"]}, "plants": ["rose"]}
    )
    labels = hierarchy.encode([("animals", "wild", "wolf"), ("plants", "rose"), "dog"])
    assert labels.tolist() == [2, 3, 1]
    with pytest.raises(ValueError, match=r"whose path is \('animals', 'pets', 'cat'\)"):
        hierarchy.encode([("pets", "cat")])


def test_hierarchy_rejects_unknown_and_out_of_range_labels():
    hierarchy = Hierarchy(CATS_AND_DOGS)
    with pytest.raises(ValueError, match=r"not classes of the hierarchy: \['tabby'\]"):
        hierarchy.encode(["pug", "tabby"])
    with pytest.raises(ValueError, match=r"in \[0, 5\).*containing \[5, 7\]"):
        hierarchy.check_labels([0, 5, 7])
    with pytest.raises(ValueError, match="Unknown group 'bird'"):
        hierarchy.classes_of("bird")


def test_hierarchy_file_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"No such hierarchy file: '.*missing\.json'"):
        Hierarchy.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json' is not valid JSON"):
        Hierarchy.from_file(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "name, text",
    [
        ("twice.json", '{"cat": ["persian"], "dog": ["pug"], "cat": ["siamese"]}'),
        ("twice.yaml", "cat: [persian]\ndog: [pug]\ncat: [siamese]\n"),
        ("nested.json", '{"a": {"x": ["1"], "x": ["2"]}, "b": ["3"]}'),
    ],
)
def test_hierarchy_file_refuses_a_key_written_twice(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=rf"{name}' has the key '(cat|x)' twice"):
        Hierarchy.from_file(tmp_path / name)


def test_hierarchy_yaml_file_never_runs_python_tags(tmp_path):
    marker = tmp_path / "ran"
    text = f"cat: !!python/object/apply:os.system ['touch {marker}']\ndog: [pug]\n"
    (tmp_path / "h.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"(?s)h.yaml' is not valid YAML.*safe_load"):
        Hierarchy.from_file(tmp_path / "h.yaml")
    assert not marker.exists()


@pytest.mark.parametrize(
    "name, content, error, message",
    [
        ("latin.json", b'{"caf\xe9": ["x"], "b": ["y"]}', ValueError, "not UTF-8 text: byte 0xe9"),
        ("deep.json", b"[" * 100_000, ValueError, "nests too deeply"),
        ("deep.yaml", b"a: " + b"[" * 100_000, ValueError, "nests too deeply"),
        ("broken.yaml", b"cat: [persian\ndog: pug", ValueError, "is not valid YAML"),
        ("digits.json", b'{"a": ' + b"1" * 5000 + b"}", ValueError, "is not valid JSON"),
        ("list.json", b'["cat", "dog"]', TypeError, "Received at the top level: list"),
        ("empty.yaml", b"", TypeError, "Received at the top level: NoneType"),
        ("numbers.yaml", b"1: [a]\n2: [b]\n", TypeError, "Group names must be non-empty"),
    ],
)
def test_hierarchy_file_errors_are_condnet_errors_naming_the_file(
    tmp_path, name, content, error, message
):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(error, match=rf"(?s){name}'.*{message}"):
        Hierarchy.from_file(tmp_path / name)


def test_hierarchy_file_error_not_a_regular_file(tmp_path):
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ValueError, match="not a regular file.*folder.json"):
        Hierarchy.from_file(tmp_path / "folder.json")
    with pytest.raises(ValueError, match="not a regular file.*'/dev/zero'"):
        Hierarchy.from_file("/dev/zero")  # never read: it would not end


def test_hierarchy_refuses_trees_too_deep_or_too_large(tmp_path):
    deep = ["leaf"]
    for level in range(40):
        deep = {f"g{level}": deep, f"h{level}": ["x"]}
    with pytest.raises(ValueError, match="at most 32 levels"):
        Hierarchy(deep)
    laughs = "a: &a [" + ", ".join(["x"] * 10) + "]\n"
    for previous, name in zip("abcde", "bcdef"):
        laughs += f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 10) + "]\n"
    (tmp_path / "laughs.yaml").write_text(laughs)  # aliases that expand to 10**6 names
    with pytest.raises(ValueError, match="laughs.yaml'.*at most 1,000,000"):
        Hierarchy.from_file(tmp_path / "laughs.yaml")

"""Fuzzing hierarchy files: whatever a file holds, the only errors are condnet's own.

Random bytes, random text and random nested structures (written as JSON and
as YAML) are read with `Hierarchy.from_file`. Each either gives a valid
`Hierarchy` or raises a `ValueError` / `TypeError` whose message names the
file. `CONDNET_FUZZ_EXAMPLES=5000` explores further (with a fresh random
seed) than the 200 fixed examples CI runs.
"""

import json

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from condnet.hierarchy import Hierarchy
from condnet.testing import fuzz_settings

FUZZ = fuzz_settings()
SUFFIXES = st.sampled_from([".json", ".yaml", ".yml", ".txt"])
NAMES = st.text(max_size=6)
LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | NAMES
STRUCTURES = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(NAMES, children, max_size=4),
    max_leaves=30,
)
# Trees close to valid ones, so that the checks past parsing are reached too.
TREES = st.dictionaries(
    NAMES,
    st.lists(NAMES, max_size=3) | st.dictionaries(NAMES, st.lists(NAMES, max_size=3), max_size=3),
    max_size=4,
)
YAML_SNIPPETS = st.sampled_from(
    [
        "!!python/object/apply:os.system ['true']",
        "!!python/name:os.system",
        "&a [*a]",
        "*undefined",
        "{a: [x], a: [y]}",
        "? [a, b]\n: [c]",
        "<<: {a: [x]}",
        "2001-13-45",
        "!!binary '###'",
        "!!timestamp 'not a time'",
        "[" * 500,
    ]
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("hierarchy_fuzz")


def _read(folder, content, suffix):
    path = folder / f"hierarchy{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    try:
        hierarchy = Hierarchy.from_file(path)
    except (ValueError, TypeError) as error:
        assert str(path) in str(error), str(error)
        assert type(error) in (ValueError, TypeError)  # not a parser's subclass
        return None
    assert isinstance(hierarchy, Hierarchy) and hierarchy.num_classes >= 2
    return hierarchy


@FUZZ
@given(content=st.binary(max_size=512), suffix=SUFFIXES)
def test_fuzz_hierarchy_file_of_random_bytes(folder, content, suffix):
    _read(folder, content, suffix)


@FUZZ
@given(content=st.text(max_size=256), suffix=SUFFIXES)
def test_fuzz_hierarchy_file_of_random_text(folder, content, suffix):
    _read(folder, content, suffix)


@FUZZ
@given(structure=STRUCTURES | TREES, as_yaml=st.booleans())
def test_fuzz_hierarchy_file_of_random_structures(folder, structure, as_yaml):
    if as_yaml:
        hierarchy = _read(folder, yaml.safe_dump(structure), ".yaml")
    else:
        hierarchy = _read(folder, json.dumps(structure), ".json")
    if hierarchy is not None:
        assert hierarchy.to_dict() == structure  # read back as written, nothing dropped


@FUZZ
@given(snippet=YAML_SNIPPETS, key=NAMES)
def test_fuzz_hierarchy_file_of_hostile_yaml(folder, snippet, key):
    text = f"{json.dumps(key)}: {snippet}\nother: [x]\n"
    assert _read(folder, text, ".yaml") is None

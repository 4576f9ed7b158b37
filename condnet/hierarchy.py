"""The label hierarchy: groups, their classes, and the index maps between them."""

import json
from pathlib import Path

import numpy as np


class Hierarchy:
    """A tree of groups whose leaves are the classes.

    The gate of a conditional model picks one of the top-level **groups**; the
    expert of that group picks a **class** (a leaf). A group maps either to a
    list of class names or to a dict of subgroups, so trees deeper than two
    levels are described the same way and an expert may itself be a
    conditional model over its subtree.

    Classes are numbered depth first, group by group, so the classes of one
    group form a contiguous slice of the global class vector. That order is
    stable: it depends only on the order of the mapping given here.

    Args:
        groups: dict. Maps each group name to a list of class names or to a
            dict of subgroups (same form, at least two of them).

    Example:

    ```python
    hierarchy = Hierarchy({"cat": ["persian", "siamese"],
                           "dog": ["beagle", "pug", "boxer"]})
    hierarchy.classes          # ['persian', 'siamese', 'beagle', 'pug', 'boxer']
    hierarchy.group_of("pug")  # 'dog'
    hierarchy.encode(["pug", "persian"])  # array([3, 0])
    ```
    """

    def __init__(self, groups):
        _validate_level(groups, path=())
        self._tree = _copy_tree(groups)
        self.groups = list(self._tree)
        self.classes = _leaves(self._tree)
        _validate_unique(self._tree, self.classes)
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        self._group_index = {name: i for i, name in enumerate(self.groups)}
        sizes = [len(_leaves_of(self._tree[g])) for g in self.groups]
        self.group_sizes = sizes
        self.class_to_group = np.repeat(np.arange(len(sizes)), sizes)
        self.group_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
        self.class_to_local = np.arange(len(self.classes)) - np.repeat(self.group_offsets, sizes)

    # === Sizes and names ===

    @property
    def num_groups(self):
        return len(self.groups)

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def depth(self):
        """Number of levels from the groups down to the classes (2 or more)."""
        return max(len(self.path(name)) for name in self.classes)

    def classes_of(self, group):
        """The classes (leaves) under a top-level group, in global order."""
        return _leaves_of(self._tree[self._check_group(group)])

    def group_of(self, name):
        """The top-level group of a class."""
        return self.groups[self.class_to_group[self.class_index(name)]]

    def path(self, name):
        """The label path of a class, e.g. ``("animals", "pets", "cat")``."""
        self.class_index(name)
        return _find_path(self._tree, name)

    def subhierarchy(self, group):
        """The Hierarchy below a group, or None when its children are classes."""
        node = self._tree[self._check_group(group)]
        return Hierarchy(node) if isinstance(node, dict) else None

    def class_index(self, name):
        if name not in self._class_index:
            raise ValueError(
                f"Unknown class {name!r}. The hierarchy's classes are "
                f"{self.classes}. Received: name={name!r}"
            )
        return self._class_index[name]

    def group_index(self, name):
        return self._group_index[self._check_group(name)]

    def group_slice(self, group):
        """The slice of the global class vector that belongs to a group."""
        i = self.group_index(group)
        start = int(self.group_offsets[i])
        return slice(start, start + self.group_sizes[i])

    # === Label conversion ===

    def encode(self, labels):
        """Class names (or label paths ending in a class) -> class indices."""
        names = [label[-1] if isinstance(label, tuple | list) else label for label in labels]
        unknown = sorted({str(n) for n in names if n not in self._class_index})
        if unknown:
            raise ValueError(
                f"{len(unknown)} label(s) are not classes of the hierarchy: "
                f"{unknown[:10]}. Known classes: {self.classes}. Add them to the "
                "hierarchy or remove those samples."
            )
        return np.array([self._class_index[n] for n in names], dtype="int32")

    def decode(self, indices):
        """Class indices -> class names."""
        indices = self.check_labels(indices)
        return [self.classes[i] for i in indices]

    def check_labels(self, labels):
        """Return integer class indices, raising if any is out of range."""
        labels = np.asarray(labels)
        if labels.ndim == 2 and labels.shape[-1] == self.num_classes:
            labels = labels.argmax(-1)
        labels = labels.reshape(-1)
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            if not np.all(np.equal(np.mod(labels, 1), 0)):
                raise TypeError(
                    "Labels must be integer class indices (or one-hot rows). "
                    f"Received: labels of dtype {labels.dtype}"
                )
        labels = labels.astype("int64")
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.size:
            raise ValueError(
                f"Labels must be class indices in [0, {self.num_classes}) for a "
                f"hierarchy of {self.num_classes} classes; {bad.size} are out of "
                f"range. Received: labels containing {sorted(set(bad.tolist()))[:10]}"
            )
        return labels

    def group_labels(self, labels):
        """Class indices -> indices of their top-level groups."""
        return self.class_to_group[self.check_labels(labels)]

    def local_labels(self, labels):
        """Class indices -> indices within their group's classes."""
        return self.class_to_local[self.check_labels(labels)]

    # === Config ===

    def get_config(self):
        return {"groups": _copy_tree(self._tree)}

    @classmethod
    def from_config(cls, config):
        return cls(config["groups"])

    def to_dict(self):
        return _copy_tree(self._tree)

    def save(self, path):
        """Write the hierarchy as a JSON file (group -> classes)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_file(cls, path):
        """Read a hierarchy from a JSON or YAML file (group -> classes)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(
                f"Hierarchy file not found. Expected a JSON (or YAML) file mapping "
                f"each group to its classes. Received: path={str(path)!r}"
            )
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            return cls(_load_yaml(text, path))
        try:
            return cls(json.loads(text))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"The hierarchy file {str(path)!r} is not valid JSON ({error}). "
                'Expected e.g. {"cat": ["persian", "siamese"], "dog": ["pug"]}.'
            ) from None

    def __eq__(self, other):
        return isinstance(other, Hierarchy) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"Hierarchy({self.to_dict()!r})"

    def _check_group(self, group):
        if group not in self._tree:
            raise ValueError(
                f"Unknown group {group!r}. The hierarchy's groups are "
                f"{self.groups}. Received: group={group!r}"
            )
        return group


# === Tree helpers ===


def _validate_level(node, path):
    where = " > ".join(path) if path else "the top level"
    if not isinstance(node, dict):
        raise TypeError(
            "A hierarchy is a dict mapping each group name to a list of class "
            f"names (or to a dict of subgroups). Received at {where}: "
            f"{type(node).__name__} {node!r:.200}"
        )
    if len(node) < 2:
        raise ValueError(
            "A hierarchy level needs at least 2 groups for the gate to choose "
            f"between. Received at {where}: {len(node)} group(s) {list(node)}"
        )
    for name, child in node.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"Group names must be non-empty strings. Received: {name!r}")
        if isinstance(child, dict):
            _validate_level(child, path + (name,))
        elif isinstance(child, list | tuple):
            _validate_classes(child, path + (name,))
        else:
            raise TypeError(
                f"Group {name!r} must map to a list of class names or a dict of "
                f"subgroups. Received: {type(child).__name__} {child!r:.200}"
            )


def _validate_classes(names, path):
    if not names:
        raise ValueError(
            f"Group {' > '.join(path)!r} is empty. Every group needs at least one "
            "class; remove the group or add its classes."
        )
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"Class names must be non-empty strings. Received in group "
                f"{' > '.join(path)!r}: {name!r}"
            )


def _validate_unique(tree, classes):
    seen, duplicates = set(), set()
    for name in classes:
        (duplicates if name in seen else seen).add(name)
    if duplicates:
        raise ValueError(
            "Class names must be unique across the hierarchy. Duplicated: "
            f"{sorted(duplicates)}. Rename them, e.g. 'cat/siamese'."
        )
    groups = _group_names(tree)
    repeated = sorted({g for g in groups if groups.count(g) > 1})
    if repeated:
        raise ValueError(f"Group names must be unique. Duplicated: {repeated}")


def _copy_tree(node):
    if isinstance(node, dict):
        return {name: _copy_tree(child) for name, child in node.items()}
    return list(node)


def _leaves(tree):
    return [leaf for child in tree.values() for leaf in _leaves_of(child)]


def _leaves_of(node):
    return _leaves(node) if isinstance(node, dict) else list(node)


def _group_names(tree):
    names = []
    for name, child in tree.items():
        names.append(name)
        if isinstance(child, dict):
            names.extend(_group_names(child))
    return names


def _find_path(node, name):
    for group, child in node.items():
        if isinstance(child, dict):
            found = _find_path(child, name)
            if found:
                return (group,) + found
        elif name in child:
            return (group, name)
    return None


def _load_yaml(text, path):
    try:
        import yaml
    except ImportError:
        raise ImportError(
            f"Reading {str(path)!r} needs PyYAML: `pip install pyyaml`, or write "
            "the hierarchy as JSON."
        ) from None
    return yaml.safe_load(text)

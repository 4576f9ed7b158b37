"""The label hierarchy: groups, their classes, and the index maps between them."""

import functools
import json
import os
import stat
from pathlib import Path

import numpy as np

MAX_DEPTH = 32
MAX_NAMES = 1_000_000
MAX_FILE_BYTES = 16 * 2**20


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
            dict of subgroups (same form, at least two of them). At most
            `MAX_DEPTH` (32) levels and `MAX_NAMES` (1,000,000) names.

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
        _check_size(groups)
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
        """Class names, or label paths as `path` gives them, -> class indices.

        A label path names the groups from the top level down to its class,
        e.g. `("dog", "pug")`: a path through a group that does not hold its
        class, or through an unknown group, is refused.
        """
        labels = list(labels)
        names = [_class_of(label) for label in labels]
        unknown = sorted({str(n) for n in names if n not in self._class_index})
        if unknown:
            raise ValueError(
                f"{len(unknown)} label(s) are not classes of the hierarchy: "
                f"{unknown[:10]}. Known classes: {self.classes}. Add them to the "
                "hierarchy or remove those samples."
            )
        self._check_paths(label for label in labels if isinstance(label, tuple | list))
        return np.array([self._class_index[n] for n in names], dtype="int32")

    def _check_paths(self, paths):
        wrong = {}
        for path in map(tuple, paths):
            if path not in wrong and path != self._paths[path[-1]]:
                wrong[path] = self._path_problem(path)
        if wrong:
            raise ValueError(
                f"{len(wrong)} label path(s) do not lead to their class: "
                f"{'; '.join(list(wrong.values())[:10])}. A label path names the groups from "
                "the top level down to the class, as hierarchy.path(name) gives it (or pass "
                f"the class name alone). Received: labels containing {list(wrong)[:10]}"
            )

    def _path_problem(self, path):
        groups = {group for known in self._paths.values() for group in known[:-1]}
        unknown = [group for group in path[:-1] if group not in groups]
        if unknown:
            return f"{path!r} names {unknown[0]!r}, which is not a group of the hierarchy"
        return f"{path!r} does not lead to {path[-1]!r}, whose path is {self._paths[path[-1]]!r}"

    @functools.cached_property
    def _paths(self):
        """Every class's label path, in one walk of the tree."""
        return dict(_leaf_paths(self._tree, ()))

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
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_file(cls, path):
        """Read a hierarchy from a JSON or YAML file (group -> classes).

        The file must be UTF-8 text of at most `MAX_FILE_BYTES` (16 MiB). A
        key written twice in one mapping is refused (JSON and YAML parsers
        would keep the last one silently). YAML is read with
        `yaml.safe_load`, so tags such as `!!python/object` are refused. Every
        problem raises a `ValueError` (or a `TypeError` for a tree of the
        wrong shape) that names the file.
        """
        path = Path(path)
        text = _read_text(path)
        if path.suffix.lower() in (".yaml", ".yml"):
            tree = _load_yaml(text, path)
        else:
            tree = _load_json(text, path)
        try:
            return cls(tree)
        except (ValueError, TypeError) as error:
            kind = TypeError if isinstance(error, TypeError) else ValueError
            raise kind(
                f"The hierarchy file {str(path)!r} does not describe a valid hierarchy: {error}"
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


def _check_size(groups):
    """Refuse trees too deep or too large to walk, before any recursion."""
    pending = [(groups, 1)] if isinstance(groups, dict | list) else []
    names = 0
    while pending:
        node, depth = pending.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > MAX_DEPTH:
            raise ValueError(
                f"A hierarchy may have at most {MAX_DEPTH} levels. Received: a tree "
                f"nested more than {MAX_DEPTH} levels deep"
            )
        names += len(node)
        if names > MAX_NAMES:
            raise ValueError(
                f"A hierarchy may hold at most {MAX_NAMES:,} group and class names. "
                f"Received: a tree of more than {MAX_NAMES:,} names"
            )
        pending += [(child, depth + 1) for child in children if isinstance(child, dict | list)]


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


def _class_of(label):
    """The class a label names: a class name, or the last element of a label path."""
    if isinstance(label, tuple | list):
        return label[-1] if label else None
    return label


def _leaf_paths(node, prefix):
    for group, child in node.items():
        if isinstance(child, dict):
            yield from _leaf_paths(child, prefix + (group,))
        else:
            yield from ((name, prefix + (group, name)) for name in child)


def _find_path(node, name):
    for group, child in node.items():
        if isinstance(child, dict):
            found = _find_path(child, name)
            if found:
                return (group,) + found
        elif name in child:
            return (group, name)
    return None


# === Files ===


def _read_text(path):
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is None:
        raise ValueError(
            f"No such hierarchy file: {str(path)!r}. Pass the path of a JSON (or YAML) "
            "file mapping each group to its classes (check the spelling and the current "
            f"folder). Received: path={str(path)!r}"
        )
    if not stat.S_ISREG(mode):
        raise ValueError(
            "The hierarchy path is not a regular file (a folder, device or pipe). "
            "Expected a JSON (or YAML) file mapping each group to its classes. "
            f"Received: path={str(path)!r}"
        )
    if os.stat(path).st_size > MAX_FILE_BYTES:
        raise ValueError(
            f"The hierarchy file {str(path)!r} is larger than {MAX_FILE_BYTES // 2**20} "
            f"MiB; a hierarchy is a small JSON or YAML file. Received: "
            f"{os.stat(path).st_size} bytes"
        )
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(
            f"Cannot read the hierarchy file {str(path)!r}. Check its permissions. "
            f"Received: {error}"
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"The hierarchy file {str(path)!r} is not UTF-8 text: byte "
            f"0x{data[error.start]:02x} at position {error.start} is not valid UTF-8. "
            f"Save the file as UTF-8. Received: path={str(path)!r}"
        ) from None


class _DuplicateKeyError(ValueError):
    def __init__(self, key):
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs):
    mapping = dict(pairs)
    if len(mapping) < len(pairs):
        seen = set()
        raise _DuplicateKeyError(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return mapping


def _load_json(text, path):
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except _DuplicateKeyError as error:
        raise ValueError(_duplicate_message(path, error.key)) from None
    except RecursionError:
        raise ValueError(_too_deep_message(path)) from None
    except ValueError as error:  # JSONDecodeError, or an integer too long to read
        raise ValueError(
            f"The hierarchy file {str(path)!r} is not valid JSON. Expected e.g. "
            '{"cat": ["persian", "siamese"], "dog": ["pug"]}. Received: '
            f"{type(error).__name__}: {error}"
        ) from None


def _load_yaml(text, path):
    try:
        import yaml
    except ImportError:
        raise ImportError(
            f"Reading {str(path)!r} needs PyYAML: `pip install pyyaml`, or write "
            "the hierarchy as JSON."
        ) from None
    try:
        return yaml.load(text, Loader=_unique_key_loader())  # a yaml.SafeLoader
    except _DuplicateKeyError as error:
        raise ValueError(_duplicate_message(path, error.key)) from None
    except RecursionError:
        raise ValueError(_too_deep_message(path)) from None
    except Exception as error:  # YAMLError, and e.g. AttributeError on a bad !!timestamp
        raise ValueError(
            f"The hierarchy file {str(path)!r} is not valid YAML for a hierarchy. It "
            "is read with yaml.safe_load, so tags such as !!python/object are refused. "
            "Expected e.g. 'cat: [persian, siamese]' on one line and 'dog: [pug]' on "
            f"the next. Received: {type(error).__name__}: {error}"
        ) from None


@functools.cache
def _unique_key_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """`yaml.SafeLoader` that refuses a key written twice in one mapping."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            pairs = node.value if isinstance(node, yaml.MappingNode) else []
            for key_node, _ in pairs:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str | int | float | bool):
                    if key in seen:
                        raise _DuplicateKeyError(key)
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _duplicate_message(path, key):
    return (
        f"The hierarchy file {str(path)!r} has the key {key!r} twice in one mapping. "
        "A parser would keep only the last one and silently drop the other's classes: "
        f"merge the two entries or rename one. Received: duplicate key {key!r}"
    )


def _too_deep_message(path):
    return (
        f"The hierarchy file {str(path)!r} nests too deeply to read (a hierarchy has "
        f"at most {MAX_DEPTH} levels). Received: a file nested beyond Python's "
        "recursion limit"
    )

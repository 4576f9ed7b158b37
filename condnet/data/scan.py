"""Scanning: the labelled files of a data folder, and the files it skips."""

import contextlib
import errno
import os
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import features

from condnet.data.decode import ImageDecodeError, _open_image
from condnet.hierarchy import MAX_DEPTH, Hierarchy

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff") + (
    (".webp",) if features.check("webp") else ()
)

OUTSIDE = "symlink outside the data folder"
SKIP_REASONS = (
    "unreadable",
    "too many pixels",
    "not a regular file",
    "unsupported extension",
    "dangling symlink",
    "symlink loop",
    OUTSIDE,
    "empty",  # documents (condnet.data.text)
    "binary content",
)
_SHOWN_PATHS = 5


def scan_directory(root, hierarchy=None):
    """Find the images under a folder and label them with a hierarchy.

    Two layouts are read:

    - **nested**, `root/<group>/<class>/*`: the hierarchy is read from the
      folder names, sorted. A group folder that holds folders of folders
      (`root/<group>/<subgroup>/<class>/*`) becomes a nested group.
    - **flat**, `root/<class>/*`, together with a `hierarchy` that says which
      group each class belongs to.

    The layout follows from the arguments: with a `hierarchy` the folders are
    read as flat; without one they must be nested, and a top-level folder
    that holds images directly is an error that asks for the hierarchy.

    Images are the files directly inside each class folder whose extension is
    one of `IMAGE_EXTENSIONS` (case-insensitive; GIFs and TIFFs give their
    first frame). Hidden files and folders (names starting with ".") are
    ignored. Every image is checked cheaply: it must be a regular file, of at
    most `MAX_IMAGE_PIXELS` pixels, and pass Pillow's `verify()` (which reads
    the file without decoding it). Other entries of a class folder are
    skipped, and so are symlinks, anywhere under `root`, that are dangling,
    form a loop (including a folder link to one of its own ancestors) or
    point outside `root`. One warning counts the skipped files by reason
    (`SKIP_REASONS`) and names the first few.

    Args:
        root: str or `Path`. The folder to read.
        hierarchy: `Hierarchy`, dict, or path to a JSON/YAML hierarchy file.
            Only for the flat layout. Defaults to `None` (nested layout).

    Returns:
        A tuple `(hierarchy, paths, labels)`: the `Hierarchy`, the image paths
        as strings (class by class in hierarchy order, sorted by name within a
        class) and their global class indices as an int32 array.

    Example:

    ```python
    hierarchy, paths, labels = scan_directory("shapes/train")
    hierarchy.classes  # ['square', 'star', 'triangle', 'circle', 'ellipse', 'ring']
    ```
    """
    return scan_folder(root, hierarchy, IMAGES)


class FileKind(NamedTuple):
    """What the class folders of a data set hold, for `scan_folder`."""

    noun: str  # "images", "documents"
    takes: Callable  # Path -> bool: whether the scan looks at a file (by its name, cheap)
    problem: Callable  # Path -> None, or the SKIP_REASONS entry why the scan skips it
    expected: str  # what a class folder should hold, for error messages
    reader: str  # what reads them, for error messages ("Pillow")


def scan_folder(root, hierarchy, kind):
    """`scan_directory` for files of any `FileKind` (images, documents)."""
    skipped = {}  # path -> one of SKIP_REASONS
    with _naming_outside_links(root, skipped):
        root = _check_root(root, skipped)
        if hierarchy is None:
            _refuse_flat_layout(root, skipped, kind)
            hierarchy = _read_nested_hierarchy(root, skipped, kind)
            folders = [root.joinpath(*hierarchy.path(name)) for name in hierarchy.classes]
        else:
            hierarchy = _as_hierarchy(hierarchy)
            folders = _flat_class_folders(root, hierarchy, skipped)
        paths, labels = [], []
        for label, folder in enumerate(folders):
            files = _class_files(folder, root, skipped, kind)
            paths += files
            labels += [label] * len(files)
    _warn_skipped(root, skipped)
    return hierarchy, paths, np.array(labels, dtype="int32")


@contextlib.contextmanager
def _naming_outside_links(root, skipped):
    """An error that found a folder empty, raised while links pointing outside `root`
    were skipped, says so: a folder of symlinks into a data set kept elsewhere
    otherwise reads as empty."""
    try:
        yield
    except ValueError as error:
        outside = sorted(p for p, reason in skipped.items() if reason == OUTSIDE)
        if not outside or not any(words in str(error) for words in _EMPTY_WORDS):
            raise
        raise ValueError(f"{error}{_links_note(outside, root)}") from None


# What the errors of an empty folder say (no class folder, no file, no folder at all).
_EMPTY_WORDS = ("has no ", "Found no ", "have no folder", "holds no folder")


def outside_links_note(root, depth=3):
    """The note an error adds when symlinks under `root`, down to `depth` folders deep
    (root/<group>/<class>), point outside it and are skipped; "" when none does."""
    root, found = Path(root), []

    def walk(folder, level):
        for path in _visible(folder):
            problem = _link_problem(path, root)
            if problem == OUTSIDE:
                found.append(str(path))
            elif problem is None and level < depth and path.is_dir():
                walk(path, level + 1)

    try:
        walk(root, 1)
    except (OSError, ValueError):
        return ""  # the scan names an unreadable folder itself
    return _links_note(sorted(found), root) if found else ""


def _links_note(outside, root):
    shown = ", ".join(repr(p) for p in outside[:_SHOWN_PATHS])
    more = " ..." if len(outside) > _SHOWN_PATHS else ""
    return (
        f" Note: {len(outside)} symlink(s) under {str(root)!r} point outside it and were "
        f"skipped ({shown}{more}): condnet reads only what lies inside the data folder. "
        "Hard-link the files in instead (`cp -al SOURCE DEST` makes hard links on the "
        "same disk, without copying the data), copy them, or pass the folder that holds them."
    )


def _check_root(root, skipped=None):
    path = Path(root)
    if not path.exists():
        raise ValueError(
            "The image folder does not exist. Expected a folder laid out as "
            f"root/<group>/<class>/* or root/<class>/*. Received: root={str(root)!r}"
        )
    if not path.is_dir():
        raise ValueError(
            "The image root must be a folder of class (or group) folders, not a "
            f"file. Received: root={str(root)!r}"
        )
    if not _entries(path, path, {} if skipped is None else skipped)[0]:
        raise ValueError(
            f"Found no class or group folders in {str(root)!r} (it holds "
            f"{len(_visible(path))} visible entries). Put the images in "
            "root/<group>/<class>/* or root/<class>/* with a hierarchy file."
        )
    return path


def _refuse_flat_layout(root, skipped, kind):
    for folder in _entries(root, root, skipped)[0]:
        files = _kind_files(folder, root, skipped, kind)
        if files:
            raise ValueError(
                f"The folder {str(folder)!r} holds {len(files)} {kind.noun} directly "
                "(e.g. " + repr(files[0].name) + "), so this looks like a flat "
                "layout root/<class>/*. A flat layout needs a hierarchy file mapping "
                "each group to its classes: pass `--hierarchy FILE` on the command "
                "line or `hierarchy=` in Python. For the nested layout, move the "
                f"{kind.noun} into root/<group>/<class>/. Received: root={str(root)!r}"
            )


def _read_nested_hierarchy(root, skipped, kind):
    tree = {
        folder.name: _read_node(folder, root, skipped, kind, depth=1)
        for folder in _entries(root, root, skipped)[0]
    }
    try:
        return Hierarchy(tree)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"The folders under {str(root)!r} do not form a valid hierarchy: "
            f"{error} Rename or regroup the folders, or use a flat layout with "
            "a hierarchy file."
        ) from None


def _read_node(folder, root, skipped, kind, depth):
    if depth >= MAX_DEPTH:
        raise ValueError(
            f"The folders under {str(root)!r} nest more than {MAX_DEPTH} levels deep, "
            f"the most a hierarchy may have. Received: {str(folder)!r}"
        )
    children = _entries(folder, root, skipped)[0]
    if not children:
        raise ValueError(
            f"The group folder {str(folder)!r} has no class folders. Expected "
            "root/<group>/<class>/* ; add class folders or remove the group."
        )
    subgroups = [child.name for child in children if _entries(child, root, skipped)[0]]
    if not subgroups:
        return [child.name for child in children]
    if len(subgroups) < len(children):
        classes = sorted({child.name for child in children} - set(subgroups))
        raise ValueError(
            f"The folder {str(folder)!r} mixes class folders {classes} with "
            f"subgroup folders {subgroups}. A group holds either classes or "
            "subgroups: move the classes into a subgroup folder."
        )
    for child in children:
        if _kind_files(child, root, skipped, kind):
            raise ValueError(
                f"The folder {str(child)!r} holds both {kind.noun} and subfolders. "
                f"Move its {kind.noun} into class folders."
            )
    return {child.name: _read_node(child, root, skipped, kind, depth + 1) for child in children}


def _as_hierarchy(hierarchy):
    if isinstance(hierarchy, Hierarchy):
        return hierarchy
    if isinstance(hierarchy, dict):
        return Hierarchy(hierarchy)
    if isinstance(hierarchy, str | Path):
        return Hierarchy.from_file(hierarchy)
    raise TypeError(
        "`hierarchy` must be a Hierarchy, a dict mapping groups to classes, or "
        f"the path of a JSON/YAML file. Received: {type(hierarchy).__name__} "
        f"{hierarchy!r:.200}"
    )


def _flat_class_folders(root, hierarchy, skipped):
    found = {folder.name: folder for folder in _entries(root, root, skipped)[0]}
    extra = sorted(set(found) - set(hierarchy.classes))
    if extra:
        raise ValueError(
            f"{len(extra)} class folder(s) in {str(root)!r} are not classes of the "
            f"hierarchy: {extra[:10]}. Known classes: {hierarchy.classes}. Add them "
            "to the hierarchy file or remove the folders. (For a nested layout "
            "root/<group>/<class>/*, pass no hierarchy.)"
        )
    missing = [name for name in hierarchy.classes if name not in found]
    if missing:
        raise ValueError(
            f"{len(missing)} class(es) of the hierarchy have no folder in "
            f"{str(root)!r}: {missing[:10]}. Expected one folder per class, "
            "root/<class>/*. Add the folders or remove the classes from the hierarchy."
        )
    return [found[name] for name in hierarchy.classes]


def _class_files(folder, root, skipped, kind):
    files = _entries(folder, root, skipped)[1]
    problems = {str(path): kind.problem(path) for path in files}
    taken = [path for path, problem in problems.items() if problem is None]
    skipped.update({path: problem for path, problem in problems.items() if problem})
    here = {path: reason for path, reason in skipped.items() if Path(path).parent == folder}
    candidates = [path for path in files if kind.takes(path)]
    if not candidates and not taken:
        others = [path.name for path in _visible(folder)]
        raise ValueError(
            f"The class folder {str(folder)!r} has no {kind.noun}. Expected "
            f"{kind.expected}; found {len(others)} other entries "
            f"{others[:_SHOWN_PATHS]}{_skipped_here(here)}. Add {kind.noun} or remove "
            "the folder."
        )
    if not taken:
        raise ValueError(
            f"None of the {len(candidates)} {kind.noun} in the class folder {str(folder)!r} "
            f"can be read by {kind.reader}{_skipped_here(here)}. Replace them or remove "
            "the folder."
        )
    return taken


def _scan_problem(path):
    """Why the scan skips a file of a class folder (one of SKIP_REASONS), or None."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return "unsupported extension"
    try:
        with _open_image(path) as image:
            image.verify()
    except ImageDecodeError as error:
        return next((r for r in SKIP_REASONS if error.reason.startswith(r)), "unreadable")
    except Exception:  # verify() raises whatever the file's plugin raises
        return "unreadable"
    return None


def _reasons(skipped):
    """'2 unreadable, 1 dangling symlink': the skipped files counted by reason."""
    counts = Counter(skipped.values())
    return ", ".join(f"{counts[reason]} {reason}" for reason in SKIP_REASONS if counts[reason])


def _skipped_here(skipped):
    return f" (skipped: {_reasons(skipped)})" if skipped else ""


def _warn_skipped(root, skipped):
    if not skipped:
        return
    shown = sorted(skipped.items())[:_SHOWN_PATHS]
    first = ", ".join(f"{path!r} ({reason})" for path, reason in shown)
    more = " ..." if len(skipped) > _SHOWN_PATHS else ""
    warnings.warn(
        f"Skipped {len(skipped)} file(s) while scanning {str(root)!r}: {_reasons(skipped)}. "
        f"First ones: {first}{more}. Fix, move or delete those files to silence this "
        "warning.",
        stacklevel=3,
    )


def _visible(folder):
    try:
        return sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    except OSError as error:
        raise ValueError(
            f"Cannot list the folder {str(folder)!r}. Check its permissions. Received: {error}"
        ) from None


def _entries(folder, root, skipped):
    """(subfolders, other entries) of a folder, recording symlinks it cannot follow."""
    folders, files = [], []
    for path in _visible(folder):
        problem = _link_problem(path, root)
        if problem:
            skipped[str(path)] = problem
        elif path.is_dir():
            folders.append(path)
        else:
            files.append(path)
    return folders, files


def _link_problem(path, root):
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as error:
        return "symlink loop" if error.errno == errno.ELOOP else "dangling symlink"
    target, inside = os.path.realpath(path), os.path.realpath(root)
    if not _contains(inside, target):
        return OUTSIDE
    if os.path.isdir(target) and _contains(target, os.path.realpath(path.parent)):
        return "symlink loop"
    return None


def _contains(folder, path):
    return os.path.commonpath([folder, path]) == folder


def _kind_files(folder, root, skipped, kind):
    return [path for path in _entries(folder, root, skipped)[1] if kind.takes(path)]


def _is_image_name(path):
    return path.suffix.lower() in IMAGE_EXTENSIONS


IMAGES = FileKind(
    "images",
    _is_image_name,
    _scan_problem,
    "files ending in " + ", ".join(IMAGE_EXTENSIONS),
    "Pillow",
)

"""Image folders: read a labelled image tree from disk and batch it for `fit`."""

import errno
import io
import math
import multiprocessing
import os
import re
import stat
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
from PIL import Image, ImageOps, features

from condnet.choices import CACHE_POLICIES, COLOR_MODES, MAX_IMAGE_SIDE
from condnet.data.cache import DiskCache, ImageStore
from condnet.hierarchy import MAX_DEPTH, Hierarchy

try:  # libjpeg-turbo without Pillow's Python-level parsing: 2-4x faster on JPEGs
    import simplejpeg
except ImportError:  # Pillow decodes every JPEG then, to the same pixels
    simplejpeg = None

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff") + (
    (".webp",) if features.check("webp") else ()
)
MAX_IMAGE_PIXELS = 64 * 2**20
CACHE_BYTES = 256 * 2**20

SKIP_REASONS = (
    "unreadable",
    "too many pixels",
    "not a regular file",
    "unsupported extension",
    "dangling symlink",
    "symlink loop",
    "symlink outside the data folder",
    "empty",  # documents (condnet.data.text)
    "binary content",
)
_SHOWN_PATHS = 5


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded, and why.

    Raised by `decode_image` for every problem with a file: missing, not a
    regular file (a folder, device or pipe), not an image Pillow can read,
    truncated, more than `MAX_IMAGE_PIXELS` pixels, or in a colour mode that
    cannot be shown as RGB. A `ValueError`, so code that catches those keeps
    working.

    Attributes:
        path: str. The file.
        reason: str. Why it cannot be decoded, e.g. `"not a regular file (a
            character device)"`. It starts with one of `SKIP_REASONS`
            (`"unreadable"` when Pillow fails) when it is a scan category.
    """

    def __init__(self, path, reason):
        super().__init__(
            f"Cannot decode the image {str(path)!r}: {reason}. Replace or delete the "
            f"file. Received: path={str(path)!r}"
        )
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.path, self.reason)


# === Scanning ===


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
    root = _check_root(root)
    skipped = {}  # path -> one of SKIP_REASONS
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


def _check_root(root):
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
    if not _entries(path, path, {})[0]:
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
        return "symlink outside the data folder"
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


# === Splitting ===


def split_indices(labels, validation_split, seed=None):
    """Split sample indices into training and validation, class by class.

    Each class keeps the same share of validation samples (rounded, at least
    one for every class with 2 samples or more, never all of a class), so
    small classes are not left out of validation. The split depends only on
    `labels`, `validation_split` and `seed`.

    Args:
        labels: 1D array of class indices.
        validation_split: float in [0, 1). Share of each class held out.
        seed: int. Seed of the shuffle within each class. Defaults to `None`
            (a different split each call).

    Returns:
        A tuple `(train_indices, validation_indices)` of sorted int64 arrays
        that together cover every sample once.

    Example:

    ```python
    train, validation = split_indices([0, 0, 0, 1, 1], 0.4, seed=1)
    ```
    """
    _check_validation_split(validation_split)
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    held_out = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        held_out.append(rows[: _validation_count(len(rows), validation_split)])
    validation = np.sort(np.concatenate([[]] + held_out).astype("int64"))
    train = np.setdiff1d(np.arange(len(labels)), validation)
    return train, validation


def _validation_count(size, validation_split):
    if validation_split == 0 or size < 2:
        return 0
    return min(size - 1, max(1, round(validation_split * size)))


# === Decoding ===


def decode_image(path, image_size=(64, 64), color_mode="rgb"):
    """Read one image file as a photo viewer shows it, resized, as uint8 pixels.

    The EXIF orientation is applied (`PIL.ImageOps.exif_transpose`), so a
    photo taken sideways comes out upright. Modes are converted the way they
    look:

    - 16-bit images (`"I;16"` and the like) are scaled to 8 bits (divided by
      257); 32-bit integer images (`"I"`) are read as 16-bit data.
    - float images (`"F"`) are read as values in [0, 255] (NaN as 0), clipped.
    - images with transparency (`"RGBA"`, `"LA"`, `"PA"`, `"P"` or `"L"` with
      a transparent colour) are laid over a white background.
    - every other mode (`"1"`, `"L"`, `"P"`, `"CMYK"`, `"YCbCr"`, ...) goes
      through Pillow's `convert`. Grayscale uses Pillow's `"L"` (ITU-R 601-2
      luma).

    Multi-frame files (GIF, TIFF) give their first frame. The image is then
    resized (bilinear) to `image_size`.

    Args:
        path: str or `Path`. The image file.
        image_size: int or `(height, width)`. Defaults to `(64, 64)`.
        color_mode: `"rgb"` or `"grayscale"`. Defaults to `"rgb"`.

    Returns:
        A uint8 array of shape `(height, width, 3)` (or `(height, width, 1)`
        for grayscale).

    Raises:
        ImageDecodeError: whatever the problem with the file: missing, not a
            regular file (a folder, a device such as `/dev/zero`, a FIFO),
            more than `MAX_IMAGE_PIXELS` pixels (checked from the header,
            before decoding), unreadable or truncated. No other error comes
            out of a bad file.

    Example:

    ```python
    pixels = decode_image("shapes/train/round/ring/0.png", image_size=48)
    pixels.shape  # (48, 48, 3)
    ```
    """
    return _decode(str(path), check_image_size(image_size), _check_color_mode(color_mode))


_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def decode_image_bytes(
    data, image_size=(64, 64), color_mode="rgb", name="<upload>", max_pixels=None
):
    """`decode_image` for an image held in memory (an upload): the same modes, EXIF
    orientation, first frame, resizing and pixel guard (checked from the header, before
    decoding; `max_pixels`, default `MAX_IMAGE_PIXELS`). `name` is what an
    `ImageDecodeError` names."""
    size, color_mode = check_image_size(image_size), _check_color_mode(color_mode)
    data = bytes(data)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    pixels = _jpeg_pixels(data, size, color_mode, limit)
    if pixels is not None:
        return pixels
    opened = _opened(lambda: Image.open(io.BytesIO(data)), name, max_pixels)
    with opened as image:
        return _pixels(image, name, size, color_mode)


def _decode(path, image_size, color_mode):
    problem = _file_problem(path)
    if problem:
        raise ImageDecodeError(path, problem)
    pixels = _jpeg_pixels(_jpeg_bytes(path), image_size, color_mode, MAX_IMAGE_PIXELS)
    if pixels is not None:
        return pixels
    with _opened(lambda: Image.open(path), path) as image:
        return _pixels(image, path, image_size, color_mode)


def _jpeg_bytes(path):
    """The bytes of a JPEG file, or None for any other file (or one that cannot be read:
    Pillow then says why)."""
    if simplejpeg is None:
        return None
    try:
        with open(path, "rb") as file:
            return _JPEG_START + file.read() if file.read(2) == _JPEG_START else None
    except OSError:
        return None


def _jpeg_pixels(data, image_size, color_mode, max_pixels):
    """The pixels `_pixels` gives for JPEG `data`, decoded by libjpeg-turbo (simplejpeg) at
    the scale Pillow's `draft` picks, turned by the EXIF orientation and resized as there:
    the same array, faster. None for whatever this path does not handle exactly as Pillow
    (not a JPEG, CMYK, an XMP orientation, a corrupt or too large file...): Pillow decodes
    those, and names what is wrong with a bad file."""
    if simplejpeg is None or data is None or not data.startswith(_JPEG_START):
        return None
    try:
        height, width, stored, _ = simplejpeg.decode_jpeg_header(data)
        orientation = _jpeg_orientation(data)
        if width * height > max_pixels or orientation is None or stored not in _SAME_AS_PILLOW:
            return None
        side = max(image_size)
        scale = next((s for s in (8, 4, 2) if min(width // side, height // side) >= s), 1)
        shape = (-(-height // scale), -(-width // scale))
        space = "RGB" if color_mode == "rgb" else "GRAY"
        array = simplejpeg.decode_jpeg(data, space, min_height=shape[0], min_width=shape[1])
    except Exception:  # noqa: BLE001 - Pillow decodes it again and says what is wrong
        return None
    if array.shape[:2] != shape:
        return None
    turned = orientation in _TRANSPOSES and orientation
    if not turned and shape == tuple(image_size):
        return array  # already upright and of the size asked (no copy through Pillow)
    image = Image.fromarray(array if color_mode == "rgb" else array[..., 0])
    if turned:
        image = image.transpose(_TRANSPOSES[orientation])
    height, width = image_size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype="uint8")
    return array[..., None] if color_mode == "grayscale" else array


def _jpeg_orientation(data):
    """The EXIF orientation (1 to 8) in JPEG `data`'s header, 1 when it has none, None
    when it has an XMP packet (which Pillow also reads for the orientation)."""
    position, orientation = 2, None
    while position + 4 <= len(data) and data[position] == 0xFF and data[position + 1] != 0xDA:
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        segment = data[position + 4 : end]
        if data[position + 1] == 0xE1 and segment.startswith(b"http://ns.adobe.com/xap"):
            return None
        if data[position + 1] == 0xE1 and segment.startswith(b"Exif") and orientation is None:
            exif = Image.Exif()
            exif.load(segment)
            orientation = exif.get(_ORIENTATION, 1)
        position = end
    return orientation or 1


_JPEG_START = b"\xff\xd8"
_SAME_AS_PILLOW = ("YCbCr", "Gray")  # stored colour spaces: Pillow converts CMYK its own way
_ORIENTATION = 0x0112
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # as `PIL.ImageOps.exif_transpose`


def _pixels(image, name, image_size, color_mode):
    height, width = image_size
    mode = "RGB" if color_mode == "rgb" else "L"
    try:
        image.draft(mode, (max(image_size),) * 2)  # JPEG: decode at a reduced scale
        image = _as_mode(ImageOps.exif_transpose(image), mode)
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype="uint8")
    except Exception as error:  # a bad file raises whatever its plugin raises
        raise ImageDecodeError(name, _describe(error)) from None
    return array[..., None] if mode == "L" else array


def _open_image(path):
    """`Image.open` on a regular file whose header says at most MAX_IMAGE_PIXELS."""
    problem = _file_problem(path)
    if problem:
        raise ImageDecodeError(path, problem)
    return _opened(lambda: Image.open(path), path)


def _opened(open_image, name, max_pixels=None):
    """`open_image()`, its failures and a header of more than `max_pixels` (default
    MAX_IMAGE_PIXELS) as `ImageDecodeError`s naming `name`."""
    try:
        image = open_image()
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(name, f"too many pixels ({error})") from None
    except Exception as error:  # Pillow names an upload by its BytesIO's repr: say "the image"
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the image", _describe(error))
        raise ImageDecodeError(name, reason) from None
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    width, height = image.size
    if width * height > limit:
        image.close()
        named = f"MAX_IMAGE_PIXELS={limit:,}" if max_pixels is None else f"{limit:,}"
        raise ImageDecodeError(
            name,
            f"too many pixels ({width} x {height} = {width * height:,}; at most "
            f"{named}, a guard against decompression bombs)",
        )
    return image


def _file_problem(path):
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symlink loop"
        if os.path.islink(path):
            return "dangling symlink"
        return f"unreadable ({error.strerror or error})"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
    return f"not a regular file ({kind})"


def _as_mode(image, mode):
    """Any Pillow image -> mode "RGB" or "L", as it looks."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        image = _from_values(np.asarray(image).astype("float64") / 257)
    elif image.mode == "F":
        image = _from_values(np.nan_to_num(np.asarray(image, dtype="float64")))
    elif image.mode in _ALPHA_MODES or "transparency" in image.info:
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
    return image.convert(mode)


def _from_values(values):
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype("uint8"))


def _describe(error):
    text = str(error) or "no details"
    return f"unreadable ({type(error).__name__}: {text[:200]})"


# === Batches ===


class ImageFolder(keras.utils.PyDataset):
    """Batches of images read from files, with their class labels.

    A `keras.utils.PyDataset`, so it works with `fit`, `evaluate` and
    `predict` on every backend. Each batch is `(images, labels)`: float32
    images in [0, 255] of shape `(batch, height, width, channels)` (3 channels
    for "rgb", 1 for "grayscale"), decoded by `decode_image` and resized to
    `image_size` whatever their size on disk, and int32 global class indices.

    Images are decoded from disk by `decode_workers` worker threads (or
    processes, `decoder`), and the rows of the next `READ_AHEAD` batches are
    decoded while the model trains on the current one. JPEGs are decoded by
    libjpeg-turbo at 1/2, 1/4 or 1/8 scale when the target size allows
    (`decode_image`). With `cache="memory"`, each decoded image (uint8, already
    resized) is kept in one array in memory after its first use; with
    `cache="disk"` in a memory-mapped file outside the data (`DiskCache`,
    `cache_dir`), so later epochs and later runs read no image file. By
    default (`"auto"`) the memory holds the set when it fits in `CACHE_BYTES`
    (256 MiB: about 21,000 images at 64x64 RGB, 1,700 at 224x224), and the
    disk holds it otherwise.

    A file can pass the scan and still fail to decode (e.g. a truncated
    JPEG). What a batch then holds depends on `substitute_unreadable`:

    - `True` (for training): the row is replaced by the next readable sample
      *and that sample's label*, so training never stops. The substitutions
      are counted per file in `substitutions` and reported in one warning at
      the end of the epoch in which a file first failed.
    - `False` (for evaluation and prediction): batches are
      `(images, labels, valid)`. A failed row keeps its own label, its image
      is all zeros and its `valid` entry is 0.0 (1.0 elsewhere). Keras reads
      `valid` as sample weights, so the loss and the `weighted_metrics` of
      `model.evaluate(data)` leave the failed rows out (a `ConditionalModel`'s
      own metrics too; plain compiled `metrics` do not). `model.predict`
      ignores it: drop those rows from its output.

    `read_batch` gives any batch without substitution, with the reason each
    failed row failed, whatever `substitute_unreadable`; `batch_rows` says
    which samples a batch holds. `evaluate_model` and the run tools use them.

    Args:
        paths: list of image file paths.
        labels: 1D array of global class indices, one per path.
        hierarchy: `Hierarchy` (or dict) the labels index into.
        image_size: int or `(height, width)`. Size the images are resized to.
            Defaults to `(64, 64)`.
        batch_size: int. Defaults to 32.
        color_mode: `"rgb"` or `"grayscale"`. Defaults to `"rgb"`.
        shuffle: bool. Whether to reshuffle the samples at the end of every
            epoch (and once at the start). Defaults to `False`.
        seed: int. Seed of the shuffles. Defaults to `None`.
        cache: `"auto"`, `"memory"`, `"disk"` or `"none"` (`True` is
            `"memory"`, `False` `"none"`, `None` `"auto"`). Where decoded images
            are kept. Defaults to `"auto"`.
        cache_dir: str or `Path`. The folder of the disk cache. Defaults to
            `$CONDNET_CACHE_DIR`, else `~/.cache/condnet/decoded`.
        decode_workers: int or `"auto"`. Workers that decode images (1:
            decode in the caller's thread, no read-ahead). Defaults to
            `"auto"`: one per core, at most 16.
        decoder: `"threads"`, `"processes"` or `"auto"`. What the workers
            are. Threads decode in parallel while libjpeg-turbo and Pillow's
            decoders and resizing hold no Python lock, which is most of the
            work, and hand over the pixels without copying them; forked
            processes decode in parallel whatever the image, but send every
            pixel back through a pipe. Threads read more images/s than
            processes on JPEGs and PNGs (`benchmarks/input_pipeline.py`;
            figures in benchmarks/RESULTS.md).
            Defaults to `"auto"`: threads.
        dtype: `"float32"` or `"uint8"`. The training batches' images (4
            times smaller as uint8; a functional Keras model casts them to
            its input's dtype, so the conversion runs inside the model).
            `read_batch` and `numpy` give float32. Defaults to `"float32"`.
        substitute_unreadable: bool. Whether a row whose image fails to
            decode is replaced by the next readable sample (`True`) or kept
            and marked invalid in a third batch element (`False`). Defaults
            to `True`.
        **pydataset_kwargs: `workers`, `use_multiprocessing` and
            `max_queue_size`, passed to `keras.utils.PyDataset`.

    Example:

    ```python
    hierarchy, paths, labels = scan_directory("shapes/train")
    data = ImageFolder(paths, labels, hierarchy, image_size=48, shuffle=True)
    model.fit(data, epochs=5)
    images, labels, errors = data.read_batch(0)  # errors[i] is None or a reason
    ```
    """

    def __init__(
        self,
        paths,
        labels,
        hierarchy,
        image_size=(64, 64),
        batch_size=32,
        color_mode="rgb",
        shuffle=False,
        seed=None,
        cache=None,
        substitute_unreadable=True,
        cache_dir=None,
        decode_workers="auto",
        decoder="auto",
        dtype="float32",
        **pydataset_kwargs,
    ):
        self.hierarchy = _as_hierarchy(hierarchy)
        self.paths = [str(path) for path in paths]
        self.labels = self.hierarchy.check_labels(labels).astype("int32")
        _check_lengths(self.paths, self.labels)
        self.image_size = check_image_size(image_size)
        self.batch_size = _check_batch_size(batch_size)
        self.color_mode = _check_color_mode(color_mode)
        super().__init__(**pydataset_kwargs)
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.cache = self._cache_policy(_check_cache(cache))
        self.cache_dir = cache_dir
        self.decode_workers = _check_decode_workers(decode_workers)
        self.decoder = _check_decoder(decoder)
        if dtype not in ("float32", "uint8"):
            raise ValueError(f"`dtype` must be 'float32' or 'uint8'. Received: dtype={dtype!r}")
        self.dtype = dtype
        self._pending = {}  # row -> (Future of its chunk's decoding, position in it)
        self._pending_lock = threading.Lock()
        self._here = threading.local()  # `.active` while `decoded_here` runs in a thread
        self._store = _StoreSlot(self)  # the decoded images, shared with subsets
        self._store_rows = np.arange(len(self.paths))  # this folder's rows in the store
        self.substitute_unreadable = bool(substitute_unreadable)
        self.substitutions = {}  # path -> rows it was replaced in, all epochs
        self._epoch_substitutions = {}
        self._reported = set()
        self._unreadable = {}  # path -> reason, shared with subsets
        self._shard = None  # (process index, process count): see `shard`
        self._rng, self._order = batch_order(self.num_samples, self.shuffle, seed)

    @property
    def num_samples(self):
        return len(self.paths)

    @property
    def channels(self):
        return 3 if self.color_mode == "rgb" else 1

    @property
    def unreadable(self):
        """The files found so far to fail decoding: a dict path -> reason."""
        return dict(self._unreadable)

    def __len__(self):
        batches = math.ceil(self.num_samples / self.batch_size)
        if self._shard is not None and 0 < self.num_samples % self.batch_size < self._shard[1]:
            batches -= 1  # a last batch of fewer rows than processes gives none to some
        return batches

    def __getitem__(self, index):
        if not self.substitute_unreadable:
            images, labels, errors = self.read_batch(index)
            return images, labels, np.array([error is None for error in errors], "float32")
        rows = self.batch_rows(index)
        self._read_ahead(index)
        images, reasons = self._images(rows)
        if any(reasons):
            rows, images = self._substituted(rows, images, reasons)
        return images.astype(self.dtype, copy=False), self.labels[rows]

    def decoded_here(self, index):
        """`self[index]` with its files decoded in the calling thread and nothing read
        ahead: for a caller that runs several batches at once itself, such as the
        `tf.data` map with parallel calls that feeds `fit` on TensorFlow
        (`condnet.training.distribute.fit_inputs`). Several threads may call it at
        once; the decoded-image store is shared as usual."""
        self._here.active = True
        try:
            return self[index]
        finally:
            self._here.active = False

    def _decodes_here(self):
        return self.decode_workers == 1 or getattr(self._here, "active", False)

    def batch_rows(self, index):
        """The sample indices (into `paths` and `labels`) of batch `index`, in order."""
        if not (is_int(index) and 0 <= index < len(self)):
            raise IndexError(
                f"Batch index out of range: this ImageFolder has {len(self)} batches. "
                f"Received: index={index!r}"
            )
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        if self._shard is None:
            return rows
        index, count = self._shard
        share = len(rows) // count  # every process the same number of rows
        return rows[index * share : (index + 1) * share]

    def read_batch(self, index):
        """Batch `index` without substitution: `(images, labels, errors)`.

        `errors` holds one entry per row: `None` where the image decoded,
        else why it did not (e.g. `"unreadable (OSError: image file is
        truncated)"`). A failed row keeps its own label; its image is all
        zeros and must not be used. Row `i` is the sample
        `batch_rows(index)[i]`.
        """
        rows = self.batch_rows(index)
        self._read_ahead(index)
        images, errors = self._images(rows)
        return images.astype("float32"), self.labels[rows], errors

    def on_epoch_end(self):
        self._report_substitutions()
        if self.shuffle:
            self._cancel_read_ahead()  # the rows ahead were those of the old order
            self._order = self._rng.permutation(self.num_samples)

    def subset(self, indices):
        """A new ImageFolder on some rows (integer indices or a boolean mask).

        It keeps every option of this one and shares its cache of decoded
        images (and of files that fail to decode). Use it for a validation
        split or to train one expert on the samples of its own group.
        """
        rows = _check_indices(indices, self.num_samples)
        subset = ImageFolder(
            [self.paths[row] for row in rows],
            self.labels[rows],
            self.hierarchy,
            image_size=self.image_size,
            batch_size=self.batch_size,
            color_mode=self.color_mode,
            shuffle=self.shuffle,
            seed=self.seed,
            cache=self.cache,
            substitute_unreadable=self.substitute_unreadable,
            cache_dir=self.cache_dir,
            decode_workers=self.decode_workers,
            decoder=self.decoder,
            dtype=self.dtype,
            workers=self.workers,
            use_multiprocessing=self.use_multiprocessing,
            max_queue_size=self.max_queue_size,
        )
        subset._store, subset._unreadable = self._store, self._unreadable
        subset._store_rows = self._store_rows[rows]
        return subset

    def shard(self, index, count):
        """This process's slice of every batch, in a job of `count` processes.

        Batch `i` of shard `index` holds the `index`-th of `count` equal slices
        of batch `i` of this folder (the rows a last batch cannot split evenly
        are left out; a last batch of fewer rows than processes is dropped),
        so the shards of all processes make up each global batch. The
        processes must shuffle alike: a shuffled folder needs a `seed`. It
        shares this folder's caches; `whole` is the folder it slices.
        """
        if not (is_int(count) and count >= 1 and is_int(index) and 0 <= index < count):
            raise ValueError(
                f"shard takes a process index in 0..count-1 and a count >= 1. Received: "
                f"index={index!r}, count={count!r}"
            )
        if self.shuffle and self.seed is None:
            raise ValueError(
                "Shards of a shuffled ImageFolder need its seed, so that every process "
                "shuffles alike. Received: seed=None"
            )
        if self.batch_size % count:
            raise ValueError(
                f"Each of the {count} processes takes an equal slice of every batch, so the "
                f"batch size must divide by {count}. Received: batch_size={self.batch_size}"
            )
        shard = self.subset(np.arange(self.num_samples))
        shard._shard, shard.whole = (index, count), self
        return shard

    def numpy(self):
        """All images and labels as arrays, in `paths` order (small sets only).

        Files that fail to decode are left out, with their labels, and
        counted in one warning.
        """
        images, reasons = self._images(np.arange(self.num_samples))
        kept = [row for row, reason in enumerate(reasons) if reason is None]
        if len(kept) < self.num_samples:
            failed = [self.paths[row] for row, reason in enumerate(reasons) if reason]
            warnings.warn(
                f"numpy() left out {len(failed)} image(s) that fail to decode, with their "
                f"labels: {self._described(failed)}. Replace or delete the files to "
                "silence this warning.",
                stacklevel=2,
            )
        return images[kept].astype("float32"), self.labels[kept]

    def __repr__(self):
        return (
            f"ImageFolder(num_samples={self.num_samples}, num_classes="
            f"{self.hierarchy.num_classes}, image_size={self.image_size}, "
            f"batch_size={self.batch_size}, color_mode={self.color_mode!r})"
        )

    # === Decoding ===

    def _images(self, rows):
        """`(images, reasons)` of `rows`: a uint8 array (zeros where a file fails) and
        None or why, per row. Taken from the store, from the read-ahead, or decoded now."""
        store = self._store.get()
        found = store.found(self._store_rows[rows]) if store else np.zeros(len(rows), bool)
        if store is not None and found.all():  # once cached: one copy out of the store
            return np.asarray(store.images[self._store_rows[rows]]), [None] * len(rows)
        images = np.zeros((len(rows), *self.image_size, self.channels), "uint8")
        if found.any():
            images[found] = store.images[self._store_rows[rows[found]]]
        missing = [i for i in np.flatnonzero(~found) if self.paths[rows[i]] not in self._unreadable]
        for future, places in self._taken([rows[i] for i in missing]).items():
            pixels, why = future.result()
            mine = [missing[j] for j, _ in places]
            theirs = [position for _, position in places]
            images[mine] = pixels[theirs]
            self._keep(rows[mine], pixels[theirs], [why[t] for t in theirs], store)
        reasons = [None] * len(rows)
        for i in np.flatnonzero(~found):
            reasons[i] = self._unreadable.get(self.paths[rows[i]])
        return images, reasons

    def _taken(self, rows):
        """The decoding of `rows` (started now where the read-ahead had not): a dict
        future -> `[(index in rows, position in the future's chunk), ...]`."""
        taken, indices = {}, list(range(len(rows)))
        while indices:
            self._decode_soon([rows[j] for j in indices])
            with self._pending_lock:
                pending = [(j, self._pending.pop(rows[j], None)) for j in indices]
            for j, entry in pending:
                if entry is not None:
                    taken.setdefault(entry[0], []).append((j, entry[1]))
            # Rows another thread took meanwhile: decode them again.
            indices = [j for j, entry in pending if entry is None]
        return taken

    def _keep(self, rows, images, reasons, store):
        """Note the files that failed; put the decoded images in the store."""
        failed = [j for j, reason in enumerate(reasons) if reason is not None]
        for j in failed:
            self._unreadable[self.paths[rows[j]]] = reasons[j]
        if store is not None:
            decoded = np.ones(len(rows), bool)
            decoded[failed] = False
            store.write(self._store_rows[rows[decoded]], images[decoded])

    def _substituted(self, rows, images, reasons):
        """Each failed row replaced by the next readable sample and its label."""
        rows = rows.copy()
        for i in [i for i, reason in enumerate(reasons) if reason]:
            self._count_substitution(self.paths[rows[i]])
            rows[i], images[i] = self._next_readable(rows[i])
        return rows, images

    def _next_readable(self, row):
        for step in range(1, self.num_samples):
            candidate = (row + step) % self.num_samples
            images, reasons = self._images(np.array([candidate]))
            if reasons[0] is None:
                return candidate, images[0]
        raise ValueError(
            f"None of the {self.num_samples} images of this ImageFolder can be "
            f"decoded, e.g. {self._described([self.paths[row]])}. Check the files."
        )

    def _decode_soon(self, rows):
        """Start decoding `rows` (those not started yet) in chunks spread over the
        decoding workers; each row's `(future, position)` goes to `_pending`. Decoding
        in the calling thread (`_decodes_here`), the rows are claimed under the lock and
        decoded after it, so that other threads decode other rows meanwhile."""
        here = self._decodes_here()
        with self._pending_lock:
            rows = [row for row in rows if row not in self._pending]
            workers = 1 if here else self.decode_workers
            size = max(1, min(_CHUNK, math.ceil(len(rows) / workers)))
            claimed = []
            for start in range(0, len(rows), size):
                chunk = rows[start : start + size]
                future = Future() if here else self._submit([self.paths[row] for row in chunk])
                self._pending.update((row, (future, i)) for i, row in enumerate(chunk))
                claimed.append((future, chunk))
        if here:
            for future, chunk in claimed:
                _settle(future, self._submit([self.paths[row] for row in chunk]))

    def _submit(self, paths):
        arguments = (paths, self.image_size, self.color_mode)
        if self._decodes_here():
            future = Future()
            try:
                future.set_result(decode_files(*arguments))
            except BaseException as error:  # noqa: BLE001 - the waiting threads get it too
                future.set_exception(error)
            return future
        if self.decoder == "processes":
            processes = _process_pool(self.decode_workers)
            if processes is not None:
                # Absolute paths: the processes keep the working folder they were forked in.
                paths = [os.path.abspath(path) for path in paths]
                return processes.submit(decode_files, paths, *arguments[1:])
        return _thread_pool(self.decode_workers).submit(decode_files, *arguments)

    def _read_ahead(self, index):
        """Start decoding the rows of batch `index` and of the `READ_AHEAD` after it that
        the store does not hold."""
        if self._decodes_here():
            return
        store = self._store.get()
        for ahead in range(index, min(len(self), index + 1 + READ_AHEAD)):
            rows = self.batch_rows(ahead)
            if store is not None:
                rows = rows[~store.found(self._store_rows[rows])]
            self._decode_soon([row for row in rows if self.paths[row] not in self._unreadable])

    def _cancel_read_ahead(self):
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            future.cancel()

    def _cache_policy(self, cache):
        if cache != "auto":
            return cache
        return "memory" if self._fits_in_cache() else "disk"

    def _count_substitution(self, path):
        self.substitutions[path] = self.substitutions.get(path, 0) + 1
        self._epoch_substitutions[path] = self._epoch_substitutions.get(path, 0) + 1

    def _report_substitutions(self):
        counts, self._epoch_substitutions = self._epoch_substitutions, {}
        if set(counts) - self._reported:
            self._reported.update(counts)
            warnings.warn(
                f"{sum(counts.values())} row(s) of this epoch held an image that fails "
                "to decode and were replaced by the next readable sample and its label; "
                f"{len(counts)} file(s): {self._described(sorted(counts))}. "
                "`ImageFolder.substitutions` counts the rows per file (evaluation and "
                "prediction never substitute). Replace or delete the files to silence "
                "this warning.",
                stacklevel=2,
            )

    def _described(self, paths):
        shown = [f"{path!r} ({self._unreadable.get(path, 'unreadable')})" for path in paths]
        more = " ..." if len(paths) > _SHOWN_PATHS else ""
        return ", ".join(shown[:_SHOWN_PATHS]) + more

    def _fits_in_cache(self):
        height, width = self.image_size
        return self.num_samples * height * width * self.channels <= CACHE_BYTES


# Batches whose rows are decoded ahead of the one requested.
READ_AHEAD = 2


def _settle(future, done):
    """Give `future` the outcome of the finished future `done`."""
    if done.exception() is not None:
        future.set_exception(done.exception())
    else:
        future.set_result(done.result())


_CHUNK = 64  # most images a decoding task takes (a bounded reply, however many are asked)
DECODERS = ("auto", "processes", "threads")
_POOLS = {}
_POOLS_LOCK = threading.Lock()


def decode_files(paths, image_size, color_mode):
    """What a decoding worker returns for some files: `(images, reasons)`, one uint8
    array (zeros where a file fails) and None or why each file failed."""
    channels = 3 if color_mode == "rgb" else 1
    images = np.zeros((len(paths), *image_size, channels), "uint8")
    reasons = [None] * len(paths)
    for i, path in enumerate(paths):
        try:
            images[i] = _decode(path, image_size, color_mode)
        except ImageDecodeError as error:
            reasons[i] = error.reason
    return images, reasons


class _StoreSlot:
    """The `ImageStore` of a folder's files, shared with its subsets, made at its first
    use (a pack on disk is named after its files' sizes and times, read then)."""

    def __init__(self, folder):
        self.paths, self.cache, self.cache_dir = folder.paths, folder.cache, folder.cache_dir
        self.image_size, self.color_mode = folder.image_size, folder.color_mode
        self.shape = (*folder.image_size, folder.channels)
        self._made, self._store, self._lock = False, None, threading.Lock()

    def get(self):
        with self._lock:
            if not self._made:
                self._store, self._made = self._new_store(), True
            return self._store

    def _new_store(self):
        if self.cache == "memory":
            return ImageStore.in_memory(len(self.paths), self.shape)
        if self.cache == "disk":
            return DiskCache(self.cache_dir, self.image_size, self.color_mode).open(self.paths)
        return None


def _thread_pool(workers):
    """One thread pool per size, shared by every ImageFolder of this process."""
    with _POOLS_LOCK:
        if ("threads", workers) not in _POOLS:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="condnet-decode")
            _POOLS["threads", workers] = pool
        return _POOLS["threads", workers]


def _process_pool(workers):
    """One pool of decoding processes per size, forked from this process (so they start at
    once, with nothing to import), or None where processes cannot be forked."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    with _POOLS_LOCK:
        if ("processes", workers) not in _POOLS:
            context = multiprocessing.get_context("fork")
            with warnings.catch_warnings():  # fork of a threaded process (3.12+, JAX)
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                pool = ProcessPoolExecutor(
                    workers, mp_context=context, initializer=_exit_with, initargs=(os.getpid(),)
                )
            _POOLS["processes", workers] = pool
        return _POOLS["processes", workers]


def _check_cache(cache):
    legacy = {None: "auto", True: "memory", False: "none"}
    if isinstance(cache, bool) or cache is None:
        return legacy[cache]
    if cache not in CACHE_POLICIES:
        raise ValueError(
            f"`cache` must be one of {list(CACHE_POLICIES)} (or True / False / None). "
            f"Received: cache={cache!r}"
        )
    return cache


def _exit_with(parent):
    """In a decoding process: exit as soon as `parent` is gone (even killed with SIGKILL), so
    that no orphan keeps its memory or the pipes of whoever ran the parent."""

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _check_decoder(decoder):
    if decoder not in DECODERS:
        raise ValueError(
            f"`decoder` must be one of {list(DECODERS)}. Received: decoder={decoder!r}"
        )
    if decoder == "auto":
        return "threads"
    return decoder


def _check_decode_workers(workers):
    if workers == "auto":
        return max(1, min(16, os.cpu_count() or 1))
    if not (is_int(workers) and 1 <= workers <= 256):
        raise ValueError(
            "`decode_workers` must be 'auto' or an int from 1 to 256 (1 decodes in the "
            f"caller's thread). Received: decode_workers={workers!r}"
        )
    return int(workers)


# === Loading ===


def load_folders(
    root,
    hierarchy=None,
    image_size=64,
    batch_size=32,
    validation_split=0.2,
    seed=1337,
    color_mode="rgb",
    shuffle=True,
    **pydataset_kwargs,
):
    """Read an image folder into training and validation `ImageFolder`s.

    Scans `root` with `scan_directory` (nested `root/<group>/<class>/*`, or
    flat `root/<class>/*` with a `hierarchy`), then holds out
    `validation_split` of every class with `split_indices`. The training set
    is reshuffled every epoch when `shuffle`; the validation set keeps file
    order. Options are checked before any file is read.

    Args:
        root: str or `Path`. The image folder.
        hierarchy: `Hierarchy`, dict, or path of a JSON/YAML file. Needed for
            the flat layout only. Defaults to `None`.
        image_size: int or `(height, width)`. Defaults to 64.
        batch_size: int. Defaults to 32.
        validation_split: float in [0, 1). Share of each class held out for
            validation. Defaults to 0.2.
        seed: int. Seed of the split and of the shuffles. Defaults to 1337.
        color_mode: `"rgb"` or `"grayscale"`. Defaults to `"rgb"`.
        shuffle: bool. Whether to shuffle the training set every epoch.
            Defaults to `True`.
        **pydataset_kwargs: `ImageFolder` options (`cache`, `cache_dir`,
            `decode_workers`) and `keras.utils.PyDataset`'s (`workers`,
            `use_multiprocessing`, `max_queue_size`), passed to both
            `ImageFolder`s.

    Returns:
        A tuple `(train, validation)` of `ImageFolder`s; `validation` is
        `None` when `validation_split` is 0. Both carry the `hierarchy`.

    Example:

    ```python
    train, validation = load_folders("shapes/train", image_size=48)
    train.hierarchy.groups  # ['angular', 'round']
    model.fit(train, validation_data=validation, epochs=5)
    ```
    """
    options = dict(
        image_size=check_image_size(image_size),
        batch_size=_check_batch_size(batch_size),
        color_mode=_check_color_mode(color_mode),
        **pydataset_kwargs,
    )
    _check_validation_split(validation_split)
    hierarchy, paths, labels = scan_directory(root, hierarchy)
    train_rows, validation_rows = split_indices(labels, validation_split, seed)
    train = ImageFolder(
        [paths[row] for row in train_rows],
        labels[train_rows],
        hierarchy,
        shuffle=shuffle,
        seed=seed,
        **options,
    )
    if not validation_split:
        return train, None
    if not len(validation_rows):
        raise ValueError(
            f"`validation_split={validation_split}` holds out no sample: every class "
            f"in {str(root)!r} has fewer than 2 images. Add images or pass "
            "validation_split=0."
        )
    validation = ImageFolder(
        [paths[row] for row in validation_rows],
        labels[validation_rows],
        hierarchy,
        **options,
    )
    return train, validation


# === Checks ===


def batch_order(count, shuffle, seed):
    """`(rng, order)` of a batched dataset of `count` samples: the generator of its
    reshuffles and its first order (a permutation when shuffled, else 0..count-1)."""
    rng = np.random.default_rng(seed)
    return rng, rng.permutation(count) if shuffle else np.arange(count)


def check_image_size(image_size):
    """`image_size` (an int: a square; or a `(height, width)` pair of ints) as a
    `(height, width)` tuple of ints, each side from 1 to `MAX_IMAGE_SIDE` pixels; a
    TypeError or ValueError otherwise.

    The one rule for every image size condnet takes: folders, decoding and the
    training recipe's options. The smallest side a model takes is its backbone's
    to check (`condnet.vision.backbones`)."""
    size = (image_size, image_size) if is_int(image_size) else image_size
    if not (isinstance(size, tuple | list) and len(size) == 2 and all(map(is_int, size))):
        raise TypeError(
            "image_size must be an int or a (height, width) pair of ints, e.g. 64 or (64, 96). "
            f"Received: image_size={image_size!r}"
        )
    if not all(1 <= side <= MAX_IMAGE_SIDE for side in size):
        raise ValueError(
            f"image_size must be from 1 to {MAX_IMAGE_SIDE} pixels a side: larger images need "
            "gigabytes of memory per batch (resize the images instead). Received: "
            f"image_size={image_size!r}"
        )
    return int(size[0]), int(size[1])


def _check_batch_size(batch_size):
    if not (is_int(batch_size) and batch_size > 0):
        raise ValueError(
            f"`batch_size` must be a positive int, e.g. 32. Received: batch_size={batch_size!r}"
        )
    return int(batch_size)


def _check_color_mode(color_mode):
    if color_mode not in COLOR_MODES:
        raise ValueError(
            f"`color_mode` must be one of {COLOR_MODES}. Received: color_mode={color_mode!r}"
        )
    return color_mode


def _check_validation_split(validation_split):
    if isinstance(validation_split, bool) or not isinstance(validation_split, int | float):
        raise TypeError(
            "`validation_split` must be a float in [0, 1), e.g. 0.2. Received: "
            f"validation_split={validation_split!r} of type {type(validation_split).__name__}"
        )
    if not 0 <= validation_split < 1:
        raise ValueError(
            "`validation_split` must be in [0, 1): the share of each class held out "
            f"for validation, e.g. 0.2. Received: validation_split={validation_split!r}"
        )


def _check_lengths(paths, labels):
    if len(paths) != len(labels):
        raise ValueError(
            "`paths` and `labels` must have one entry per image. Received: "
            f"{len(paths)} paths and {len(labels)} labels"
        )
    if not paths:
        raise ValueError("An ImageFolder needs at least one image. Received: paths=[]")


def _check_indices(indices, num_samples):
    rows = np.asarray(indices)
    if rows.dtype == bool:
        if rows.shape != (num_samples,):
            raise ValueError(
                f"A boolean mask must have one entry per sample ({num_samples}). "
                f"Received: mask of shape {rows.shape}"
            )
        rows = np.flatnonzero(rows)
    rows = rows.reshape(-1)
    if rows.size and not np.issubdtype(rows.dtype, np.integer):
        raise TypeError(
            f"`indices` must be integers or a boolean mask. Received: dtype {rows.dtype}"
        )
    bad = rows[(rows < -num_samples) | (rows >= num_samples)]
    if bad.size:
        raise ValueError(
            f"`indices` must be in [0, {num_samples}). Received: indices containing "
            f"{sorted(set(bad.tolist()))[:10]}"
        )
    return rows.astype("int64")


def is_int(value):
    """Whether `value` is an int (a NumPy integer too), and not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)

"""Where decoded images are kept: in memory, or on disk for image folders larger than memory.

Both are an `ImageStore`: one uint8 array of every image of a folder (row `i` is
the folder's `i`-th file, already resized) and a flag per row saying whether it
holds the image yet. A batch is then one indexing of that array, whatever its
size. On disk the array is a memory-mapped file (a "pack") that the operating
system pages in and out, so a set larger than memory streams from disk at the
disk's speed and no JPEG is decoded after its first reading.
"""

import contextlib
import errno
import hashlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np

CACHE_ENV = "CONDNET_CACHE_DIR"
_MAGIC = b"condnet-pack-1\n"
_PAGE = 4096


def default_cache_dir():
    """`$CONDNET_CACHE_DIR`, else `$XDG_CACHE_HOME/condnet/decoded`, else `~/.cache/...`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "condnet" / "decoded"


class ImageStore:
    """Decoded images of one folder's files, by row: `images[row]` is valid where
    `done[row]` is 1. Rows are written image first, flag second, so a reader (another
    process sharing a pack included) never takes half an image."""

    def __init__(self, images, done):
        self.images, self.done = images, done

    @classmethod
    def in_memory(cls, count, shape):
        return cls(np.zeros((count, *shape), "uint8"), np.zeros(count, "uint8"))

    def found(self, rows):
        """A boolean mask: which of `rows` hold their image."""
        return self.done[rows].astype(bool)

    def write(self, rows, images):
        """Store `images` in `rows` (an index array, or one row and its image)."""
        self.images[rows] = images
        self.done[rows] = 1


class DiskCache:
    """Packs of decoded images (uint8, already resized) in memory-mapped files outside
    the data.

    A pack holds the images of one list of files, in order, named by a digest of
    their absolute paths, the image size and the colour mode, so two data sets
    never share one. It keeps each file's size and modification time beside its
    image: a file changed or replaced since is decoded again by the next run that
    opens the pack (a list with files added or removed is another pack). The file is given
    its full size on disk before anything is written (so a full disk is found at
    once, not in the middle of an epoch), then filled as images are decoded: a run
    cut short leaves the rows it decoded for the next one. Runs sharing a pack write
    the same pixels to the same rows and never wait for each other. When the cache
    cannot be written (a full disk, no permission) the folder decodes every time,
    after one warning.

    Args:
        folder: str or `Path`. The cache directory. Defaults to
            `default_cache_dir()`.
        image_size: `(height, width)` of the decoded images.
        color_mode: `"rgb"` or `"grayscale"`.
    """

    def __init__(self, folder, image_size, color_mode):
        height, width = image_size
        root = Path(folder) if folder is not None else default_cache_dir()
        self.folder = root / f"{height}x{width}-{color_mode}"
        self.shape = (height, width, 3 if color_mode == "rgb" else 1)
        self.failed = None  # the OSError that turned the cache off
        self._lock = threading.Lock()

    def open(self, paths):
        """The `ImageStore` of `paths` (in that order) on disk, or None after one warning
        when the cache cannot be written."""
        count, size = len(paths), int(np.prod(self.shape))
        pack = self.folder / f"{_digest(paths, self.shape)}.pack"
        done_offset = len(_MAGIC) + 16 * count
        data_offset = _round_up(done_offset + count, _PAGE)
        total = data_offset + count * size
        try:
            if not (pack.exists() and pack.stat().st_size == total and _has_magic(pack)):
                _create(pack, total)
            keys = np.memmap(pack, "int64", "r+", offset=len(_MAGIC), shape=(count, 2))
            done = np.memmap(pack, "uint8", "r+", offset=done_offset, shape=(count,))
            images = np.memmap(pack, "uint8", "r+", offset=data_offset, shape=(count, *self.shape))
        except OSError as error:
            self._turn_off(error)
            return None
        _forget_changed(paths, keys, done)
        return ImageStore(images, done)

    def _turn_off(self, error):
        with self._lock:
            if self.failed is not None:
                return
            self.failed = error
        warnings.warn(
            f"The decoded-image cache in {str(self.folder)!r} cannot be written "
            f"({error.strerror or error}); images are decoded again every epoch instead. "
            f"Free space there, or choose another folder with --cache-dir (or {CACHE_ENV}).",
            stacklevel=4,
        )


def _digest(paths, shape):
    digest = hashlib.sha1(repr(shape).encode())
    for path in paths:
        digest.update(f"{os.path.abspath(path)}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _forget_changed(paths, keys, done):
    """Empty the rows whose file's size or modification time is not the one their image
    was decoded from, and note the files' current ones."""
    current = np.array([_file_key(path) for path in paths], "int64").reshape(-1, 2)
    changed = (keys != current).any(axis=1)
    if changed.any():
        done[changed] = 0  # the flag first: a reader never takes the old image as new
        keys[changed] = current[changed]


def _file_key(path):
    try:
        status = os.stat(path)
    except OSError:
        return (-1, -1)
    return (status.st_size, status.st_mtime_ns)


def _create(pack, total):
    """A pack file of `total` bytes (all rows empty), its disk space reserved, put in
    place atomically: a pack another process made meanwhile is kept, not replaced."""
    pack.parent.mkdir(parents=True, exist_ok=True)
    temporary = pack.with_name(f".{pack.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(_MAGIC)
            _reserve(handle, total)
        if pack.exists():  # a broken or outdated pack of the same name
            os.replace(temporary, pack)
        else:
            with contextlib.suppress(FileExistsError):  # another run made it first
                os.link(temporary, pack)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


def _reserve(handle, total):
    """Give the file `total` bytes that really take disk space (a sparse file would fail
    later, in the middle of training, when the disk fills)."""
    handle.flush()
    try:
        os.posix_fallocate(handle.fileno(), 0, total)
        return
    except AttributeError:  # no posix_fallocate (macOS)
        pass
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    handle.seek(0, os.SEEK_END)
    zeros = bytes(2**20)
    while handle.tell() < total:
        handle.write(zeros[: total - handle.tell()])


def _has_magic(pack):
    with open(pack, "rb") as handle:
        return handle.read(len(_MAGIC)) == _MAGIC


def _round_up(value, step):
    return -(-value // step) * step

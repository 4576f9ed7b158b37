"""A cache of decoded images on disk, for image folders larger than memory."""

import contextlib
import hashlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np

CACHE_ENV = "CONDNET_CACHE_DIR"


def default_cache_dir():
    """`$CONDNET_CACHE_DIR`, else `$XDG_CACHE_HOME/condnet/decoded`, else `~/.cache/...`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "condnet" / "decoded"


class DiskCache:
    """Decoded images (uint8, already resized) kept as `.npy` files outside the data.

    Each entry is keyed by the file's absolute path, size and modification
    time, and by the image size and colour mode, so a changed or replaced
    file is decoded again and two data sets never share an entry. Entries are
    written to a temporary file and renamed into place: processes sharing the
    cache never read half an entry and never wait for each other. When the
    cache cannot be written (a full disk, no permission) the folder decodes
    every time, after one warning.

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
        self.failed = None  # the OSError that turned writing off
        self._warned = threading.Lock()

    def read(self, path):
        """The cached image of `path`, or None (not cached, changed, or unreadable)."""
        entry = self._entry(path)
        if entry is None:
            return None
        try:
            image = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if image.shape != self.shape or image.dtype != np.uint8:
            return None
        return image

    def write(self, path, image):
        """Store the decoded `image` of `path`; never raises."""
        entry = self._entry(path)
        if entry is None or self.failed is not None:
            return
        temporary = entry.with_name(f".{entry.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as handle:
                np.save(handle, np.ascontiguousarray(image, dtype=np.uint8))
            os.replace(temporary, entry)
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink()
            self._turn_off(error)

    def _entry(self, path):
        try:
            status = os.stat(path)
        except OSError:
            return None
        key = f"{os.path.abspath(path)}\0{status.st_size}\0{status.st_mtime_ns}"
        digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npy"

    def _turn_off(self, error):
        with self._warned:
            if self.failed is not None:
                return
            self.failed = error
        warnings.warn(
            f"The decoded-image cache in {str(self.folder)!r} cannot be written "
            f"({error.strerror or error}); images are decoded again every epoch instead. "
            f"Free space there, or choose another folder with --cache-dir (or {CACHE_ENV}).",
            stacklevel=3,
        )

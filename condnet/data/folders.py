"""The names the image data modules had when they were one file, kept importable.

New code imports from the module of each concept: `scan` (the files of a data
folder), `decode` (one image as pixels), `image_folder` (`ImageFolder`) and
`splits` (training and validation rows and folders).
"""

from condnet.data.checks import check_image_size, is_int
from condnet.data.decode import (
    MAX_IMAGE_PIXELS,
    ImageDecodeError,
    decode_files,
    decode_image,
    decode_image_bytes,
)
from condnet.data.image_folder import CACHE_BYTES, DECODERS, READ_AHEAD, ImageFolder, batch_order
from condnet.data.scan import (
    IMAGE_EXTENSIONS,
    IMAGES,
    SKIP_REASONS,
    FileKind,
    scan_directory,
    scan_folder,
)
from condnet.data.splits import load_folders, split_indices

__all__ = [
    "CACHE_BYTES",
    "DECODERS",
    "IMAGES",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "READ_AHEAD",
    "SKIP_REASONS",
    "FileKind",
    "ImageDecodeError",
    "ImageFolder",
    "batch_order",
    "check_image_size",
    "decode_files",
    "decode_image",
    "decode_image_bytes",
    "is_int",
    "load_folders",
    "scan_directory",
    "scan_folder",
    "split_indices",
]

"""Decoding: an image file (or an upload) as uint8 pixels, as a photo viewer shows it."""

import errno
import io
import os
import re
import stat

import numpy as np
from PIL import Image, ImageOps

from condnet.data.checks import _check_color_mode, check_image_size

try:  # libjpeg-turbo without Pillow's Python-level parsing: 2-4x faster on JPEGs
    import simplejpeg
except ImportError:  # Pillow decodes every JPEG then, to the same pixels
    simplejpeg = None

MAX_IMAGE_PIXELS = 64 * 2**20


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
            character device)"`. It starts with one of the scan's `SKIP_REASONS`
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


def _decode(path, image_size, color_mode, out=None):
    size, problem = _regular_file(path)
    if problem:
        raise ImageDecodeError(path, problem)
    pixels = _jpeg_pixels(_jpeg_bytes(path, size), image_size, color_mode, MAX_IMAGE_PIXELS, out)
    if pixels is not None:
        return pixels
    with _opened(lambda: Image.open(path), path) as image:
        return _pixels(image, path, image_size, color_mode)


def _jpeg_bytes(path, size):
    """The bytes of a JPEG file of `size` bytes (as `os.stat` gave it), or None for any
    other file (or one that cannot be read: Pillow then says why). One `open` and one
    `read` of the whole file, without Python's file object: a decoding thread holds the
    GIL for as little as it can, so that the others decode meanwhile."""
    if simplejpeg is None:
        return None
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(descriptor, size + 1)  # + 1: tells a file that grew since
        if not data.startswith(_JPEG_START):
            return None
        if len(data) == size:
            return data  # the whole file: the usual case
        # A short read, or a file that changed: read on to its end.
        return b"".join([data, *iter(lambda: os.read(descriptor, 1 << 20), b"")])
    except OSError:
        return None
    finally:
        os.close(descriptor)


def _jpeg_pixels(data, image_size, color_mode, max_pixels, out=None):
    """The pixels `_pixels` gives for JPEG `data`, decoded by libjpeg-turbo (simplejpeg) at
    the scale Pillow's `draft` picks, turned by the EXIF orientation and resized as there:
    the same array, faster. None for whatever this path does not handle exactly as Pillow
    (not a JPEG, CMYK, an XMP orientation, a corrupt or too large file...): Pillow decodes
    those, and names what is wrong with a bad file. `out`, a C-contiguous uint8 array of
    the image's shape, receives the pixels when they need no turn nor resize (no copy);
    it may be written to even when None is returned."""
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
        direct = out is not None and orientation not in _TRANSPOSES and shape == tuple(image_size)
        array = simplejpeg.decode_jpeg(
            data, space, min_height=shape[0], min_width=shape[1], buffer=out if direct else None
        )
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
    _, problem = _regular_file(path)
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


def _regular_file(path):
    """`(size in bytes, None)` for a regular file, `(None, why not)` for anything else."""
    try:
        status = os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return None, "symlink loop"
        if os.path.islink(path):
            return None, "dangling symlink"
        return None, f"unreadable ({error.strerror or error})"
    if stat.S_ISREG(status.st_mode):
        return status.st_size, None
    kind = next((name for test, name in _FILE_KINDS if test(status.st_mode)), "a special file")
    return None, f"not a regular file ({kind})"


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


def decode_files(paths, image_size, color_mode):
    """What a decoding worker returns for some files: `(images, reasons)`, one uint8
    array (zeros where a file fails) and None or why each file failed."""
    channels = 3 if color_mode == "rgb" else 1
    images = np.zeros((len(paths), *image_size, channels), "uint8")
    reasons = [None] * len(paths)
    for i, path in enumerate(paths):
        try:
            pixels = _decode(path, image_size, color_mode, out=images[i])
            if not np.may_share_memory(pixels, images):  # not decoded in place
                images[i] = pixels
        except ImageDecodeError as error:
            images[i] = 0  # a decode into it may have begun
            reasons[i] = error.reason
    return images, reasons

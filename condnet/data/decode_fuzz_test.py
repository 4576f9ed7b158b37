"""Fuzzing the image path: bytes that are not quite images never escape as foreign errors.

Random bytes, prefixes of real files and real files with flipped bytes are
written under every image extension and read by `decode_image`,
`scan_directory` and `ImageFolder`. Each may accept the file or refuse it, but
only in its documented way. `CONDNET_FUZZ_EXAMPLES=5000` explores further
(with a fresh random seed) than the 200 fixed examples CI runs.
"""

import io
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from condnet.data.decode import ImageDecodeError, decode_image
from condnet.data.image_folder import ImageFolder
from condnet.data.scan import IMAGE_EXTENSIONS, SKIP_REASONS, scan_directory
from condnet.testing import fuzz_settings

FUZZ = fuzz_settings()


def _sample(format, mode="RGB", **save):
    pixels = np.random.default_rng(0).integers(0, 256, (12, 9, 3), dtype="uint8")
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=format, **save)
    return buffer.getvalue()


def _exif_jpeg():
    exif = Image.Exif()
    exif[0x0112] = 6
    return _sample("JPEG", exif=exif)


REAL_FILES = [
    _sample("PNG"),
    _sample("PNG", "RGBA"),
    _sample("PNG", "P"),
    _sample("JPEG"),
    _exif_jpeg(),
    _sample("GIF"),
    _sample("BMP"),
    _sample("TIFF"),
    _sample("TIFF", "CMYK", compression="tiff_deflate"),
    _sample("WEBP"),
]


@st.composite
def _damaged(draw, real):
    data = bytearray(real)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


FILE_BYTES = st.one_of(
    st.binary(max_size=2048),
    st.sampled_from(REAL_FILES).flatmap(lambda real: st.binary(max_size=0).map(lambda _: real)),
    st.sampled_from(REAL_FILES).flatmap(
        lambda real: st.integers(0, len(real) - 1).map(lambda n: real[:n])
    ),
    st.sampled_from(REAL_FILES).flatmap(_damaged),
    st.sampled_from(REAL_FILES).flatmap(
        lambda real: st.binary(min_size=1, max_size=64).map(lambda tail: real[:32] + tail)
    ),
)
EXTENSIONS = st.sampled_from(IMAGE_EXTENSIONS)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """root/<group>/<class>/good.png, one class per group, and a place for the fuzzed file."""
    root = tmp_path_factory.mktemp("fuzz")
    for group, name in (("a", "x"), ("b", "y")):
        (root / group / name).mkdir(parents=True)
        Image.new("RGB", (5, 5), (9, 99, 199)).save(root / group / name / "good.png")
    return root


def _write_fuzzed(tree, content, extension):
    folder = tree / "b" / "y"
    for old in folder.glob("fuzzed.*"):
        old.unlink()
    path = folder / f"fuzzed{extension}"
    path.write_bytes(content)
    return path


@FUZZ
@given(content=FILE_BYTES, extension=EXTENSIONS)
def test_fuzz_decode_image_returns_pixels_or_raises_image_decode_error(tree, content, extension):
    path = _write_fuzzed(tree, content, extension)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about some damaged files
        try:
            pixels = decode_image(path, image_size=(6, 7), color_mode="rgb")
        except ImageDecodeError as error:
            assert error.path == str(path) and error.reason
            assert str(path) in str(error)
            return
    assert pixels.shape == (6, 7, 3) and pixels.dtype == np.uint8


@FUZZ
@given(content=FILE_BYTES, extension=EXTENSIONS)
def test_fuzz_scan_and_image_folder_skip_or_mark_bad_files(tree, content, extension):
    path = _write_fuzzed(tree, content, extension)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        hierarchy, paths, labels = scan_directory(tree)
    if str(path) not in paths:  # skipped: named in the scan's one warning, with a reason
        scan_warnings = [str(w.message) for w in record if "while scanning" in str(w.message)]
        assert len(scan_warnings) == 1 and str(path) in scan_warnings[0]
        assert any(f"{str(path)!r} ({reason})" in scan_warnings[0] for reason in SKIP_REASONS)
        return
    for color_mode, channels in (("rgb", 3), ("grayscale", 1)):
        strict = ImageFolder(
            paths, labels, hierarchy, image_size=4, color_mode=color_mode, cache=False
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            images, batch_labels, errors = strict.read_batch(0)
            substituted, substituted_labels = strict[0]
        assert images.shape == substituted.shape == (3, 4, 4, channels)
        row = paths.index(str(path))
        assert errors[:row] + errors[row + 1 :] == [None, None]
        if errors[row] is None:
            assert 0 <= images[row].min() and images[row].max() <= 255
            np.testing.assert_array_equal(substituted_labels, labels)
        else:
            assert isinstance(errors[row], str) and images[row].max() == 0
            assert strict.substitutions == {str(path): 1}

import os
import threading

import numpy as np
import pytest
from PIL import Image, ImageOps

from condnet.data import decode
from condnet.data.decode import ImageDecodeError, decode_image
from condnet.testing import png_header, truncated_jpeg, write_image


def _decoded_like(reference, image_size=None):
    """Pillow's own image as the uint8 array decode_image should give."""
    return np.asarray(reference, dtype="uint8").reshape(reference.height, reference.width, -1)


def test_decode_image_applies_exif_orientation(tmp_path):
    pixels = np.zeros((4, 8, 3), "uint8")
    pixels[:, :4] = (250, 0, 0)  # left half red, right half blue
    pixels[:, 4:] = (0, 0, 250)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "photo.png", exif=exif)
    decoded = decode_image(tmp_path / "photo.png", image_size=(8, 4))
    with Image.open(tmp_path / "photo.png") as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    assert upright.size == (4, 8)
    np.testing.assert_array_equal(decoded, _decoded_like(upright))
    np.testing.assert_array_equal(decoded[0, 0], (250, 0, 0))  # red on top
    np.testing.assert_array_equal(decoded[-1, -1], (0, 0, 250))  # blue at the bottom


def _pillow_pixels(path, image_size, color_mode):
    """What `decode_image` gives when Pillow decodes the file (no libjpeg-turbo path)."""
    with decode._opened(lambda: Image.open(path), path) as image:
        return decode._pixels(image, str(path), image_size, color_mode)


def _jpeg(path, pixels, orientation=None, mode="RGB"):
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(pixels).convert(mode).save(path, "JPEG", quality=90, exif=exif.tobytes())
    return path


@pytest.mark.skipif(decode.simplejpeg is None, reason="simplejpeg is not installed")
@pytest.mark.parametrize("orientation", [None, 1, 2, 3, 4, 5, 6, 7, 8])
def test_jpegs_decode_fast_to_exactly_what_pillow_gives(tmp_path, orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (90, 130, 3), dtype="uint8")
    pixels[:30, :40] = (250, 10, 10)  # a mark to see the orientation by
    path = _jpeg(tmp_path / "photo.jpg", pixels, orientation)
    for image_size in [(90, 130), (40, 64), (20, 20), (11, 45), (8, 8), (200, 150)]:
        for color_mode in ("rgb", "grayscale"):
            fast = decode._jpeg_pixels(path.read_bytes(), image_size, color_mode, 10**8)
            assert fast is not None  # the libjpeg-turbo path took it
            np.testing.assert_array_equal(fast, _pillow_pixels(path, image_size, color_mode))
            np.testing.assert_array_equal(decode_image(path, image_size, color_mode), fast)


@pytest.mark.skipif(decode.simplejpeg is None, reason="simplejpeg is not installed")
def test_jpeg_bytes_reads_the_whole_file_whatever_size_stat_gave(tmp_path):
    """One read of the size `stat` gave, and reads to the end when the file is longer
    or shorter by then (it changed between the two calls); another format gives None."""
    path = _jpeg(tmp_path / "photo.jpg", np.full((20, 20, 3), 90, "uint8"))
    data = path.read_bytes()
    for stated in (len(data), 10, len(data) - 1, len(data) + 500):
        assert decode._jpeg_bytes(str(path), stated) == data
    png = tmp_path / "flat.png"
    write_image(png)
    assert decode._jpeg_bytes(str(png), os.path.getsize(png)) is None
    assert decode._jpeg_bytes(str(tmp_path / "gone.jpg"), 100) is None


@pytest.mark.parametrize("color_mode", ["rgb", "grayscale"])
def test_decode_files_decodes_into_its_batch_and_leaves_a_bad_file_s_row_zero(tmp_path, color_mode):
    """JPEGs of the asked size are decoded straight into the batch (no copy); a file that
    fails after a decode into its row began leaves that row all zeros."""
    rng = np.random.default_rng(0)
    good = [
        _jpeg(tmp_path / f"{n}.jpg", rng.integers(0, 256, (64, 64, 3), dtype="uint8"))
        for n in range(3)
    ]
    turned = _jpeg(tmp_path / "turned.jpg", rng.integers(0, 256, (64, 64, 3), "uint8"), 6)
    paths = [good[0], truncated_jpeg(tmp_path / "cut.jpg"), good[1], turned, good[2]]
    images, reasons = decode.decode_files([str(p) for p in paths], (64, 64), color_mode)
    assert [reason is None for reason in reasons] == [True, False, True, True, True]
    assert not images[1].any()
    for row in (0, 2, 3, 4):
        np.testing.assert_array_equal(images[row], decode_image(paths[row], 64, color_mode))


@pytest.mark.skipif(decode.simplejpeg is None, reason="simplejpeg is not installed")
def test_what_the_fast_path_cannot_match_goes_to_pillow(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype="uint8")
    cmyk = _jpeg(tmp_path / "cmyk.jpg", pixels, mode="CMYK")
    gray = _jpeg(tmp_path / "gray.jpg", pixels, mode="L")
    xmp = tmp_path / "xmp.jpg"
    Image.fromarray(pixels).save(xmp, "JPEG", xmp=b'<x tiff:Orientation="6"/>')
    truncated = truncated_jpeg(tmp_path / "broken.jpg")
    for path in (cmyk, xmp, truncated):
        assert decode._jpeg_pixels(path.read_bytes(), (20, 30), "rgb", 10**8) is None
    for path in (cmyk, gray, xmp):
        np.testing.assert_array_equal(
            decode_image(path, (20, 30)), _pillow_pixels(path, (20, 30), "rgb")
        )
    assert decode_image(xmp, (20, 30)).shape == (20, 30, 3)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(truncated, (20, 30))
    assert decode._jpeg_pixels(gray.read_bytes(), (20, 30), "rgb", 10**8) is not None
    large = decode._jpeg_pixels(gray.read_bytes(), (20, 30), "rgb", max_pixels=100)
    assert large is None  # over the pixel guard: Pillow refuses it with the reason


def _gradient16():
    return np.linspace(0, 65535, 32).round().astype("uint16")[None].repeat(2, axis=0)


def test_decode_image_scales_16_bit_images_to_8_bits(tmp_path):
    values = _gradient16()
    Image.fromarray(values).save(tmp_path / "depth.png")  # mode "I;16"
    Image.fromarray(values.astype("int32")).save(tmp_path / "depth.tif")  # mode "I"
    expected = np.round(values / 257).astype("uint8")
    for name in ("depth.png", "depth.tif"):
        grey = decode_image(tmp_path / name, image_size=(2, 32), color_mode="grayscale")
        np.testing.assert_array_equal(grey[..., 0], expected)  # not all white
        rgb = decode_image(tmp_path / name, image_size=(2, 32))
        np.testing.assert_array_equal(rgb, np.repeat(expected[..., None], 3, axis=-1))
    assert expected.min() == 0 and expected.max() == 255 and len(np.unique(expected)) == 32


def _transparent(mode):
    rgba = np.zeros((4, 4, 4), "uint8")
    rgba[..., :3] = (10, 120, 30)
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    rgba[2:, :2, 3] = 100
    image = Image.fromarray(rgba)
    return image.convert(mode) if mode != "RGBA" else image


def _palette_with_transparency():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([10, 120, 30, 0, 0, 0] + [0] * 762)
    image.paste(1, (0, 2, 4, 4))  # the bottom half in colour 1, black but transparent
    image.info["transparency"] = 1
    return image


def _on_white(image):
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)


@pytest.mark.parametrize("color_mode", ["rgb", "grayscale"])
@pytest.mark.parametrize(
    "name, make, expected",
    [
        ("rgba.png", lambda: _transparent("RGBA"), _on_white),
        ("la.png", lambda: _transparent("LA"), _on_white),
        ("p.png", lambda: _transparent("RGBA").quantize(4), _on_white),
        ("p.gif", lambda: _palette_with_transparency(), _on_white),
        ("cmyk.tif", lambda: _transparent("RGBA").convert("RGB").convert("CMYK"), None),
        ("bits.png", lambda: _transparent("RGBA").convert("1"), None),
        ("float.tif", lambda: _transparent("RGBA").convert("F"), None),
    ],
)
def test_decode_image_converts_modes_as_pillow_shows_them(
    tmp_path, name, make, expected, color_mode
):
    make().save(tmp_path / name)
    with Image.open(tmp_path / name) as image:
        reference = (expected or (lambda x: x))(image).convert(
            "RGB" if color_mode == "rgb" else "L"
        )
    decoded = decode_image(tmp_path / name, image_size=4, color_mode=color_mode)
    np.testing.assert_allclose(decoded, _decoded_like(reference), atol=1)
    if expected is _on_white:
        assert decoded[3, 3].min() >= 250  # transparent pixels show the white background


def _unblock(fifo):
    """Writes to a FIFO once, so that a reader that opens it cannot hang the test."""
    threading.Thread(target=lambda: open(fifo, "wb").close(), daemon=True).start()


def test_decode_image_refuses_devices_and_fifos(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"not a regular file \(a character device\)"):
        decode_image("/dev/zero")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    _unblock(fifo)
    with pytest.raises(ImageDecodeError, match=r"pipe.png': not a regular file \(a FIFO\)"):
        decode_image(fifo)
    with pytest.raises(ImageDecodeError, match=r"not a regular file \(a folder\)"):
        decode_image(tmp_path)
    with pytest.raises(ImageDecodeError, match="missing.png': unreadable .No such file"):
        decode_image(tmp_path / "missing.png")


def test_decode_image_refuses_too_many_pixels_before_decoding(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(png_header(9_000, 9_000))  # 81 million pixels
    with pytest.raises(ImageDecodeError, match=r"too many pixels \(9000 x 9000 = 81,000,000"):
        decode_image(tmp_path / "bomb.png")
    (tmp_path / "huge.png").write_bytes(png_header(100_000, 100_000))  # Pillow's own limit
    with pytest.raises(ImageDecodeError, match="huge.png': too many pixels"):
        decode_image(tmp_path / "huge.png")
    write_image(tmp_path / "small.png", size=(20, 20))
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 399)
    with pytest.raises(ImageDecodeError, match="20 x 20 = 400; at most MAX_IMAGE_PIXELS=399"):
        decode_image(tmp_path / "small.png")

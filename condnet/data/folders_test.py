import json
import math
import os
import struct
import threading
import warnings
import zlib

import keras
import numpy as np
import pytest
from PIL import Image, ImageOps

from condnet.data import folders
from condnet.data.folders import (
    ImageDecodeError,
    ImageFolder,
    decode_image,
    load_folders,
    scan_directory,
    split_indices,
)
from condnet.hierarchy import Hierarchy

TREE = {"round": ["circle", "ring"], "angular": ["square"]}


def _write_image(path, color=(200, 30, 30), size=(10, 12), format=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=format)


def _color(index):
    return (40 * index % 256, 255 - 30 * index % 256, 90)


def _make_nested(root, tree=TREE, per_class=3, size=(10, 12)):
    """Writes root/<group>/<class>/<n>.png, one colour per class."""
    index = 0
    for group, classes in tree.items():
        for name in classes:
            for n in range(per_class):
                _write_image(root / group / name / f"{n}.png", _color(index), size)
            index += 1
    return root


def _make_flat(root, classes=("circle", "ring", "square"), per_class=3):
    for index, name in enumerate(classes):
        for n in range(per_class):
            _write_image(root / name / f"{n}.png", _color(index))
    return root


# === scan_directory ===


def test_scan_directory_reads_nested_layout_sorted(tmp_path):
    _make_nested(tmp_path)
    hierarchy, paths, labels = scan_directory(tmp_path)
    assert hierarchy == Hierarchy({"angular": ["square"], "round": ["circle", "ring"]})
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert paths[0] == str(tmp_path / "angular" / "square" / "0.png")
    assert paths[-1] == str(tmp_path / "round" / "ring" / "2.png")


def test_scan_directory_reads_subgroups_into_nested_hierarchy(tmp_path):
    for parts in [
        ("animals", "pets", "cat"),
        ("animals", "pets", "dog"),
        ("animals", "wild", "wolf"),
        ("plants", "tree"),
    ]:
        _write_image(tmp_path.joinpath(*parts, "0.png"))
    hierarchy, paths, labels = scan_directory(tmp_path)
    expected = {"animals": {"pets": ["cat", "dog"], "wild": ["wolf"]}, "plants": ["tree"]}
    assert hierarchy == Hierarchy(expected)
    assert hierarchy.depth == 3
    assert paths[2] == str(tmp_path / "animals" / "wild" / "wolf" / "0.png")
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])


@pytest.mark.parametrize("source", ["object", "dict", "json", "yaml"])
def test_scan_directory_reads_flat_layout_with_hierarchy(tmp_path, source):
    root = _make_flat(tmp_path / "images")
    hierarchy = {"round": ["ring", "circle"], "angular": ["square"]}
    if source == "object":
        hierarchy = Hierarchy(hierarchy)
    elif source == "json":
        (tmp_path / "h.json").write_text(json.dumps(hierarchy))
        hierarchy = tmp_path / "h.json"
    elif source == "yaml":
        (tmp_path / "h.yaml").write_text("round: [ring, circle]\nangular: [square]\n")
        hierarchy = str(tmp_path / "h.yaml")
    found, paths, labels = scan_directory(root, hierarchy)
    assert found.classes == ["ring", "circle", "square"]
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert paths[0] == str(root / "ring" / "0.png")


def test_scan_directory_reads_every_image_format(tmp_path):
    folder = tmp_path / "a" / "x"
    _write_image(folder / "1.png")
    _write_image(folder / "2.JPG", format="JPEG")
    _write_image(folder / "3.jpeg")
    _write_image(folder / "4.bmp")
    _write_image(folder / "5.webp")
    frames = [Image.new("RGB", (8, 8), c) for c in [(250, 0, 0), (0, 0, 250)]]
    frames[0].save(folder / "6.gif", save_all=True, append_images=frames[1:])
    _write_image(tmp_path / "b" / "y" / "1.png")
    _, paths, _ = scan_directory(tmp_path)
    names = [p.rsplit("/", 1)[-1] for p in paths]
    assert names == ["1.png", "2.JPG", "3.jpeg", "4.bmp", "5.webp", "6.gif", "1.png"]
    images, _ = ImageFolder(paths, [0] * 7, {"a": ["x"], "b": ["y"]}, image_size=8).numpy()
    assert images[5, 0, 0, 0] > 200 and images[5, 0, 0, 2] < 50  # first gif frame


def test_scan_directory_ignores_hidden_and_other_files(tmp_path):
    _make_nested(tmp_path, per_class=1)
    _write_image(tmp_path / "round" / "ring" / ".hidden.png")
    _write_image(tmp_path / "round" / ".ipynb_checkpoints" / "x" / "0.png")
    _write_image(tmp_path / ".cache" / "c" / "0.png")
    (tmp_path / "round" / "ring" / "notes.txt").write_text("not an image")
    (tmp_path / "round" / "ring" / ".DS_Store").write_bytes(b"\x00\x01")
    (tmp_path / "README.md").write_text("about the data")
    with pytest.warns(UserWarning, match="Skipped 1 file") as record:
        hierarchy, paths, _ = scan_directory(tmp_path)
    assert hierarchy.classes == ["square", "circle", "ring"]
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["0.png"] * 3
    message = str(record[0].message)
    assert "1 unsupported extension" in message and "notes.txt" in message
    assert "hidden" not in message and "README" not in message and "DS_Store" not in message


def test_scan_directory_skips_corrupt_files_with_one_warning(tmp_path):
    _make_nested(tmp_path, per_class=2)
    ring = tmp_path / "round" / "ring"
    (ring / "broken.png").write_bytes(b"not a png at all")
    good = (ring / "0.png").read_bytes()
    (ring / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning) as record:
        _, paths, labels = scan_directory(tmp_path)
    assert len(record) == 1
    message = str(record[0].message)
    assert f"Skipped 2 file(s) while scanning {str(tmp_path)!r}: 2 unreadable." in message
    assert str(ring / "broken.png") in message and str(ring / "cut.png") in message
    assert len(paths) == len(labels) == 6
    assert not any("broken" in p or "cut" in p for p in paths)


def _truncated_jpeg(path):
    """A JPEG cut short: it passes the scan's verify() but fails to decode."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype="uint8")
    Image.fromarray(noise).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:1500])
    return path


def test_image_folder_substitutes_for_training_with_one_warning(tmp_path):
    _make_nested(tmp_path, per_class=2)
    truncated = _truncated_jpeg(tmp_path / "round" / "ring" / "1.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # passes the scan
        hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(paths, labels, hierarchy, image_size=8, batch_size=7)
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.fit(data, epochs=3, verbose=0)
    messages = [str(w.message) for w in record if "fails to decode" in str(w.message)]
    assert len(messages) == 1  # the first epoch; later ones substitute the same file
    assert "1 row(s) of this epoch" in messages[0] and "1.jpg" in messages[0]
    assert "truncated" in messages[0]
    assert list(data.substitutions) == [str(truncated)]
    assert data.substitutions[str(truncated)] >= 3  # once per epoch (and Keras' first peek)
    images, batch_labels = data[0]
    row = paths.index(str(truncated))
    assert batch_labels[row] == labels[row + 1]  # the next sample's label, by design
    np.testing.assert_array_equal(images[row], images[row + 1])
    with pytest.warns(UserWarning, match="numpy.. left out 1 image.*1.jpg"):
        assert len(data.numpy()[0]) == len(paths) - 1


def test_image_folder_without_substitution_marks_failed_rows(tmp_path):
    _make_nested(tmp_path, per_class=2)
    truncated = _truncated_jpeg(tmp_path / "round" / "ring" / "1.jpg")
    hierarchy, paths, labels = scan_directory(tmp_path)
    row = paths.index(str(truncated))
    data = ImageFolder(
        paths, labels, hierarchy, image_size=8, batch_size=7, substitute_unreadable=False
    )
    images, batch_labels, valid = data[0]
    assert images.shape == (7, 8, 8, 3) and valid.dtype == np.float32
    np.testing.assert_array_equal(valid, [1, 1, 1, 1, 1, 0, 1])
    assert row == 5 and batch_labels[row] == labels[row]  # its own label
    assert images[row].max() == 0  # no neighbour's pixels
    np.testing.assert_allclose(images[row + 1, 0, 0], _color(1))  # ring/1.png
    _, _, errors = data.read_batch(0)
    assert errors[:row] == [None] * row and errors[row + 1 :] == [None]
    assert errors[row].startswith("unreadable (OSError: image file is truncated")
    assert data.unreadable == {str(truncated): errors[row]}
    assert data.substitutions == {}
    always_ring = keras.layers.Dense(
        3, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant([0, 0, 1])
    )
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), always_ring])
    model.compile(loss="sparse_categorical_crossentropy", weighted_metrics=["accuracy"])
    accuracy = model.evaluate(data, verbose=0, return_dict=True)["accuracy"]
    assert accuracy == pytest.approx(2 / 6)  # `valid` is read as sample weights, not 3 / 7


def test_image_folder_read_batch_ignores_substitution_and_follows_the_shuffle(tmp_path):
    _make_nested(tmp_path, per_class=2)
    truncated = _truncated_jpeg(tmp_path / "round" / "ring" / "1.jpg")
    hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(paths, labels, hierarchy, image_size=4, batch_size=4, shuffle=True, seed=2)
    seen = {}
    for index in range(len(data)):
        images, batch_labels, errors = data.read_batch(index)
        for row, label, error in zip(data.batch_rows(index), batch_labels, errors):
            assert label == labels[row]
            seen[paths[row]] = error
    assert sorted(seen) == sorted(paths)
    assert [path for path, error in seen.items() if error] == [str(truncated)]
    assert data.substitutions == {}
    with pytest.raises(IndexError, match="has 2 batches. Received: index=2"):
        data.batch_rows(2)


# === Decoding ===


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
    with folders._opened(lambda: Image.open(path), path) as image:
        return folders._pixels(image, str(path), image_size, color_mode)


def _jpeg(path, pixels, orientation=None, mode="RGB"):
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(pixels).convert(mode).save(path, "JPEG", quality=90, exif=exif.tobytes())
    return path


@pytest.mark.skipif(folders.simplejpeg is None, reason="simplejpeg is not installed")
@pytest.mark.parametrize("orientation", [None, 1, 2, 3, 4, 5, 6, 7, 8])
def test_jpegs_decode_fast_to_exactly_what_pillow_gives(tmp_path, orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (90, 130, 3), dtype="uint8")
    pixels[:30, :40] = (250, 10, 10)  # a mark to see the orientation by
    path = _jpeg(tmp_path / "photo.jpg", pixels, orientation)
    for image_size in [(90, 130), (40, 64), (20, 20), (11, 45), (8, 8), (200, 150)]:
        for color_mode in ("rgb", "grayscale"):
            fast = folders._jpeg_pixels(path.read_bytes(), image_size, color_mode, 10**8)
            assert fast is not None  # the libjpeg-turbo path took it
            np.testing.assert_array_equal(fast, _pillow_pixels(path, image_size, color_mode))
            np.testing.assert_array_equal(decode_image(path, image_size, color_mode), fast)


@pytest.mark.skipif(folders.simplejpeg is None, reason="simplejpeg is not installed")
def test_what_the_fast_path_cannot_match_goes_to_pillow(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype="uint8")
    cmyk = _jpeg(tmp_path / "cmyk.jpg", pixels, mode="CMYK")
    gray = _jpeg(tmp_path / "gray.jpg", pixels, mode="L")
    xmp = tmp_path / "xmp.jpg"
    Image.fromarray(pixels).save(xmp, "JPEG", xmp=b'<x tiff:Orientation="6"/>')
    truncated = _truncated_jpeg(tmp_path / "broken.jpg")
    for path in (cmyk, xmp, truncated):
        assert folders._jpeg_pixels(path.read_bytes(), (20, 30), "rgb", 10**8) is None
    for path in (cmyk, gray, xmp):
        np.testing.assert_array_equal(
            decode_image(path, (20, 30)), _pillow_pixels(path, (20, 30), "rgb")
        )
    assert decode_image(xmp, (20, 30)).shape == (20, 30, 3)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(truncated, (20, 30))
    assert folders._jpeg_pixels(gray.read_bytes(), (20, 30), "rgb", 10**8) is not None
    large = folders._jpeg_pixels(gray.read_bytes(), (20, 30), "rgb", max_pixels=100)
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


def test_scan_directory_reads_tiff(tmp_path):
    _make_nested(tmp_path, per_class=1)
    _write_image(tmp_path / "round" / "ring" / "scan.tif", (7, 8, 9))
    _write_image(tmp_path / "round" / "ring" / "scan2.TIFF", (7, 8, 9), format="TIFF")
    hierarchy, paths, labels = scan_directory(tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in paths[-3:]] == ["0.png", "scan.tif", "scan2.TIFF"]
    images, _ = ImageFolder(paths, labels, hierarchy, image_size=2).numpy()
    np.testing.assert_array_equal(images[-1, 0, 0], (7, 8, 9))


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


def _png_header(width, height):
    """A PNG that declares `width` x `height` pixels and holds none of them."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_decode_image_refuses_too_many_pixels_before_decoding(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(_png_header(9_000, 9_000))  # 81 million pixels
    with pytest.raises(ImageDecodeError, match=r"too many pixels \(9000 x 9000 = 81,000,000"):
        decode_image(tmp_path / "bomb.png")
    (tmp_path / "huge.png").write_bytes(_png_header(100_000, 100_000))  # Pillow's own limit
    with pytest.raises(ImageDecodeError, match="huge.png': too many pixels"):
        decode_image(tmp_path / "huge.png")
    _write_image(tmp_path / "small.png", size=(20, 20))
    monkeypatch.setattr(folders, "MAX_IMAGE_PIXELS", 399)
    with pytest.raises(ImageDecodeError, match="20 x 20 = 400; at most MAX_IMAGE_PIXELS=399"):
        decode_image(tmp_path / "small.png")


def test_scan_directory_counts_skipped_files_by_reason(tmp_path):
    _make_nested(tmp_path / "data", per_class=2)
    data, ring = tmp_path / "data", tmp_path / "data" / "round" / "ring"
    (ring / "broken.png").write_bytes(b"junk")
    (ring / "bomb.png").write_bytes(_png_header(9_000, 9_000))
    (ring / "labels.csv").write_text("x")
    os.mkfifo(ring / "pipe.png")
    (ring / "gone.png").symlink_to(ring / "deleted.png")
    (ring / "self.png").symlink_to(ring / "self.png")
    (ring / "back").symlink_to(data / "round")  # a folder link to an ancestor
    _write_image(tmp_path / "elsewhere.png")
    (ring / "outside.png").symlink_to(tmp_path / "elsewhere.png")
    (ring / "inside.png").symlink_to(ring / "0.png")  # kept: it stays inside the data
    (data / "round" / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.warns(UserWarning) as record:
        hierarchy, paths, labels = scan_directory(data)
    assert len(record) == 1
    message = str(record[0].message)
    assert (
        f"Skipped 9 file(s) while scanning {str(data)!r}: 1 unreadable, 1 too many pixels, "
        "1 not a regular file, 1 unsupported extension, 2 dangling symlink, 2 symlink loop, "
        "1 symlink outside the data folder."
    ) in message
    assert f"{str(ring / 'back')!r} (symlink loop)" in message
    assert hierarchy == Hierarchy({"angular": ["square"], "round": ["circle", "ring"]})
    names = [path.rsplit("/", 1)[-1] for path in paths if "/ring/" in path]
    assert names == ["0.png", "1.png", "inside.png"]


def test_scan_directory_error_names_what_was_skipped_in_an_empty_class(tmp_path):
    _make_nested(tmp_path / "data", per_class=1)
    star = tmp_path / "data" / "angular" / "star"
    star.mkdir()
    _write_image(tmp_path / "outside.png")
    (star / "0.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(ValueError, match=r"star' has no images.*skipped: 1 symlink outside"):
        scan_directory(tmp_path / "data")


def test_scan_directory_error_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*Received: root=.*nowhere"):
        scan_directory(tmp_path / "nowhere")


def test_scan_directory_error_file_instead_of_folder(tmp_path):
    _write_image(tmp_path / "a.png")
    with pytest.raises(ValueError, match="not a file. Received: root=.*a.png"):
        scan_directory(tmp_path / "a.png")


def test_scan_directory_error_empty_folder(tmp_path):
    _write_image(tmp_path / "lonely.png")
    with pytest.raises(ValueError, match="no class or group folders.*1 visible"):
        scan_directory(tmp_path)


def test_scan_directory_error_flat_layout_without_hierarchy(tmp_path):
    _make_flat(tmp_path)
    with pytest.raises(ValueError, match=r"looks like a flat.*--hierarchy FILE.*hierarchy="):
        scan_directory(tmp_path)


def test_scan_directory_error_empty_class_folder(tmp_path):
    _make_nested(tmp_path)
    (tmp_path / "angular" / "star").mkdir()
    (tmp_path / "angular" / "star" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"class folder .*star' has no images.*notes.txt"):
        scan_directory(tmp_path)


def test_scan_directory_error_class_folder_not_in_hierarchy(tmp_path):
    _make_flat(tmp_path, classes=("circle", "ring", "square", "blob"))
    with pytest.raises(ValueError, match=r"not classes of the hierarchy: \['blob'\]"):
        scan_directory(tmp_path, TREE)


def test_scan_directory_error_hierarchy_class_without_folder(tmp_path):
    _make_flat(tmp_path, classes=("circle", "square"))
    with pytest.raises(ValueError, match=r"have no folder.*\['ring'\]"):
        scan_directory(tmp_path, TREE)


def test_scan_directory_error_empty_group_folder(tmp_path):
    _make_nested(tmp_path)
    (tmp_path / "curved").mkdir()
    with pytest.raises(ValueError, match="group folder .*curved' has no class folders"):
        scan_directory(tmp_path)


def test_scan_directory_error_classes_mixed_with_subgroups(tmp_path):
    _make_nested(tmp_path)
    _write_image(tmp_path / "round" / "more" / "oval" / "0.png")
    with pytest.raises(ValueError, match=r"mixes class folders \['circle', 'ring'\]"):
        scan_directory(tmp_path)


def test_scan_directory_error_folders_not_a_valid_hierarchy(tmp_path):
    _make_nested(tmp_path, tree={"a": ["same"], "b": ["same"]})
    with pytest.raises(ValueError, match="do not form a valid hierarchy.*unique"):
        scan_directory(tmp_path)


def test_scan_directory_error_only_unreadable_images(tmp_path):
    _make_nested(tmp_path)
    (tmp_path / "angular" / "star").mkdir()
    (tmp_path / "angular" / "star" / "0.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="None of the 1 images.*star"):
        scan_directory(tmp_path)


def test_scan_directory_error_hierarchy_of_wrong_type(tmp_path):
    _make_flat(tmp_path)
    with pytest.raises(TypeError, match="Received: list"):
        scan_directory(tmp_path, ["circle", "ring"])


# === split_indices ===


def test_split_indices_is_stratified_deterministic_and_disjoint():
    labels = np.repeat([0, 1, 2, 3], [10, 5, 2, 1])
    train, validation = split_indices(labels, 0.2, seed=3)
    again = split_indices(labels, 0.2, seed=3)
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(validation, again[1])
    assert not set(train) & set(validation)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, validation])), np.arange(18))
    np.testing.assert_array_equal(np.bincount(labels[validation], minlength=4), [2, 1, 1, 0])
    other = split_indices(labels, 0.2, seed=4)[1]
    assert not np.array_equal(validation, other)


def test_split_indices_without_validation():
    train, validation = split_indices([0, 0, 1, 1], 0.0, seed=0)
    np.testing.assert_array_equal(train, [0, 1, 2, 3])
    assert validation.size == 0


@pytest.mark.parametrize("split", [1.0, -0.1, 2])
def test_split_indices_error_split_out_of_range(split):
    with pytest.raises(ValueError, match=rf"\[0, 1\).*validation_split={split}"):
        split_indices([0, 1], split, seed=0)


def test_split_indices_error_split_of_wrong_type():
    with pytest.raises(TypeError, match="validation_split='0.2' of type str"):
        split_indices([0, 1], "0.2", seed=0)


# === ImageFolder ===


@pytest.mark.parametrize("color_mode, channels", [("rgb", 3), ("grayscale", 1)])
def test_image_folder_batches_resized_images(tmp_path, color_mode, channels):
    _make_nested(tmp_path)
    _write_image(tmp_path / "round" / "ring" / "big.png", (10, 20, 30), size=(40, 25))
    hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(
        paths, labels, hierarchy, image_size=(6, 5), batch_size=4, color_mode=color_mode
    )
    assert len(data) == 3 and data.num_samples == 10
    images, batch_labels = data[2]
    assert images.shape == (2, 6, 5, channels) and images.dtype == np.float32
    assert batch_labels.dtype == np.int32
    np.testing.assert_array_equal(batch_labels, labels[8:])
    expected = (10, 20, 30) if channels == 3 else (round(0.299 * 10 + 0.587 * 20 + 0.114 * 30),)
    big = paths.index(str(tmp_path / "round" / "ring" / "big.png"))
    np.testing.assert_allclose(images[big - 8, 3, 2], expected, atol=1)
    assert images.max() <= 255 and images.min() >= 0


def test_image_folder_shuffles_every_epoch(tmp_path):
    _make_nested(tmp_path, per_class=4)
    hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(paths, labels, hierarchy, image_size=4, batch_size=12, shuffle=True, seed=0)
    first = data[0][1]
    data.on_epoch_end()
    second = data[0][1]
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(np.sort(first), np.sort(second))
    np.testing.assert_array_equal(np.sort(first), labels)
    fixed = ImageFolder(paths, labels, hierarchy, image_size=4, batch_size=12)
    fixed.on_epoch_end()
    np.testing.assert_array_equal(fixed[0][1], labels)


def test_image_folder_cache_keeps_decoded_images(tmp_path):
    _make_nested(tmp_path, per_class=1)
    hierarchy, paths, labels = scan_directory(tmp_path)
    cached = ImageFolder(paths, labels, hierarchy, image_size=4)
    streamed = ImageFolder(paths, labels, hierarchy, image_size=4, cache=False)
    assert cached.cache == "memory" and streamed.cache == "none"
    before = cached[0][0]
    for path in paths:
        _write_image(tmp_path / path, (0, 0, 0), size=(3, 3))
    np.testing.assert_array_equal(cached[0][0], before)
    assert streamed[0][0].max() == 0


def test_image_folder_subset_and_numpy(tmp_path):
    _make_nested(tmp_path)
    hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(paths, labels, hierarchy, image_size=3, batch_size=2, seed=1)
    rows = np.flatnonzero(hierarchy.group_labels(labels) == hierarchy.group_index("round"))
    subset = data.subset(rows)
    assert subset.paths == [paths[row] for row in rows]
    assert subset.hierarchy == hierarchy and subset.batch_size == 2
    images, subset_labels = subset.numpy()
    assert images.shape == (6, 3, 3, 3)
    np.testing.assert_array_equal(subset_labels, [1, 1, 1, 2, 2, 2])
    np.testing.assert_allclose(images[0, 0, 0], _color(0))  # circle, written first
    masked = data.subset(labels == 0)
    assert masked.num_samples == 3


def test_image_folder_error_lengths_differ(tmp_path):
    with pytest.raises(ValueError, match="one entry per image. Received: 2 paths and 1 labels"):
        ImageFolder(["a.png", "b.png"], [0], TREE)


def test_image_folder_error_label_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ImageFolder(["a.png"], [5], TREE)


def test_image_folder_error_subset_index_out_of_range(tmp_path):
    data = ImageFolder(["a.png", "b.png"], [0, 1], TREE)
    with pytest.raises(ValueError, match=r"\[0, 2\). Received: indices containing \[7\]"):
        data.subset([0, 7])


def test_image_folder_trains_a_model(tmp_path):
    _make_nested(tmp_path, per_class=4)
    train, validation = load_folders(tmp_path, image_size=8, batch_size=4, validation_split=0.25)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(train.hierarchy.num_classes, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(train, validation_data=validation, epochs=1, verbose=0)
    assert math.isfinite(history.history["loss"][0])
    assert math.isfinite(history.history["val_loss"][0])
    assert model.predict(validation, verbose=0).shape == (3, 3)


# === load_folders ===


def test_load_folders_splits_nested_folders(tmp_path):
    _make_nested(tmp_path, per_class=5)
    train, validation = load_folders(tmp_path, image_size=(4, 6), validation_split=0.2)
    assert train.hierarchy == validation.hierarchy
    assert train.hierarchy.groups == ["angular", "round"]
    assert (train.num_samples, validation.num_samples) == (12, 3)
    assert not set(train.paths) & set(validation.paths)
    np.testing.assert_array_equal(validation.labels, [0, 1, 2])
    assert train.shuffle and not validation.shuffle
    assert train[0][0].shape == (12, 4, 6, 3)
    again, _ = load_folders(tmp_path, image_size=4)
    assert again.paths == train.paths


def test_load_folders_without_validation(tmp_path):
    root = _make_flat(tmp_path / "flat")
    train, validation = load_folders(root, TREE, validation_split=0, color_mode="grayscale")
    assert validation is None and train.num_samples == 9
    assert train[0][0].shape[-1] == 1


def test_load_folders_error_no_validation_sample(tmp_path):
    _make_nested(tmp_path, per_class=1)
    with pytest.raises(ValueError, match="holds out no sample.*validation_split=0"):
        load_folders(tmp_path)


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"image_size": 0}, ValueError, "image_size=0"),
        ({"image_size": (32, -1)}, ValueError, r"image_size=\(32, -1\)"),
        ({"image_size": (32, 4096)}, ValueError, r"2048 pixels a side.*image_size=\(32, 4096\)"),
        ({"image_size": "big"}, TypeError, "image_size='big'"),
        ({"color_mode": "rgba"}, ValueError, "color_mode='rgba'"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"validation_split": 1}, ValueError, "validation_split=1"),
    ],
)
def test_load_folders_error_bad_options_before_reading(tmp_path, options, error, match):
    with pytest.raises(error, match=match):
        load_folders(tmp_path / "not-read-yet", **options)


def test_shards_split_every_batch_between_processes_alike(tmp_path):
    _make_nested(tmp_path, per_class=5)
    hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(paths, labels, hierarchy, image_size=8, batch_size=4, shuffle=True, seed=7)
    shards = [data.shard(i, 2) for i in (0, 1)]
    for _ in range(2):  # two epochs
        assert len(shards[0]) == len(shards[1]) == len(data)
        for index in range(len(data)):
            whole = data.batch_rows(index)
            first, second = (shard.batch_rows(index) for shard in shards)
            assert len(first) == len(second) == len(whole) // 2
            np.testing.assert_array_equal(np.concatenate([first, second]), whole[: 2 * len(first)])
            images, batch_labels = shards[1][index]
            assert len(images) == len(second)
            np.testing.assert_array_equal(batch_labels, labels[second])
        for folder in (data, *shards):
            folder.on_epoch_end()  # each reshuffles, and all alike
    assert shards[0].whole is data


def test_a_last_batch_smaller_than_the_process_count_is_dropped(tmp_path):
    _make_nested(tmp_path, per_class=3)  # 9 images: batches of 4, 4 and 1
    hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(paths, labels, hierarchy, image_size=8, batch_size=4)
    assert len(data) == 3 and len(data.shard(0, 2)) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(index=2, count=2), "process index in 0..count-1"),
        (dict(index=0, count=3), "batch size must divide by 3"),
    ],
)
def test_shard_refuses_what_cannot_split_evenly(tmp_path, kwargs, message):
    _make_nested(tmp_path, per_class=2)
    hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(paths, labels, hierarchy, image_size=8, batch_size=4)
    with pytest.raises(ValueError, match=message):
        data.shard(**kwargs)
    shuffled = ImageFolder(paths, labels, hierarchy, image_size=8, batch_size=4, shuffle=True)
    with pytest.raises(ValueError, match="need its seed"):
        shuffled.shard(0, 2)


def _photos(tmp_path, count=24, side=40):
    """Noisy JPEG photos in two groups of two classes (what draft decoding works on)."""
    rng = np.random.default_rng(0)
    for n in range(count):
        group, name = [("round", "circle"), ("round", "ring"), ("angular", "square")][n % 3]
        folder = tmp_path / "data" / group / name
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (side, side + n % 5, 3), dtype="uint8")
        Image.fromarray(pixels).save(folder / f"{n}.jpg", quality=90)
    return scan_directory(tmp_path / "data")


@pytest.mark.parametrize("decoder", ["processes", "threads"])
def test_parallel_decoding_and_read_ahead_give_the_same_batches(tmp_path, decoder):
    hierarchy, paths, labels = _photos(tmp_path)
    paths[5] = str(_truncated_jpeg(tmp_path / "broken.jpg"))
    common = dict(image_size=8, batch_size=5, shuffle=True, seed=3, cache="none")
    serial = ImageFolder(paths, labels, hierarchy, decode_workers=1, **common)
    parallel = ImageFolder(paths, labels, hierarchy, decode_workers=4, decoder=decoder, **common)
    for _ in range(2):  # two epochs: the read-ahead follows the new order
        for index in range(len(serial)):
            for a, b in zip(serial[index], parallel[index]):
                np.testing.assert_array_equal(a, b)
        serial.on_epoch_end()
        parallel.on_epoch_end()
    assert parallel.substitutions == serial.substitutions and serial.substitutions
    assert parallel.read_batch(1)[2] == serial.read_batch(1)[2]


def test_batches_decoded_in_several_calling_threads_at_once_match_and_decode_once(
    tmp_path, monkeypatch
):
    from concurrent.futures import ThreadPoolExecutor

    hierarchy, paths, labels = _photos(tmp_path)
    common = dict(image_size=8, batch_size=5, shuffle=True, seed=3, cache="memory")
    serial = ImageFolder(paths, labels, hierarchy, decode_workers=1, **common)
    here = ImageFolder(paths, labels, hierarchy, decode_workers=4, **common)
    calls = _counting_decodes(monkeypatch)
    with ThreadPoolExecutor(4) as threads:  # as tf.data's parallel map calls it
        batches = list(threads.map(here.decoded_here, range(len(here))))
    assert sorted(calls) == sorted(set(calls)) and len(calls) == len(paths)  # each file once
    assert here._pending == {}  # nothing left claimed, nothing read ahead
    for index, batch in enumerate(batches):
        for a, b in zip(serial[index], batch):
            np.testing.assert_array_equal(a, b)


def _counting_decodes(monkeypatch):
    calls = []
    real = folders._decode

    def counted(path, *args):
        calls.append(path)
        return real(path, *args)

    monkeypatch.setattr(folders, "_decode", counted)
    return calls


def test_the_disk_cache_reads_no_image_file_after_the_first_epoch(tmp_path, monkeypatch):
    hierarchy, paths, labels = _photos(tmp_path, count=12)
    calls = _counting_decodes(monkeypatch)
    options = dict(image_size=8, batch_size=4, cache="disk", cache_dir=tmp_path / "cache")
    options["decoder"] = "threads"  # decodes in this process, where they are counted
    first = ImageFolder(paths, labels, hierarchy, **options).numpy()[0]
    assert len(calls) == 12
    again = ImageFolder(paths, labels, hierarchy, **options)  # another run, same cache
    np.testing.assert_array_equal(again.numpy()[0], first)
    assert len(calls) == 12  # no image file decoded
    Image.new("RGB", (9, 9), (255, 0, 0)).save(paths[0], format="JPEG")  # a changed file
    changed = ImageFolder(paths, labels, hierarchy, **options).numpy()[0]  # the next run
    assert len(calls) == 13 and changed[0, 0, 0, 0] > 200
    np.testing.assert_array_equal(changed[1:], first[1:])
    assert not list((tmp_path / "data").rglob("*.npy"))  # nothing written beside the data


def test_a_run_cut_short_leaves_its_decoded_rows_for_the_next(tmp_path, monkeypatch):
    hierarchy, paths, labels = _photos(tmp_path, count=12)
    calls = _counting_decodes(monkeypatch)
    options = dict(image_size=8, batch_size=4, cache="disk", cache_dir=tmp_path / "cache")
    options["decode_workers"] = 1
    ImageFolder(paths, labels, hierarchy, **options)[0]  # one batch, then the run stops
    assert len(calls) == 4
    again = ImageFolder(paths, labels, hierarchy, **options).numpy()[0]
    assert len(calls) == 12 and sorted(calls) == sorted(paths)  # only the 8 left
    expected = ImageFolder(paths, labels, hierarchy, image_size=8, cache="none").numpy()[0]
    np.testing.assert_array_equal(again, expected)


_FILL_PACK = """
import sys
from condnet.data.folders import ImageFolder
from condnet.hierarchy import Hierarchy
paths, labels, tree, cache = eval(sys.argv[1])
data = ImageFolder(paths, labels, Hierarchy(tree), image_size=8, batch_size=4, cache="disk",
                   cache_dir=cache, decode_workers=1)
for index in range(len(data)):
    data[index]
"""


def test_runs_sharing_a_pack_fill_it_at_once_without_harm(tmp_path, monkeypatch):
    import subprocess
    import sys

    hierarchy, paths, labels = _photos(tmp_path, count=40)
    cache = tmp_path / "cache"
    argument = repr((paths, labels.tolist(), hierarchy.to_dict(), str(cache)))
    runs = [
        subprocess.Popen([sys.executable, "-c", _FILL_PACK, argument], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    assert [run.wait(timeout=120) for run in runs] == [0, 0, 0], runs[0].stderr.read()
    assert len(list(cache.rglob("*.pack"))) == 1 and not list(cache.rglob("*.tmp"))
    calls = _counting_decodes(monkeypatch)
    options = dict(image_size=8, cache="disk", cache_dir=cache, decode_workers=1)
    images = ImageFolder(paths, labels, hierarchy, **options).numpy()[0]
    assert calls == []  # every row was in the pack
    expected = ImageFolder(paths, labels, hierarchy, image_size=8, cache="none").numpy()[0]
    np.testing.assert_array_equal(images, expected)


def test_a_full_disk_turns_the_cache_off_with_one_warning(tmp_path, monkeypatch):
    import errno

    hierarchy, paths, labels = _photos(tmp_path, count=6)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    options = dict(image_size=8, batch_size=3, cache="disk", cache_dir=tmp_path / "cache")
    with pytest.warns(UserWarning, match="No space left on device") as caught:
        images = ImageFolder(paths, labels, hierarchy, **options).numpy()[0]
    assert len([w for w in caught if "cannot be written" in str(w.message)]) == 1
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing left
    expected = ImageFolder(paths, labels, hierarchy, image_size=8, cache="none").numpy()[0]
    np.testing.assert_array_equal(images, expected)


def test_auto_keeps_large_sets_on_disk_and_small_ones_in_memory(tmp_path, monkeypatch):
    hierarchy, paths, labels = _photos(tmp_path, count=6)
    assert ImageFolder(paths, labels, hierarchy, image_size=8).cache == "memory"
    monkeypatch.setattr(folders, "CACHE_BYTES", 100)
    assert ImageFolder(paths, labels, hierarchy, image_size=8).cache == "disk"
    with pytest.raises(ValueError, match="`cache` must be one of"):
        ImageFolder(paths, labels, hierarchy, cache="ram")
    with pytest.raises(ValueError, match="decode_workers"):
        ImageFolder(paths, labels, hierarchy, decode_workers=0)


def test_an_unwritable_disk_cache_warns_once_and_decodes(tmp_path, monkeypatch):
    hierarchy, paths, labels = _photos(tmp_path, count=6)
    (tmp_path / "file").write_text("not a folder")
    options = dict(image_size=8, batch_size=3, cache="disk", cache_dir=tmp_path / "file")
    data = ImageFolder(paths, labels, hierarchy, **options)
    with pytest.warns(UserWarning, match="cannot be written") as caught:
        images, _ = data.numpy()
    assert len([w for w in caught if "cannot be written" in str(w.message)]) == 1
    expected = ImageFolder(paths, labels, hierarchy, image_size=8, cache="none").numpy()[0]
    np.testing.assert_array_equal(images, expected)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="decoding processes are forked")
def test_decoding_processes_exit_when_their_parent_is_killed(tmp_path):
    import subprocess
    import sys

    hierarchy, paths, labels = _photos(tmp_path, count=6)
    script = f"""
import os, signal
from condnet.data.folders import ImageFolder, _process_pool
data = ImageFolder({paths!r}, {labels.tolist()!r}, {hierarchy.to_dict()!r}, image_size=8,
                   batch_size=3, decode_workers=2, decoder="processes", cache="none")
data.numpy()
print(" ".join(str(pid) for pid in _process_pool(2)._processes), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    process = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    workers = [int(pid) for pid in process.stdout.split()]
    assert process.returncode == -9 and len(workers) == 2
    # Each worker checks its parent twice a second; 30 s is only a safety net.
    assert all(_exits(pid, seconds=30) for pid in workers), "workers outlived their parent"


def _exits(pid, seconds):
    """Whether process `pid` ends within `seconds`: waits on its pidfd, which turns
    readable when the process ends (Linux; the test is skipped without one)."""
    import select

    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):  # no pidfd here
        pytest.skip("waiting on a process that is not a child needs Linux's pidfd_open")
    try:
        return bool(select.select([descriptor], [], [], seconds)[0])
    finally:
        os.close(descriptor)

import json
import os

import numpy as np
import pytest
from PIL import Image

from condnet.data.image_folder import ImageFolder
from condnet.data.scan import scan_directory
from condnet.hierarchy import Hierarchy
from condnet.testing import IMAGE_TREE as TREE
from condnet.testing import (
    flat_images,
    nested_images,
    png_header,
    write_image,
)


def test_scan_directory_reads_nested_layout_sorted(tmp_path):
    nested_images(tmp_path)
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
        write_image(tmp_path.joinpath(*parts, "0.png"))
    hierarchy, paths, labels = scan_directory(tmp_path)
    expected = {"animals": {"pets": ["cat", "dog"], "wild": ["wolf"]}, "plants": ["tree"]}
    assert hierarchy == Hierarchy(expected)
    assert hierarchy.depth == 3
    assert paths[2] == str(tmp_path / "animals" / "wild" / "wolf" / "0.png")
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])


@pytest.mark.parametrize("source", ["object", "dict", "json", "yaml"])
def test_scan_directory_reads_flat_layout_with_hierarchy(tmp_path, source):
    root = flat_images(tmp_path / "images")
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
    write_image(folder / "1.png")
    write_image(folder / "2.JPG", format="JPEG")
    write_image(folder / "3.jpeg")
    write_image(folder / "4.bmp")
    write_image(folder / "5.webp")
    frames = [Image.new("RGB", (8, 8), c) for c in [(250, 0, 0), (0, 0, 250)]]
    frames[0].save(folder / "6.gif", save_all=True, append_images=frames[1:])
    write_image(tmp_path / "b" / "y" / "1.png")
    _, paths, _ = scan_directory(tmp_path)
    names = [p.rsplit("/", 1)[-1] for p in paths]
    assert names == ["1.png", "2.JPG", "3.jpeg", "4.bmp", "5.webp", "6.gif", "1.png"]
    images, _ = ImageFolder(paths, [0] * 7, {"a": ["x"], "b": ["y"]}, image_size=8).numpy()
    assert images[5, 0, 0, 0] > 200 and images[5, 0, 0, 2] < 50  # first gif frame


def test_scan_directory_ignores_hidden_and_other_files(tmp_path):
    nested_images(tmp_path, per_class=1)
    write_image(tmp_path / "round" / "ring" / ".hidden.png")
    write_image(tmp_path / "round" / ".ipynb_checkpoints" / "x" / "0.png")
    write_image(tmp_path / ".cache" / "c" / "0.png")
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
    nested_images(tmp_path, per_class=2)
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


def test_scan_directory_reads_tiff(tmp_path):
    nested_images(tmp_path, per_class=1)
    write_image(tmp_path / "round" / "ring" / "scan.tif", (7, 8, 9))
    write_image(tmp_path / "round" / "ring" / "scan2.TIFF", (7, 8, 9), format="TIFF")
    hierarchy, paths, labels = scan_directory(tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in paths[-3:]] == ["0.png", "scan.tif", "scan2.TIFF"]
    images, _ = ImageFolder(paths, labels, hierarchy, image_size=2).numpy()
    np.testing.assert_array_equal(images[-1, 0, 0], (7, 8, 9))


def test_scan_directory_counts_skipped_files_by_reason(tmp_path):
    nested_images(tmp_path / "data", per_class=2)
    data, ring = tmp_path / "data", tmp_path / "data" / "round" / "ring"
    (ring / "broken.png").write_bytes(b"junk")
    (ring / "bomb.png").write_bytes(png_header(9_000, 9_000))
    (ring / "labels.csv").write_text("x")
    os.mkfifo(ring / "pipe.png")
    (ring / "gone.png").symlink_to(ring / "deleted.png")
    (ring / "self.png").symlink_to(ring / "self.png")
    (ring / "back").symlink_to(data / "round")  # a folder link to an ancestor
    write_image(tmp_path / "elsewhere.png")
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
    nested_images(tmp_path / "data", per_class=1)
    star = tmp_path / "data" / "angular" / "star"
    star.mkdir()
    write_image(tmp_path / "outside.png")
    (star / "0.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(ValueError, match=r"star' has no images.*skipped: 1 symlink outside"):
        scan_directory(tmp_path / "data")


def test_class_folders_linked_from_outside_are_named_with_the_fix(tmp_path):
    # A hierarchy of symlinks into a data set kept elsewhere: every link is skipped, and
    # the layout error says so instead of only "no class folders".
    nested_images(tmp_path / "elsewhere", per_class=1)
    for group in ("round", "angular"):
        (tmp_path / "data" / group).mkdir(parents=True)
        for source in sorted((tmp_path / "elsewhere" / group).iterdir()):
            (tmp_path / "data" / group / source.name).symlink_to(source, target_is_directory=True)
    with pytest.raises(ValueError) as caught:
        scan_directory(tmp_path / "data")
    message = str(caught.value)
    assert "has no class folders" in message
    assert "3 symlink(s) under" in message and "point outside it and were skipped" in message
    assert "cp -al" in message


@pytest.mark.parametrize("hierarchy", [None, {"round": ["circle", "ring"], "angular": ["square"]}])
def test_folders_linked_from_outside_at_the_top_are_named_too(tmp_path, hierarchy):
    # data/<group> -> elsewhere/<group> (nested), or data/<class> -> ... (flat).
    nested_images(tmp_path / "elsewhere", per_class=1)
    (tmp_path / "data").mkdir()
    sources = sorted((tmp_path / "elsewhere").iterdir())
    if hierarchy is not None:
        sources = sorted(p for group in sources for p in group.iterdir())
    for source in sources:
        (tmp_path / "data" / source.name).symlink_to(source, target_is_directory=True)
    with pytest.raises(ValueError, match=r"Found no class or group folders.*point outside it"):
        scan_directory(tmp_path / "data", hierarchy)


def test_an_error_unrelated_to_emptiness_gets_no_note_about_links(tmp_path):
    # One group only, and a stray link to a file outside: the error is the hierarchy's.
    nested_images(tmp_path / "data", tree={"round": ["circle", "ring"]}, per_class=2)
    write_image(tmp_path / "outside.png")
    (tmp_path / "data" / "round" / "ring" / "9.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(ValueError) as caught:
        scan_directory(tmp_path / "data")
    assert "symlink" not in str(caught.value)


def test_scan_directory_error_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*Received: root=.*nowhere"):
        scan_directory(tmp_path / "nowhere")


def test_scan_directory_error_file_instead_of_folder(tmp_path):
    write_image(tmp_path / "a.png")
    with pytest.raises(ValueError, match="not a file. Received: root=.*a.png"):
        scan_directory(tmp_path / "a.png")


def test_scan_directory_error_empty_folder(tmp_path):
    write_image(tmp_path / "lonely.png")
    with pytest.raises(ValueError, match="no class or group folders.*1 visible"):
        scan_directory(tmp_path)


def test_scan_directory_error_flat_layout_without_hierarchy(tmp_path):
    flat_images(tmp_path)
    with pytest.raises(ValueError, match=r"looks like a flat.*--hierarchy FILE.*hierarchy="):
        scan_directory(tmp_path)


def test_scan_directory_error_empty_class_folder(tmp_path):
    nested_images(tmp_path)
    (tmp_path / "angular" / "star").mkdir()
    (tmp_path / "angular" / "star" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"class folder .*star' has no images.*notes.txt"):
        scan_directory(tmp_path)


def test_scan_directory_error_class_folder_not_in_hierarchy(tmp_path):
    flat_images(tmp_path, classes=("circle", "ring", "square", "blob"))
    with pytest.raises(ValueError, match=r"not classes of the hierarchy: \['blob'\]"):
        scan_directory(tmp_path, TREE)


def test_scan_directory_error_hierarchy_class_without_folder(tmp_path):
    flat_images(tmp_path, classes=("circle", "square"))
    with pytest.raises(ValueError, match=r"have no folder.*\['ring'\]"):
        scan_directory(tmp_path, TREE)


def test_scan_directory_error_empty_group_folder(tmp_path):
    nested_images(tmp_path)
    (tmp_path / "curved").mkdir()
    with pytest.raises(ValueError, match="group folder .*curved' has no class folders"):
        scan_directory(tmp_path)


def test_scan_directory_error_classes_mixed_with_subgroups(tmp_path):
    nested_images(tmp_path)
    write_image(tmp_path / "round" / "more" / "oval" / "0.png")
    with pytest.raises(ValueError, match=r"mixes class folders \['circle', 'ring'\]"):
        scan_directory(tmp_path)


def test_scan_directory_error_folders_not_a_valid_hierarchy(tmp_path):
    nested_images(tmp_path, tree={"a": ["same"], "b": ["same"]})
    with pytest.raises(ValueError, match="do not form a valid hierarchy.*unique"):
        scan_directory(tmp_path)


def test_scan_directory_error_only_unreadable_images(tmp_path):
    nested_images(tmp_path)
    (tmp_path / "angular" / "star").mkdir()
    (tmp_path / "angular" / "star" / "0.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="None of the 1 images.*star"):
        scan_directory(tmp_path)


def test_scan_directory_error_hierarchy_of_wrong_type(tmp_path):
    flat_images(tmp_path)
    with pytest.raises(TypeError, match="Received: list"):
        scan_directory(tmp_path, ["circle", "ring"])

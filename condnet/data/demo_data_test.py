import numpy as np
import pytest
from PIL import Image

from condnet.data.demo_data import SHAPES, _render, make_shapes_dataset, render_shape
from condnet.data.scan import scan_directory
from condnet.hierarchy import Hierarchy

CLASSES = [name for names in SHAPES.values() for name in names]


def _pixels(root):
    return [np.asarray(Image.open(path)) for path in sorted(root.rglob("*.png"))]


def test_make_shapes_dataset_writes_nested_folders(tmp_path):
    hierarchy = make_shapes_dataset(tmp_path / "shapes", samples_per_class=3, image_size=20)
    assert hierarchy == Hierarchy(SHAPES)
    found, paths, labels = scan_directory(tmp_path / "shapes")
    assert found == hierarchy
    np.testing.assert_array_equal(labels, np.repeat(np.arange(6), 3))
    assert (tmp_path / "shapes" / "round" / "ring" / "00002.png").is_file()
    assert Image.open(paths[0]).size == (20, 20) and Image.open(paths[0]).mode == "RGB"


def test_make_shapes_dataset_writes_train_and_test(tmp_path):
    make_shapes_dataset(
        tmp_path / "split", samples_per_class=2, image_size=16, test_samples_per_class=1
    )
    assert len(list((tmp_path / "split" / "train").rglob("*.png"))) == 12
    assert len(list((tmp_path / "split" / "test").rglob("*.png"))) == 6
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["test", "train"]
    make_shapes_dataset(tmp_path / "plain", samples_per_class=2, image_size=16)
    for train, plain in zip(_pixels(tmp_path / "split" / "train"), _pixels(tmp_path / "plain")):
        np.testing.assert_array_equal(train, plain)
    test = _pixels(tmp_path / "split" / "test")[0]
    assert not any(np.array_equal(test, image) for image in _pixels(tmp_path / "plain"))


def test_make_shapes_dataset_is_deterministic(tmp_path):
    make_shapes_dataset(tmp_path / "a", samples_per_class=2, image_size=16, seed=5)
    make_shapes_dataset(tmp_path / "b", samples_per_class=2, image_size=16, seed=5)
    make_shapes_dataset(tmp_path / "c", samples_per_class=2, image_size=16, seed=6)
    a_files = sorted((tmp_path / "a").rglob("*.png"))
    b_files = sorted((tmp_path / "b").rglob("*.png"))
    assert [f.read_bytes() for f in a_files] == [f.read_bytes() for f in b_files]
    different = [
        not np.array_equal(a, c) for a, c in zip(_pixels(tmp_path / "a"), _pixels(tmp_path / "c"))
    ]
    assert all(different)


def test_render_shape_depends_only_on_generator_state():
    first = render_shape("star", np.random.default_rng(1), 24)
    again = render_shape("star", np.random.default_rng(1), 24)
    other = render_shape("star", np.random.default_rng(2), 24)
    assert first.shape == (24, 24, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def _shape_statistics(class_name, count=30):
    rng = np.random.default_rng(0)
    hollow, aspect, fill = [], [], []
    for _ in range(count):
        _, mask = _render(class_name, rng, 48)
        y, x = np.nonzero(mask > 0.5)
        cy, cx = int(round(y.mean())), int(round(x.mean()))
        hollow.append(mask[cy, cx] < 0.5)
        eigenvalues = np.linalg.eigvalsh(np.cov(np.stack([x, y])))
        aspect.append(np.sqrt(eigenvalues[1] / eigenvalues[0]))
        fill.append(len(x) / (np.ptp(x) + 1) / (np.ptp(y) + 1))
    return np.mean(hollow), np.array(aspect), np.mean(fill)


def test_render_shape_classes_differ_in_their_defining_feature():
    ring_hollow, _, _ = _shape_statistics("ring")
    circle_hollow, circle_aspect, circle_fill = _shape_statistics("circle")
    _, ellipse_aspect, _ = _shape_statistics("ellipse")
    _, _, star_fill = _shape_statistics("star")
    assert ring_hollow == 1.0 and circle_hollow == 0.0
    assert circle_aspect.max() < 1.2 < 1.4 < ellipse_aspect.min()
    assert star_fill < circle_fill - 0.2


@pytest.mark.parametrize("class_name", CLASSES)
def test_render_shape_stands_out_from_the_background(class_name):
    rng = np.random.default_rng(3)
    for _ in range(10):
        image, mask = _render(class_name, rng, 48)
        inside = image[mask > 0.99].astype(float).mean(axis=0)
        around = image[mask < 0.01].astype(float).mean(axis=0)
        assert np.linalg.norm(inside - around) > 20


def test_render_shape_error_unknown_class():
    with pytest.raises(ValueError, match="Unknown shape 'hexagon'.*circle"):
        render_shape("hexagon", np.random.default_rng(0))


def test_make_shapes_dataset_error_folder_not_empty(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="already holds files.*Received: root="):
        make_shapes_dataset(tmp_path, samples_per_class=1)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"samples_per_class": 0}, "samples_per_class=0"),
        ({"image_size": 8}, "image_size=8"),
        ({"seed": -1}, "seed=-1"),
        ({"test_samples_per_class": 1.5}, "test_samples_per_class=1.5"),
    ],
)
def test_make_shapes_dataset_error_bad_options(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        make_shapes_dataset(tmp_path / "new", **options)
    assert not (tmp_path / "new").exists()

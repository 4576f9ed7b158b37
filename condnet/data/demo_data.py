"""A procedural hierarchical image dataset of shapes, drawn on cluttered backgrounds."""

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from condnet.hierarchy import Hierarchy

SHAPES = {"angular": ["square", "star", "triangle"], "round": ["circle", "ellipse", "ring"]}
_SUPERSAMPLE = 4
_MIN_CONTRAST = 80.0


def make_shapes_dataset(
    root, samples_per_class=200, image_size=48, seed=0, test_samples_per_class=0
):
    """Write the shapes dataset as nested image folders and return its hierarchy.

    Two groups of three classes: "angular" (square, star, triangle) and
    "round" (circle, ellipse, ring), in sorted order so that the returned
    hierarchy equals the one `scan_directory` reads back from the folders.

    Every image is drawn by `render_shape`: a shape of random colour, size,
    position and rotation on a darker random gradient with pixel noise and
    distractor lines (sometimes one across the shape). Colour says nothing
    about the class, so the gate must tell curved outlines from corners and
    the experts must look at aspect ratio (circle vs ellipse), a hollow
    centre (ring vs circle) or the number of points. As a yardstick, a plain
    3-layer CNN trained on the defaults (1,200 images, 20% held out) reaches
    about 35% accuracy after 4 epochs and 55% after 10 (chance: 17%).

    The files are `root/<group>/<class>/00000.png`, ... With
    `test_samples_per_class`, two sets are written instead,
    `root/train/<group>/<class>/` and `root/test/<group>/<class>/`, drawn from
    independent random streams. The training images do not depend on whether
    a test set is written, and the same arguments give the same bytes.

    Args:
        root: str or `Path`. Folder to write; it must be missing or empty.
        samples_per_class: int. Images per class (per training set).
            Defaults to 200.
        image_size: int. Side of the square images, at least 16.
            Defaults to 48.
        seed: int. Non-negative seed of the drawing. Defaults to 0.
        test_samples_per_class: int. Images per class in a separate test set;
            0 writes no test set. Defaults to 0.

    Returns:
        The `Hierarchy` of the dataset.

    Example:

    ```python
    hierarchy = make_shapes_dataset("shapes", test_samples_per_class=50)
    train, validation = load_folders("shapes/train", image_size=48)
    ```
    """
    root = Path(root)
    _check_count(samples_per_class, "samples_per_class", minimum=1)
    _check_count(test_samples_per_class, "test_samples_per_class", minimum=0)
    _check_count(image_size, "image_size", minimum=16)
    _check_count(seed, "seed", minimum=0)
    _check_empty(root)
    hierarchy = Hierarchy(SHAPES)
    splits = [(root, samples_per_class)]
    if test_samples_per_class:
        splits = [(root / "train", samples_per_class), (root / "test", test_samples_per_class)]
    for split_index, (split_root, count) in enumerate(splits):
        for class_index, name in enumerate(hierarchy.classes):
            rng = np.random.default_rng([seed, split_index, class_index])
            folder = split_root.joinpath(*hierarchy.path(name))
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(count):
                image = render_shape(name, rng, image_size)
                Image.fromarray(image).save(folder / f"{number:05d}.png")
    return hierarchy


def render_shape(class_name, rng, image_size=48):
    """Draw one image of a shape class as a uint8 array.

    Args:
        class_name: str. One of the classes of `SHAPES`.
        rng: `numpy.random.Generator`. Source of every random choice, so the
            same generator state gives the same image.
        image_size: int. Side of the square image. Defaults to 48.

    Returns:
        A uint8 array of shape `(image_size, image_size, 3)`.

    Example:

    ```python
    image = render_shape("ring", np.random.default_rng(0), 48)
    ```
    """
    return _render(class_name, rng, image_size)[0]


# === Drawing ===


def _render(class_name, rng, image_size):
    """The image and the shape's coverage mask (float in [0, 1])."""
    polygons = _outline(class_name, rng, image_size)
    mask = _mask(polygons, image_size)
    background = _background(rng, image_size)
    color = _shape_color(rng, background[mask > 0.5].mean(axis=0))
    shade = 1 + rng.uniform(-0.12, 0.12) * _ramp(rng, image_size)
    shape = np.clip(color * shade[..., None], 0, 255)
    image = background * (1 - mask[..., None]) + shape * mask[..., None]
    image = _lines(image, rng, count=rng.integers(0, 2), width=1)
    image = image + rng.normal(0, rng.uniform(2, 8), image.shape)
    return np.clip(np.rint(image), 0, 255).astype("uint8"), mask


def _outline(class_name, rng, image_size):
    """Polygons in pixel units: the outline, then any hole."""
    radius = rng.uniform(0.24, 0.38) * image_size
    center = rng.uniform(radius + 1, image_size - radius - 1, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    if class_name == "circle":
        return [_ellipse(center, radius, rng.uniform(0.9, 1.0), angle)]
    if class_name == "ellipse":
        return [_ellipse(center, radius, rng.uniform(0.4, 0.68), angle)]
    if class_name == "ring":
        hole = radius * rng.uniform(0.45, 0.65)
        return [
            _ellipse(center, radius, rng.uniform(0.9, 1.0), angle),
            _ellipse(center, hole, 1.0, angle),
        ]
    if class_name == "triangle":
        jitter = rng.uniform(-0.2, 0.2, size=3)
        return [_star(center, radius * 1.15, None, 3, angle, jitter)]
    if class_name == "square":
        return [_star(center, radius * 1.1, None, 4, angle, np.zeros(4))]
    if class_name == "star":
        inner = radius * rng.uniform(0.4, 0.55)
        return [_star(center, radius * 1.15, inner, 5, angle, np.zeros(5))]
    raise ValueError(
        f"Unknown shape {class_name!r}. The shapes are "
        f"{[name for names in SHAPES.values() for name in names]}. "
        f"Received: class_name={class_name!r}"
    )


def _ellipse(center, radius, aspect, angle, points=48):
    t = np.linspace(0, 2 * math.pi, points, endpoint=False)
    return _place(radius * np.cos(t), radius * aspect * np.sin(t), center, angle)


def _star(center, radius, inner, corners, angle, jitter):
    """A regular polygon, or a star when `inner` (the inner radius) is set."""
    t = 2 * math.pi * (np.arange(corners) + jitter) / corners
    if inner is None:
        return _place(radius * np.cos(t), radius * np.sin(t), center, angle)
    t = np.stack([t, t + math.pi / corners], axis=1).reshape(-1)
    r = np.tile([radius, inner], corners)
    return _place(r * np.cos(t), r * np.sin(t), center, angle)


def _place(x, y, center, angle):
    cos, sin = math.cos(angle), math.sin(angle)
    return np.stack([center[0] + cos * x - sin * y, center[1] + sin * x + cos * y], axis=1)


def _mask(polygons, image_size):
    """Antialiased coverage: draw at a higher resolution, then average down."""
    size = image_size * _SUPERSAMPLE
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for fill, polygon in zip([255, 0], polygons):
        draw.polygon([tuple(point) for point in polygon * _SUPERSAMPLE], fill=fill)
    small = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(small, dtype="float32") / 255


def _background(rng, image_size):
    start, end = rng.uniform(0, 140, size=(2, 3))
    background = start + (end - start) * _ramp(rng, image_size)[..., None]
    return _lines(background, rng, count=rng.integers(1, 4), width=1)


def _ramp(rng, image_size):
    """A linear gradient from 0 to 1 in a random direction."""
    angle = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:image_size, 0:image_size] / max(image_size - 1, 1)
    ramp = math.cos(angle) * x + math.sin(angle) * y
    return (ramp - ramp.min()) / (ramp.max() - ramp.min())


def _lines(image, rng, count, width):
    canvas = Image.fromarray(np.clip(image, 0, 255).astype("uint8"))
    draw = ImageDraw.Draw(canvas)
    size = image.shape[0]
    for _ in range(count):
        ends = rng.uniform(-0.1 * size, 1.1 * size, size=4)
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.line(ends.tolist(), fill=color, width=int(width))
    return np.asarray(canvas, dtype="float32")


def _shape_color(rng, behind):
    """A random colour clearly brighter than the background behind the shape."""
    for _ in range(50):
        color = rng.uniform(0, 255, size=3)
        if _luminance(color) - _luminance(behind) >= _MIN_CONTRAST:
            return color
    return np.full(3, 255.0)


def _luminance(color):
    return float(np.dot(color, [0.299, 0.587, 0.114]))


# === Checks ===


def _check_count(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}")


def _check_empty(root):
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(
            "make_shapes_dataset writes into a new or empty folder, so that no "
            f"old images mix with the new ones. {str(root)!r} already holds files: "
            "delete it or choose another folder. Received: root=" + repr(str(root))
        )

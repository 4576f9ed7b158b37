"""Occlusion maps: where the gate looked for its group, and the chosen expert for its class.

A grey patch (the image's mean colour) slides over the image; the occluded copies go
through the model's parts as one batch per part (trunk, gate, the chosen expert), and
each pixel's value is the mean drop, over the patches that cover it, in the gate's
probability of the group it chose and in that expert's probability of the class it
chose. Red (positive) marks the evidence: covering it lowers the probability.

Occlusion sensitivity (Zeiler and Fergus, ECCV 2014) rather than Grad-CAM: it needs
only forward passes, so it runs the same on TensorFlow, JAX and PyTorch, with no
gradients at inference, on any gate or expert (a pretrained backbone, a
`TemperatureScaling` head, a nested `ConditionalModel`) and on hard-routed models,
where the route itself has no gradient. Its price is a bounded number of passes:
`(image side / stride)` squared copies, 49 by default.

Documents get the same idea word by word (`weighed_words`): each distinct word the
model reads is taken out of the document in turn (its ids become padding), and the
words whose absence lowers the predicted class's probability most weighed most.
"""

import math
import warnings
from pathlib import Path

import keras
import numpy as np

from condnet.data.checks import is_int
from condnet.data.decode import decode_image
from condnet.models.conditional_model import ConditionalModel

# The default patch covers a quarter of each side and moves by half a patch: 7 x 7 copies.
PATCHES_PER_SIDE = 4
MAX_COPIES = 512
PANEL = 192  # pixels of one panel of the rendered picture
EVIDENCE, COUNTER = (230, 30, 30), (30, 90, 230)  # red: lowers the probability; blue: raises
LEGEND = "red: covering it lowers the probability (evidence); blue: covering it raises it"


# === Maps ===


def explain(model, image, patch_size=None, stride=None, fill="mean", batch_size=64):
    """Occlusion maps of the gate's group and of the chosen expert's class for one image.

    The group is the gate's most probable one and the class the most probable of its
    expert: what hard routing (`model.keras` of a run) answers. Under soft routing the
    final class can come from another expert; this explains the gate's first choice.

    Args:
        model: `ConditionalModel`. Its parts (trunk, gate, the chosen expert) each run
            once on the image and all its occluded copies, as one batch.
        image: array `(height, width, channels)` of the model's input size, in the
            pixel range the model reads (uint8 values for a run's model).
        patch_size: int or `(height, width)`. Side of the occluding patch in pixels.
            Defaults to a quarter of each side (rounded up).
        stride: int or `(height, width)`. Step between patches. Defaults to half
            the patch (rounded up). At most `MAX_COPIES` (512) copies are allowed.
        fill: `"mean"` (the image's mean colour) or a pixel value (a number, or one
            per channel) the patch is filled with. Defaults to `"mean"`.
        batch_size: int. Rows per call of a part (`predict_on_batch`), which bounds
            the memory its activations take. Defaults to `64`.

    Returns:
        A dict: `group`, `group_probability` (the gate's), `group_probabilities`
        (group -> probability), `class` and `class_probability` (the expert's
        P(class | group)); `gate_map` and `expert_map` (float32 arrays of the image's
        height x width: the mean drop in probability when a patch covers the pixel);
        `gate_peak` and `expert_peak` (`peak_of`); `patch_size`, `stride`, `copies`.

    Example:

    ```python
    why = explain(model, images[0])
    print(why["group"], why["gate_peak"], why["class"], why["expert_peak"])
    render_explanation(images[0], why, "runs/why.png")
    ```
    """
    _check_model(model)
    image = _check_image(model, image)
    _check_batch_size(batch_size)
    shape = image.shape[:2]
    patch, step = occlusion_grid(shape, patch_size, stride)
    boxes = patch_boxes(shape, patch, step)
    copies = occluded_copies(image, boxes, patch, _fill_value(image, fill))
    gate, group, expert = part_probabilities(model, copies, batch_size)
    g, c = model.hierarchy.group_index(group), int(np.argmax(expert[0]))
    gate_map = occlusion_map(shape, boxes, patch, gate[0, g] - gate[1:, g])
    expert_map = occlusion_map(shape, boxes, patch, expert[0, c] - expert[1:, c])
    return {
        "group": group,
        "group_probability": float(gate[0, g]),
        "group_probabilities": {k: float(p) for k, p in zip(model.hierarchy.groups, gate[0])},
        "class": model.hierarchy.classes_of(group)[c],
        "class_probability": float(expert[0, c]),
        "gate_map": gate_map,
        "expert_map": expert_map,
        "gate_peak": peak_of(gate_map),
        "expert_peak": peak_of(expert_map),
        "patch_size": patch,
        "stride": step,
        "copies": len(boxes),
    }


def occlusion_grid(shape, patch_size=None, stride=None, max_copies=MAX_COPIES):
    """`(patch, stride)` as `(height, width)` pairs for an image of `shape`, checked."""
    patch = _pair("patch_size", patch_size, [-(-side // PATCHES_PER_SIDE) for side in shape])
    step = _pair("stride", stride, [-(-side // 2) for side in patch])
    for name, value in (("patch_size", patch), ("stride", step)):
        if any(v < 1 or v > side for v, side in zip(value, shape)):
            raise ValueError(
                f"{name} must be from 1 to the image's side in pixels {tuple(shape)}. "
                f"Received: {name}={value}"
            )
    count = math.prod(len(_starts(side, p, s)) for side, p, s in zip(shape, patch, step))
    if count > max_copies:
        raise ValueError(
            f"A patch of {patch} moved by {step} over a {shape[0]}x{shape[1]} image makes "
            f"{count} occluded copies, more than the {max_copies} allowed. Pass a larger "
            f"stride (or patch_size). Received: patch_size={patch}, stride={step}"
        )
    return patch, step


def patch_boxes(shape, patch, stride):
    """The `(top, left)` corners of every patch position; the last row and column of
    positions touch the image's bottom and right edges, so that every pixel is covered
    (when the stride is no larger than the patch)."""
    rows, columns = (_starts(side, p, s) for side, p, s in zip(shape, patch, stride))
    return [(top, left) for top in rows for left in columns]


def occluded_copies(image, boxes, patch, fill):
    """The image itself (row 0), then one copy per box with the patch set to `fill`."""
    copies = np.repeat(image[None].astype("float32"), len(boxes) + 1, axis=0)
    for row, (top, left) in enumerate(boxes, 1):
        copies[row, top : top + patch[0], left : left + patch[1]] = fill
    return copies


def part_probabilities(model, images, batch_size=64):
    """`(gate, group, expert)` on a batch: the gate's group probabilities `(n, groups)`,
    the group it chose for row 0, and that group's expert's class probabilities `(n,
    classes of the group)`. Each part (the trunk, the gate, that expert) runs once over
    the batch, `batch_size` rows per `predict_on_batch`; no other expert runs."""
    taps = _run(model.trunk, images, batch_size) if model.trunk is not None else {None: images}
    gate = _probabilities(model.gate, taps[model.gate_tap], batch_size)
    group = model.hierarchy.groups[int(np.argmax(gate[0]))]
    expert = model.experts[group]
    if expert is None:  # a single-class group: its class is certain
        return gate, group, np.ones((len(images), 1), "float32")
    return gate, group, _probabilities(expert, taps[model.expert_taps[group]], batch_size)


def occlusion_map(shape, boxes, patch, drops):
    """Per pixel, the mean of `drops` over the boxes that cover it: `(height, width)`."""
    total, count = np.zeros(shape, "float64"), np.zeros(shape, "float64")
    for (top, left), drop in zip(boxes, drops):
        total[top : top + patch[0], left : left + patch[1]] += drop
        count[top : top + patch[0], left : left + patch[1]] += 1
    return (total / np.maximum(count, 1)).astype("float32")


def peak_of(values):
    """Where a map is largest: `row` and `column` in pixels, `y` and `x` as fractions of
    the height and width (the pixel's centre, so they locate it on the original image
    whatever its size), and the `drop` there. Of a plateau of equal largest values, the
    pixel nearest its centre."""
    largest = float(values.max())
    rows, columns = np.nonzero(values >= largest - 1e-6 * max(abs(largest), 1e-12))
    nearest = np.argmin((rows - rows.mean()) ** 2 + (columns - columns.mean()) ** 2)
    row, column = int(rows[nearest]), int(columns[nearest])
    return {
        "row": row,
        "column": column,
        "y": round((row + 0.5) / values.shape[0], 4),
        "x": round((column + 0.5) / values.shape[1], 4),
        "drop": round(float(values[row, column]), 6),
    }


def summary_of(explanation):
    """The explanation without its maps: what `condnet explain` writes to explain.json."""
    return {key: value for key, value in explanation.items() if not key.endswith("_map")}


# === Picture ===


def render_explanation(image, explanation, path, caption=None):
    """Write a PNG: the image, then the gate's map and the expert's map over it.

    Each map is drawn over the image in red where covering a patch lowered the
    probability (the evidence) and in blue where it raised it, more opaque the
    larger the change; the panels are titled with the group, the class and their
    probabilities, and `caption` (e.g. the file's name) heads the picture.
    """
    from PIL import Image, ImageDraw

    base = _panel(image)
    panels = [
        ("image", caption or "", base),
        (
            f"gate: {explanation['group']}",
            f"p = {explanation['group_probability']:.3f}",
            _overlay(base, explanation["gate_map"]),
        ),
        (
            f"expert {explanation['group']}: {explanation['class']}",
            f"p = {explanation['class_probability']:.3f}",
            _overlay(base, explanation["expert_map"]),
        ),
    ]
    font, margin, line = _font(), 8, 16
    top = margin + 2 * line + 4
    picture = Image.new("RGB", (3 * PANEL + 4 * margin, top + PANEL + line + 2 * margin), "white")
    draw = ImageDraw.Draw(picture)
    for index, (title, subtitle, panel) in enumerate(panels):
        left = margin + index * (PANEL + margin)
        draw.text((left, margin), _fitted(draw, title, font), fill="black", font=font)
        draw.text((left, margin + line), _fitted(draw, subtitle, font), fill="black", font=font)
        picture.paste(panel, (left, top))
    draw.text((margin, top + PANEL + margin), LEGEND, fill=(80, 80, 80), font=font)
    picture.save(Path(path), format="PNG")
    return Path(path)


def explainer(model, image_size=None, color_mode=None, **options):
    """A callable `(image path, PNG path, caption=None) -> None` that decodes an image as
    a run does (`decode_image`) and draws its explanation, for `write_report`'s gallery;
    None for a model with no gate to explain (a flat classifier, an ensemble) or whose
    input size is unknown. `image_size` and `color_mode` default to the model's input
    (1 channel: grayscale); `options` are those of `explain`."""
    shape = _input_shape(model) if isinstance(model, ConditionalModel) else None
    if shape is None or None in shape:
        return None
    image_size = image_size or shape[:2]
    color_mode = color_mode or ("grayscale" if shape[-1] == 1 else "rgb")

    def draw(path, destination, caption=None):
        image = decode_image(path, image_size=image_size, color_mode=color_mode)
        why = explain(model, image, **options)
        render_explanation(image, why, destination, caption or Path(path).name)

    return draw


def _panel(image):
    from PIL import Image

    pixels = np.clip(np.asarray(image, "float32"), 0, 255).astype("uint8")
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    shown = Image.fromarray(pixels[..., :3], "RGB")
    scale = PANEL / max(shown.size)
    size = (max(1, round(shown.width * scale)), max(1, round(shown.height * scale)))
    resample = Image.NEAREST if scale >= 2 else Image.BILINEAR  # small images stay crisp
    square = Image.new("RGB", (PANEL, PANEL), "white")
    square.paste(shown.resize(size, resample), ((PANEL - size[0]) // 2, (PANEL - size[1]) // 2))
    return square


def _overlay(base, values):
    """`base` with the map laid over it: red for positive values, blue for negative."""
    from PIL import Image

    largest = float(np.abs(values).max())
    if largest <= 0 or not math.isfinite(largest):
        return base.copy()
    height, width = values.shape
    scale = PANEL / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = np.asarray(Image.fromarray(values / largest, "F").resize(size, Image.BILINEAR))
    strength = np.zeros((PANEL, PANEL), "float32")
    top, left = (PANEL - size[1]) // 2, (PANEL - size[0]) // 2
    strength[top : top + size[1], left : left + size[0]] = resized
    colour = np.where(strength[..., None] >= 0, EVIDENCE, COUNTER).astype("float32")
    alpha = 0.75 * np.clip(np.abs(strength), 0, 1)[..., None]
    mixed = (1 - alpha) * np.asarray(base, "float32") + alpha * colour
    return Image.fromarray(mixed.round().astype("uint8"), "RGB")


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=13)
    except (TypeError, OSError, ImportError):  # an old Pillow, or one without FreeType
        return ImageFont.load_default()


def _fitted(draw, text, font):
    """`text`, cut with an ellipsis to fit one panel's width."""
    while text and draw.textlength(text, font=font) > PANEL:
        text = text[:-2] + "…"
    return text


# === Checks and helpers ===


def _check_model(model):
    if not isinstance(model, ConditionalModel):
        raise TypeError(
            "explain reads a ConditionalModel's gate and experts; a flat classifier or an "
            "ensemble has no gate to explain (explain each member of an ensemble). "
            f"Received: model of type {type(model).__name__}"
        )


def _check_image(model, image):
    image = np.asarray(keras.ops.convert_to_numpy(image))
    if image.ndim != 3:
        raise ValueError(
            "explain takes one image of shape (height, width, channels). Pass "
            f"images[0], not a batch. Received: an array of shape {image.shape}"
        )
    expected = _input_shape(model)
    if expected is not None and any(
        e is not None and e != s for e, s in zip(expected, image.shape)
    ):
        raise ValueError(
            f"The model reads images of shape {tuple(expected)}; resize the image first "
            "(`condnet.data.decode.decode_image(path, image_size=..., color_mode=...)`). "
            f"Received: an image of shape {image.shape}"
        )
    if image.dtype.kind not in "biuf":
        raise TypeError(
            f"The image must hold numbers (pixels). Received: an image of dtype {image.dtype}"
        )
    if not np.isfinite(image.astype("float64")).all():
        raise ValueError(
            "The image must hold finite pixels; it holds NaN or infinite values, for which "
            f"no probability means anything. Received: an image of shape {image.shape}"
        )
    return image


def _check_batch_size(batch_size):
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(
            f"batch_size must be an int >= 1 (rows per call of a part). Received: "
            f"batch_size={batch_size!r}"
        )


def _input_shape(model):
    """`(height, width, channels)` the model was built for, or None when unknown."""
    source = model.trunk if model.trunk is not None else model.gate
    inputs = getattr(source, "inputs", None) or ()
    if len(inputs) == 1:
        return tuple(inputs[0].shape)[1:]
    shape = next(iter((getattr(model, "_build_shapes_dict", None) or {}).values()), None)
    return None if shape is None else tuple(shape)[1:]


def _pair(name, value, default):
    if value is None:
        return tuple(default)
    values = (value, value) if isinstance(value, int | np.integer) else value
    if (
        not isinstance(values, tuple | list)
        or len(values) != 2
        or not all(is_int(v) for v in values)
    ):
        raise TypeError(
            f"{name} must be an int or a (height, width) pair of ints. Received: {name}={value!r}"
        )
    return tuple(int(v) for v in values)


def _starts(side, patch, stride):
    starts = list(range(0, side - patch + 1, stride))
    return starts if starts[-1] == side - patch else [*starts, side - patch]


def _fill_value(image, fill):
    if isinstance(fill, str) and fill == "mean":
        return image.reshape(-1, image.shape[-1]).astype("float64").mean(axis=0)
    values = np.atleast_1d(np.asarray(fill, "float64")) if _is_numeric(fill) else None
    if values is None or values.ndim != 1 or len(values) not in (1, image.shape[-1]):
        raise ValueError(
            "fill must be 'mean' (the image's mean colour) or a pixel value: a number, or "
            f"one per channel ({image.shape[-1]}). Received: fill={fill!r}"
        )
    return values


def _is_numeric(value):
    try:
        return np.asarray(value).dtype.kind in "biuf"
    except (TypeError, ValueError):
        return False


def _run(part, images, batch_size):
    """A part's outputs on `images` as numpy, `batch_size` rows per call: through
    `predict_on_batch` for a Keras model (compiled once, without the data iterator that
    makes `predict` cost a tenth of a second per call on TensorFlow), else the layer
    itself."""
    run = part.predict_on_batch if isinstance(part, keras.Model) else _called(part)
    with warnings.catch_warnings():
        # Keras 3.15's torch `predict_on_batch` wraps the batch in a tuple and then warns
        # that its structure does not match the model's inputs; the outputs are right.
        warnings.filterwarnings("ignore", "The structure of `inputs` doesn't match")
        outputs = [run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    if isinstance(outputs[0], dict):
        return {key: np.concatenate([_numpy(o[key]) for o in outputs]) for key in outputs[0]}
    return np.concatenate([_numpy(o) for o in outputs])


def _called(layer):
    return lambda inputs: layer(inputs, training=False)


def _numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def _probabilities(part, inputs, batch_size):
    outputs = _run(part, inputs, batch_size)
    if isinstance(outputs, dict):  # a nested ConditionalModel: its classes
        outputs = outputs["classes"]
    return np.asarray(outputs, "float32")


# === Words ===

WORDS_TRIED = 100  # distinct words taken out of one document, its most frequent first


def weighed_words(model, texts, top=5, max_words=WORDS_TRIED):
    """The words that weighed most in the class a text model predicts for each document.

    Each distinct word the model reads (its own vectorizer's tokens, the
    first `sequence_length` of them, the vocabulary's out-of-vocabulary token
    left out) is taken out in turn: its ids become padding, as the end of a
    short document is. The weight of a word is the predicted class's
    probability with it less without it; the model answers as it is set
    (a run's model routes hard, so taking out a word can change the expert).
    All the copies of all the documents go through one `predict`.

    Args:
        model: a `ConditionalModel` with a text `preprocessor` (a text run's model).
        texts: list of str, the documents.
        top: int. Words kept per document, heaviest first (positive weights only).
        max_words: int. Distinct words tried per document, its most frequent first.

    Returns:
        One list per document of `(word, weight)` pairs, heaviest first.
    """
    ids = model.preprocess(list(texts)).astype("int32")
    vocabulary = model.preprocessor.get_vocabulary()
    tried = [_words_to_try(row, max_words) for row in ids]
    copies = []
    for row, words in zip(ids, tried):
        copies.append(row)
        copies += [np.where(row == word, 0, row) for word in words]
    probabilities = np.asarray(model.predict(np.stack(copies), verbose=0)["classes"])
    found, start = [], 0
    for words in tried:
        rows = probabilities[start : start + len(words) + 1]
        start += len(words) + 1
        predicted = int(np.argmax(rows[0]))
        weights = rows[0, predicted] - rows[1:, predicted]
        order = [i for i in np.argsort(-weights, kind="stable")[:top] if weights[i] > 0]
        found.append([(vocabulary[words[i]], float(weights[i])) for i in order])
    return found


def document_weigher(model):
    """`weighed_words` of `model` as the callable a report's document gallery takes, or
    None for a model that does not read one vocabulary's ids (e.g. an `Ensemble` of
    text runs, whose members each read their own)."""
    vectorizer = getattr(model, "preprocessor", None)
    if not isinstance(model, ConditionalModel) or not hasattr(vectorizer, "get_vocabulary"):
        return None
    return lambda texts: weighed_words(model, texts)


def _words_to_try(row, max_words):
    """The distinct ids of `row` (neither padding, 0, nor out of vocabulary, 1), the most
    frequent first, at most `max_words`."""
    ids, counts = np.unique(row[row > 1], return_counts=True)
    return [int(i) for i in ids[np.argsort(-counts, kind="stable")][:max_words]]

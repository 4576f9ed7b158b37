"""The report's examples, written beside it: thumbnails of images as the model read them,
the first lines of documents, and occlusion maps of misrouted images."""

from pathlib import Path

from condnet.evaluation.analysis import DOCUMENT_KINDS, GALLERY_KINDS, chosen_examples

THUMBNAIL = 96
EXCERPT_LINES = 3
EXCERPT_WIDTH = 160  # characters kept of each quoted line


WHY_MISROUTED = (
    "Why they were misrouted: where the gate looked for the group it chose, and where that "
    "group's expert looked for its class (red: covering the region lowers the probability)."
)


def write_gallery(run_dir, examples, explain=None):
    """Thumbnails of up to `PER_KIND` images of each kind, as report items; with
    `explain`, the misrouted ones' occlusion maps after them."""
    items, why = [], []
    for kind, caption in GALLERY_KINDS:
        chosen = chosen_examples(examples, kind)
        if kind == "misrouted" and explain is not None:
            why = _explanations(run_dir, chosen, explain)
        figures = [_thumbnail(run_dir, kind, i, e) for i, e in enumerate(chosen)]
        figures = [f for f in figures if f is not None]
        if figures:
            items.append(("gallery", f"{kind}: {caption}", figures))
    return items + why


def _thumbnail(run_dir, kind, index, example):
    """The image as the model read it (`decode_image`: upright by its EXIF orientation,
    its pixels capped before decoding), resized to a `THUMBNAIL`-pixel square as the
    model's inputs are to theirs; None for an image that cannot be decoded."""
    from PIL import Image

    from condnet.data.decode import decode_image

    folder = run_dir / "examples"
    folder.mkdir(exist_ok=True)
    name = f"examples/{kind}-{index:02d}.png"
    try:
        pixels = decode_image(example["path"], image_size=THUMBNAIL)
        Image.fromarray(pixels).save(run_dir / name)
    except (OSError, ValueError):  # ImageDecodeError is a ValueError
        return None  # an image that cannot be read is left out of the gallery
    caption = (
        f"true {example['true']} / predicted {example['predicted']} "
        f"(expert {example['expert']}, {example['confidence']:.2f})"
    )
    return name, caption


def _explanations(run_dir, examples, explain):
    """The occlusion maps of `examples` (`explain` draws each), as report items."""
    images = []
    for index, example in enumerate(examples):
        name = f"examples/why-misrouted-{index:02d}.png"
        try:
            (run_dir / "examples").mkdir(exist_ok=True)
            explain(example["path"], run_dir / name, f"true {example['true']}")
        except (OSError, ValueError):
            continue  # an image that cannot be read is left out, as from the gallery
        images.append(("image", name))
    return [("text", WHY_MISROUTED), *images] if images else []


def document_gallery(examples, weigh=None):
    """The first lines of up to `PER_KIND` misrouted and misclassified documents, as
    report items (a document that cannot be read is left out); with `weigh`, each
    caption also names the words that weighed most in the prediction."""
    items = []
    for kind, caption in DOCUMENT_KINDS:
        chosen = chosen_examples(examples, kind)
        read = [(e, text) for e in chosen for text in [_read(e["path"])] if text is not None]
        words = weigh([text for _, text in read]) if weigh and read else [None] * len(read)
        quotes = [_quote(e, text, w) for (e, text), w in zip(read, words)]
        if quotes:
            items.append(("documents", f"{kind}: {caption}", quotes))
    return items


def _read(path):
    """A document's text, or None when it cannot be read."""
    from condnet.data.text import read_documents

    try:
        (text,), _ = read_documents([path])
    except (OSError, TypeError):
        return None
    return text


def _quote(example, text, words=None):
    """(caption, the document's first non-blank lines)."""
    lines = [line.strip()[:EXCERPT_WIDTH] for line in text.splitlines() if line.strip()]
    caption = (
        f"{Path(example['path']).name}: true {example['true']} / predicted "
        f"{example['predicted']} (expert {example['expert']}, {example['confidence']:.2f})"
    )
    if words:
        weighed = ", ".join(f"{word} ({weight:+.2f})" for word, weight in words)
        caption += f"; the words that weighed most: {weighed}"
    return caption, "\n".join(lines[:EXCERPT_LINES])

"""A run's training and validation data, as its options split them, and split.json."""

import json
import os
from pathlib import Path

from condnet.data.scan import scan_directory
from condnet.data.splits import load_folders, split_folders, split_indices
from condnet.data.text import (
    TextFolder,
    make_vectorizer,
    read_documents,
    scan_documents,
    warn_fallbacks,
)
from condnet.runs import checkpoint as ckpt
from condnet.runs.files import SPLIT
from condnet.runs.options import TrainingOptions
from condnet.runs.run_config import reads_hub
from condnet.text.hub_text_model import hub_tokenizer
from condnet.training import distribute

# === The data ===


def load_data(options, data_dir=None, vectorizer=None):
    """Training and validation folders of a run's options (its split or share, and seed):
    ImageFolders, or TextFolders for documents (`load_documents`).

    Args:
        options: `TrainingOptions`, or the `"options"` dict of a run's
            config.json (which also names its `data_dir`).
        data_dir: the data folder. Defaults to the one `options` names.
        vectorizer: documents only: the adapted `TextVectorization` to read
            them with (a resumed run's; a `HubTokenizer` for `text_trunk="hub"`).
            Defaults to one adapted on the training split (the preset's
            tokenizer for `"hub"`).
    """
    if not isinstance(options, TrainingOptions):
        data_dir = options["data_dir"] if data_dir is None else data_dir
        options = TrainingOptions.from_config(options)
    if options.modality == "text":
        return load_documents(options, data_dir, vectorizer)
    if options.split is not None:
        return _load_split(options, data_dir)
    return load_folders(
        data_dir,
        hierarchy=options.hierarchy,
        validation_split=options.validation_split,
        seed=options.seed,
        **_folder_options(options),
    )


def _folder_options(options):
    """What every ImageFolder of a run reads its images with, from its options."""
    return dict(
        image_size=options.image_size,
        batch_size=options.batch_size,
        color_mode=options.color_mode,
        cache=options.cache,
        cache_dir=options.cache_dir,
        dtype=_batch_dtype(),
    )


def _batch_dtype():
    """uint8 training batches (4 times smaller to move; the model casts them), except in a
    job of several processes: TensorFlow's collectives refuse to reduce uint8."""
    return "uint8" if distribute.process_count() == 1 else "float32"


def load_documents(options, data_dir, vectorizer=None):
    """Training and validation TextFolders of a text run: the documents of `data_dir`
    (`scan_documents`), split as the options say, read (a count of those read as
    Windows-1252 is warned once) and turned into token ids by `vectorizer`, by default
    one adapted on the training split only (`make_vectorizer`), or for `text_trunk="hub"`
    the preset's own tokenizer (`hub_tokenizer`)."""
    hierarchy, paths, labels = scan_documents(data_dir, options.hierarchy)
    if options.split is not None:
        train_rows, validation_rows = _split_rows(options, len(paths), data_dir, "documents")
    else:
        train_rows, validation_rows = split_indices(labels, options.validation_split, options.seed)
    texts, fallbacks = read_documents(paths)
    warn_fallbacks(data_dir, fallbacks, len(texts))
    if vectorizer is None and reads_hub(options):  # the preset's own tokenizer
        vectorizer = hub_tokenizer(options.backbone, options.sequence_length)
    if vectorizer is None:
        training_texts = [texts[row] for row in train_rows]
        vectorizer = make_vectorizer(
            training_texts, options.vocabulary_size, options.sequence_length
        )

    def folder(rows, **kwargs):
        return TextFolder(
            [texts[row] for row in rows],
            labels[rows],
            hierarchy,
            vectorizer,
            batch_size=options.batch_size,
            paths=[paths[row] for row in rows],
            **kwargs,
        )

    train = folder(train_rows, shuffle=True, seed=options.seed)
    return train, folder(validation_rows) if len(validation_rows) else None


def _load_split(options, data_dir):
    """Training and validation ImageFolders on the rows `options.split` names."""
    hierarchy, paths, labels = scan_directory(data_dir, options.hierarchy)
    rows = _split_rows(options, len(paths), data_dir, "images")
    return split_folders(
        hierarchy, paths, labels, rows, seed=options.seed, **_folder_options(options)
    )


def _split_rows(options, count, data_dir, noun):
    """`options.split` as (train rows, validation rows), refused when a row is not one of
    the `count` files of `data_dir`."""
    train_rows, validation_rows = (list(rows) for rows in options.split)
    outside = [row for row in train_rows + validation_rows if row >= count]
    if outside:
        scan = "scan_documents" if noun == "documents" else "scan_directory"
        raise ValueError(
            f"split names rows up to {max(outside)}, but {str(data_dir)!r} holds "
            f"{count} {noun}. The indices refer to {scan}(data_dir, "
            "hierarchy); the folder has changed since they were drawn."
        )
    return train_rows, validation_rows


# === The split's fingerprint ===


def write_split(run_dir, data_dir, train_data, validation):
    """Record which files the run trains and validates on (`RUN_DIR/split.json`)."""
    ckpt.write_atomic(
        Path(run_dir) / SPLIT, json.dumps(_split_of(data_dir, train_data, validation)) + "\n"
    )


def check_split(run_dir, data_dir, train_data, validation):
    """Refuse a data folder whose files changed since the run drew its split.

    Files added or removed redraw the split, so images the model trained on
    would be validated on (or the reverse). A run written before `split.json`
    existed is not checked.
    """
    path = Path(run_dir) / SPLIT
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text())
        stored = {part: set(stored[part]) for part in ("train", "validation")}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{str(path)!r} is damaged ({type(error).__name__}: {error}); it records the run's "
            "split. Restore it, or start a new run."
        ) from None
    now = {k: set(v) for k, v in _split_of(data_dir, train_data, validation).items()}
    if now != stored:
        raise ValueError(_split_changed(data_dir, stored, now))


def _split_of(data_dir, train_data, validation):
    def relative(folder):
        return sorted(os.path.relpath(p, data_dir) for p in folder.paths) if folder else []

    return {"train": relative(train_data), "validation": relative(validation)}


def _split_changed(data_dir, stored, now):
    before, after = stored["train"] | stored["validation"], now["train"] | now["validation"]
    added, removed = sorted(after - before), sorted(before - after)
    moved = len(stored["validation"] & now["train"]) + len(stored["train"] & now["validation"])
    parts = [f"{len(added)} file(s) added ({', '.join(added[:3])})" if added else ""]
    parts += [f"{len(removed)} removed ({', '.join(removed[:3])})" if removed else ""]
    changed = "; ".join(p for p in parts if p) or "the files are the same but split differently"
    return (
        f"The images in {str(data_dir)!r} changed since the run drew its split: {changed}. "
        f"The split drawn again would move {moved} image(s) between training and validation, "
        "so validation would score images the model trained on. Restore the folder as it was, "
        "or start a new run on it."
    )

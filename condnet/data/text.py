"""Folders of documents: find them, read them as text, and batch them as token ids.

The layouts are those of images (`scan_directory`): nested
`root/<group>/<class>/*`, or flat `root/<class>/*` with a hierarchy. A document
is any file of a class folder whose content is text, with or without an
extension (newsgroup posts, support tickets and e-mails often have none). The
scan reads the first `SNIFF_BYTES` of each file: an empty (or blank) file is
skipped as "empty", a file holding a NUL byte or mostly control characters as
"binary content", and the skipped files are counted in one warning, as for
images. Files with an image extension are left to the image reader.

Text is read as UTF-8; a file that is not valid UTF-8 is read as Windows-1252
(Latin-1 with the printable characters Windows puts in 0x80-0x9f), which
decodes any byte, and `read_documents` counts those files. A document longer
than `MAX_DOCUMENT_BYTES` is cut there: a classifier reads its first few
hundred words anyway.
"""

import os
import stat
import warnings
from pathlib import Path

import keras
import numpy as np

from condnet.data.checks import _check_batch_size, _check_indices, _check_lengths, is_int
from condnet.data.image_folder import batch_order
from condnet.data.scan import IMAGE_EXTENSIONS, FileKind, _as_hierarchy, scan_folder

SNIFF_BYTES = 8192
MAX_DOCUMENT_BYTES = 1 << 20
_CONTROL = set(range(32)) - {9, 10, 12, 13}  # tab, newline, form feed, carriage return
_MOSTLY_CONTROL = 0.1  # share of control bytes above which a file is binary


# === Scanning ===


def scan_documents(root, hierarchy=None):
    """Find the documents under a folder and label them with a hierarchy.

    The layouts and the result are those of `scan_directory`: a tuple
    `(hierarchy, paths, labels)`, paths class by class in hierarchy order,
    sorted by name within a class.

    Example:

    ```python
    hierarchy, paths, labels = scan_documents("tickets")
    ```
    """
    return scan_folder(root, hierarchy, DOCUMENTS)


def _is_document_name(path):
    return path.suffix.lower() not in IMAGE_EXTENSIONS


def document_problem(path):
    """Why the scan skips a file of a class folder (one of SKIP_REASONS), or None."""
    if not _is_document_name(path):
        return "unsupported extension"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "not a regular file"
        with open(path, "rb") as file:
            head = file.read(SNIFF_BYTES)
    except OSError:
        return "unreadable"
    if not head.strip():
        return "empty"
    if b"\0" in head or sum(byte in _CONTROL for byte in head) > _MOSTLY_CONTROL * len(head):
        return "binary content"
    return None


DOCUMENTS = FileKind(
    "documents",
    _is_document_name,
    document_problem,
    "text files (UTF-8 or Latin-1; any extension but an image's, or none)",
    "condnet as text",
)


def looks_like_text(root, limit=200):
    """Whether the files under `root` are documents rather than images: of the first
    `limit` files found (hidden ones left out), more are documents than images."""
    images, documents = count_files(root, limit)
    return documents > images


def count_files(root, limit=200):
    """`(images, documents)` among the first `limit` of them found under `root` (hidden
    files and folders left out): files with an image extension, and files whose content
    is text. Empty and binary files count as neither."""
    images = documents = 0
    for folder, folders, files in os.walk(root):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(name for name in files if not name.startswith(".")):
            path = os.path.join(folder, name)
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                images += 1
            elif document_problem(Path(path)) is None:
                documents += 1
            if images + documents >= limit:
                return images, documents
    return images, documents


# === Reading ===


def read_documents(paths):
    """The text of each file (cut at `MAX_DOCUMENT_BYTES`) and how many files were read as
    Windows-1252 because they are not valid UTF-8 (`(texts, fallbacks)`)."""
    texts, fallbacks = [], 0
    for path in paths:
        with open(path, "rb") as file:
            text, fell_back = decode_text(file.read(MAX_DOCUMENT_BYTES))
        texts.append(text)
        fallbacks += fell_back
    return texts, fallbacks


def decode_text(data):
    """`(text, fell_back)`: `data` (bytes) read as UTF-8, else as Windows-1252 (`fell_back`
    True), which decodes any byte."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), True


def warn_fallbacks(root, fallbacks, total):
    if fallbacks:
        warnings.warn(
            f"{fallbacks} of {total} documents in {str(root)!r} are not valid UTF-8 and "
            "were read as Windows-1252 (Latin-1). Re-save them as UTF-8 if some characters "
            "come out wrong.",
            stacklevel=3,
        )


# === Token ids ===


def make_vectorizer(texts, vocabulary_size=20000, sequence_length=256):
    """A `keras.layers.TextVectorization` adapted on `texts` (the training split only):
    lower case, punctuation stripped, the `vocabulary_size` most frequent words (index 0
    pads, 1 is any other word), each document cut or padded to `sequence_length` ids."""
    vectorizer = keras.layers.TextVectorization(
        max_tokens=vocabulary_size, output_sequence_length=sequence_length
    )
    vectorizer.adapt(np.array(texts, dtype=object))
    return vectorizer


def token_ids(vectorizer, texts, chunk=1024):
    """int32 array `(len(texts), sequence_length)` of `vectorizer`'s ids, computed in
    chunks (TensorFlow ops, eagerly, on any backend)."""
    parts = [
        keras.ops.convert_to_numpy(vectorizer(np.array(texts[i : i + chunk], dtype=object)))
        for i in range(0, len(texts), chunk)
    ]
    return np.concatenate(parts).astype("int32")


class TextFolder(keras.utils.PyDataset):
    """Batches of documents as token ids, with their class labels.

    A `keras.utils.PyDataset` (works with `fit`, `evaluate` and `predict` on
    every backend). The documents are turned into ids once, when the folder is
    made: each batch is `(ids, labels)`, int32 `(batch, sequence_length)` and
    int32 global class indices.

    Args:
        texts: list of str, the documents.
        labels: 1D array of global class indices, one per document.
        hierarchy: `Hierarchy` (or dict) the labels index into.
        vectorizer: an adapted `keras.layers.TextVectorization`
            (`make_vectorizer`).
        batch_size: int. Defaults to 32.
        shuffle: bool. Reshuffle at the end of every epoch (and once at the
            start). Defaults to `False`.
        seed: int. Seed of the shuffles. Defaults to `None`.
        ids: optional int array `(len(texts), sequence_length)`: the token ids
            `vectorizer` gives `texts`, when already computed (`subset`).
        paths: optional list of str, the file of each document (a run's split
            and its report name them). Defaults to `None`.
    """

    def __init__(
        self,
        texts,
        labels,
        hierarchy,
        vectorizer,
        batch_size=32,
        shuffle=False,
        seed=None,
        ids=None,
        paths=None,
    ):
        super().__init__()
        self.hierarchy = _as_hierarchy(hierarchy)
        self.texts = list(texts)
        self.labels = self.hierarchy.check_labels(labels).astype("int32")
        _check_lengths(self.texts, self.labels)
        self.paths = None if paths is None else [str(path) for path in paths]
        if self.paths is not None:
            _check_lengths(self.paths, self.labels)
        self.batch_size = _check_batch_size(batch_size)
        self.vectorizer = vectorizer
        self.ids = token_ids(vectorizer, self.texts) if ids is None else np.asarray(ids)
        self.shuffle, self.seed = bool(shuffle), seed
        self._rng, self._order = batch_order(self.num_samples, self.shuffle, seed)

    @property
    def num_samples(self):
        return len(self.texts)

    def __len__(self):
        return -(-self.num_samples // self.batch_size)

    def batch_rows(self, index):
        """The sample indices of batch `index`, in order."""
        if not (is_int(index) and 0 <= index < len(self)):
            raise IndexError(
                f"Batch index out of range: this TextFolder has {len(self)} batches. "
                f"Received: index={index!r}"
            )
        return self._order[index * self.batch_size : (index + 1) * self.batch_size]

    def __getitem__(self, index):
        rows = self.batch_rows(index)
        return self.ids[rows], self.labels[rows]

    def read_batch(self, index):
        """`(ids, labels, errors)` of batch `index`, as `ImageFolder.read_batch` gives them
        (a document, read when the folder was made, has no error: each is None)."""
        ids, labels = self[index]
        return ids, labels, [None] * len(labels)

    def on_epoch_end(self):
        if self.shuffle:
            self._order = self._rng.permutation(self.num_samples)

    def subset(self, indices):
        """A new TextFolder on some rows (integer indices or a boolean mask), with the same
        vectorizer and options."""
        rows = _check_indices(indices, self.num_samples)
        return TextFolder(
            [self.texts[row] for row in rows],
            self.labels[rows],
            self.hierarchy,
            self.vectorizer,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            seed=self.seed,
            ids=self.ids[rows],
            paths=None if self.paths is None else [self.paths[row] for row in rows],
        )

    def numpy(self):
        """All token ids and labels as arrays, in document order."""
        return self.ids, self.labels

    def __repr__(self):
        return (
            f"TextFolder(num_samples={self.num_samples}, num_classes="
            f"{self.hierarchy.num_classes}, sequence_length={self.ids.shape[1]}, "
            f"batch_size={self.batch_size})"
        )

import numpy as np
import pytest

from condnet.data import text
from condnet.data.demo_data import make_shapes_dataset
from condnet.data.text import (
    TextFolder,
    looks_like_text,
    make_vectorizer,
    read_documents,
    scan_documents,
    token_ids,
)

TREE = {"animals": ["cat", "dog"], "vehicles": ["bus", "car"]}


def _write_corpus(root, per_class=3, nested=True, suffix=""):
    for group, classes in TREE.items():
        for name in classes:
            folder = root / group / name if nested else root / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i:03d}{suffix}").write_text(f"a post about a {name} number {i}\n")
    return root


def test_documents_are_found_in_both_layouts_with_or_without_an_extension(tmp_path):
    hierarchy, paths, labels = scan_documents(_write_corpus(tmp_path / "nested"))
    assert hierarchy.to_dict() == TREE
    assert len(paths) == 12 and list(np.bincount(labels)) == [3, 3, 3, 3]
    flat = _write_corpus(tmp_path / "flat", nested=False, suffix=".txt")
    hierarchy, paths, labels = scan_documents(flat, TREE)
    assert [p.split("/")[-2] for p in paths] == [c for c in hierarchy.classes for _ in range(3)]
    assert all(p.endswith(".txt") for p in paths)


def test_empty_binary_and_image_files_are_skipped_and_counted_in_one_warning(tmp_path):
    root = _write_corpus(tmp_path / "data")
    cats = root / "animals" / "cat"
    (cats / "blank").write_text("  \n\n")
    (cats / "zero").write_bytes(b"")
    (cats / "program").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    (cats / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.warns(UserWarning, match=r"Skipped 4 file\(s\)") as caught:
        _, paths, _ = scan_documents(root)
    message = str(caught[0].message)
    assert "2 empty" in message and "1 binary content" in message
    assert "1 unsupported extension" in message
    assert len(paths) == 12


def test_a_class_folder_without_documents_names_what_it_found(tmp_path):
    root = _write_corpus(tmp_path / "data")
    for path in (root / "vehicles" / "bus").iterdir():
        path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"None of the 3 documents .*bus.*3 empty"):
        scan_documents(root)


def test_text_that_is_not_utf8_is_read_as_latin1_and_counted(tmp_path):
    (tmp_path / "utf8").write_text("café crème", encoding="utf-8")
    (tmp_path / "latin1").write_bytes("café crème".encode("latin-1"))
    texts, fallbacks = read_documents([tmp_path / "utf8", tmp_path / "latin1"])
    assert texts == ["café crème", "café crème"] and fallbacks == 1


def test_a_long_document_is_cut(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "MAX_DOCUMENT_BYTES", 10)
    (tmp_path / "long").write_text("0123456789abcdef")
    assert read_documents([tmp_path / "long"])[0] == ["0123456789"]


def test_a_folder_of_documents_looks_like_text_and_one_of_images_does_not(tmp_path):
    assert looks_like_text(_write_corpus(tmp_path / "docs"))
    make_shapes_dataset(tmp_path / "shapes", samples_per_class=2, image_size=16)
    assert not looks_like_text(tmp_path / "shapes")


def test_the_vocabulary_comes_from_the_training_documents_only():
    vectorizer = make_vectorizer(["the cat sat", "the dog ran"], sequence_length=4)
    ids = token_ids(vectorizer, ["the cat flew", "Dog, sat!"])
    vocabulary = vectorizer.get_vocabulary()
    assert "flew" not in vocabulary  # a word seen only later is out of vocabulary (1)
    assert ids.tolist() == [
        [vocabulary.index("the"), vocabulary.index("cat"), 1, 0],
        [vocabulary.index("dog"), vocabulary.index("sat"), 0, 0],  # lower case, no punctuation
    ]


def test_a_text_folder_batches_ids_and_labels_and_reshuffles_every_epoch():
    texts = [f"document {i} about class {i % 4}" for i in range(10)]
    labels = np.arange(10) % 4
    vectorizer = make_vectorizer(texts, sequence_length=6)
    folder = TextFolder(texts, labels, TREE, vectorizer, batch_size=4, shuffle=True, seed=0)
    assert len(folder) == 3
    seen = []
    for index in range(len(folder)):
        ids, batch_labels = folder[index]
        rows = folder.batch_rows(index)
        np.testing.assert_array_equal(ids, token_ids(vectorizer, [texts[r] for r in rows]))
        np.testing.assert_array_equal(batch_labels, labels[rows])
        seen += list(rows)
    assert sorted(seen) == list(range(10))
    before = [list(folder.batch_rows(i)) for i in range(3)]
    folder.on_epoch_end()
    assert [list(folder.batch_rows(i)) for i in range(3)] != before
    subset = folder.subset([1, 3])
    np.testing.assert_array_equal(subset.numpy()[0], folder.ids[[1, 3]])
    assert subset.vectorizer is vectorizer


def test_a_text_folder_names_its_files_and_reads_batches_as_an_image_folder_does():
    texts = [f"document {i}" for i in range(5)]
    paths = [f"docs/{i}.txt" for i in range(5)]
    vectorizer = make_vectorizer(texts, sequence_length=3)
    folder = TextFolder(texts, np.arange(5) % 4, TREE, vectorizer, batch_size=2, paths=paths)
    ids, labels, errors = folder.read_batch(2)
    np.testing.assert_array_equal(ids, folder.ids[[4]])
    assert labels.tolist() == [0] and errors == [None]
    assert folder.subset([3, 1]).paths == ["docs/3.txt", "docs/1.txt"]
    with pytest.raises(ValueError, match="one entry per image. Received: 2 paths and 5 labels"):
        TextFolder(texts, np.arange(5) % 4, TREE, vectorizer, paths=paths[:2])


def test_count_files_counts_images_and_documents_but_not_empty_or_binary_files(tmp_path):
    _write_corpus(tmp_path, per_class=2)
    (tmp_path / "animals" / "cat" / "photo.png").write_bytes(b"not even an image")
    (tmp_path / "animals" / "cat" / "empty").write_bytes(b"")
    (tmp_path / "animals" / "cat" / "blob").write_bytes(b"\0" * 64)
    assert text.count_files(tmp_path) == (1, 8)
    assert text.count_files(tmp_path, limit=3) == (1, 2)  # cat: 000, 001, (blob, empty), photo

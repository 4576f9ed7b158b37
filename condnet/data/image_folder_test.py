import math
import os
import warnings

import keras
import numpy as np
import pytest
from PIL import Image

from condnet.data import decode, image_folder
from condnet.data.image_folder import ImageFolder
from condnet.data.scan import scan_directory
from condnet.data.splits import load_folders
from condnet.testing import IMAGE_TREE as TREE
from condnet.testing import class_color, nested_images, truncated_jpeg, write_image


def test_image_folder_substitutes_for_training_with_one_warning(tmp_path):
    nested_images(tmp_path, per_class=2)
    truncated = truncated_jpeg(tmp_path / "round" / "ring" / "1.jpg")
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
    nested_images(tmp_path, per_class=2)
    truncated = truncated_jpeg(tmp_path / "round" / "ring" / "1.jpg")
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
    np.testing.assert_allclose(images[row + 1, 0, 0], class_color(1))  # ring/1.png
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
    nested_images(tmp_path, per_class=2)
    truncated = truncated_jpeg(tmp_path / "round" / "ring" / "1.jpg")
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


@pytest.mark.parametrize("color_mode, channels", [("rgb", 3), ("grayscale", 1)])
def test_image_folder_batches_resized_images(tmp_path, color_mode, channels):
    nested_images(tmp_path)
    write_image(tmp_path / "round" / "ring" / "big.png", (10, 20, 30), size=(40, 25))
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
    nested_images(tmp_path, per_class=4)
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
    nested_images(tmp_path, per_class=1)
    hierarchy, paths, labels = scan_directory(tmp_path)
    cached = ImageFolder(paths, labels, hierarchy, image_size=4)
    streamed = ImageFolder(paths, labels, hierarchy, image_size=4, cache=False)
    assert cached.cache == "memory" and streamed.cache == "none"
    before = cached[0][0]
    for path in paths:
        write_image(tmp_path / path, (0, 0, 0), size=(3, 3))
    np.testing.assert_array_equal(cached[0][0], before)
    assert streamed[0][0].max() == 0


def test_image_folder_subset_and_numpy(tmp_path):
    nested_images(tmp_path)
    hierarchy, paths, labels = scan_directory(tmp_path)
    data = ImageFolder(paths, labels, hierarchy, image_size=3, batch_size=2, seed=1)
    rows = np.flatnonzero(hierarchy.group_labels(labels) == hierarchy.group_index("round"))
    subset = data.subset(rows)
    assert subset.paths == [paths[row] for row in rows]
    assert subset.hierarchy == hierarchy and subset.batch_size == 2
    images, subset_labels = subset.numpy()
    assert images.shape == (6, 3, 3, 3)
    np.testing.assert_array_equal(subset_labels, [1, 1, 1, 2, 2, 2])
    np.testing.assert_allclose(images[0, 0, 0], class_color(0))  # circle, written first
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
    nested_images(tmp_path, per_class=4)
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


def test_shards_split_every_batch_between_processes_alike(tmp_path):
    nested_images(tmp_path, per_class=5)
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
    nested_images(tmp_path, per_class=3)  # 9 images: batches of 4, 4 and 1
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
    nested_images(tmp_path, per_class=2)
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
    paths[5] = str(truncated_jpeg(tmp_path / "broken.jpg"))
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
    real = decode._decode

    def counted(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decode, "_decode", counted)
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
from condnet.data.image_folder import ImageFolder
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
    monkeypatch.setattr(image_folder, "CACHE_BYTES", 100)
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
from condnet.data.image_folder import ImageFolder, _process_pool
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

"""ImageFolder: batches of images decoded from files, with their labels, for `fit`."""

import math
import multiprocessing
import os
import threading
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor

import keras
import numpy as np

from condnet.choices import CACHE_POLICIES
from condnet.data.cache import DiskCache, ImageStore
from condnet.data.checks import (
    _check_batch_size,
    _check_color_mode,
    _check_indices,
    _check_lengths,
    check_image_size,
    is_int,
)
from condnet.data.decode import decode_files
from condnet.data.scan import _SHOWN_PATHS, _as_hierarchy

CACHE_BYTES = 256 * 2**20


class ImageFolder(keras.utils.PyDataset):
    """Batches of images read from files, with their class labels.

    A `keras.utils.PyDataset`, so it works with `fit`, `evaluate` and
    `predict` on every backend. Each batch is `(images, labels)`: float32
    images in [0, 255] of shape `(batch, height, width, channels)` (3 channels
    for "rgb", 1 for "grayscale"), decoded by `decode_image` and resized to
    `image_size` whatever their size on disk, and int32 global class indices.

    Images are decoded from disk by `decode_workers` worker threads (or
    processes, `decoder`), and the rows of the next `READ_AHEAD` batches are
    decoded while the model trains on the current one. JPEGs are decoded by
    libjpeg-turbo at 1/2, 1/4 or 1/8 scale when the target size allows
    (`decode_image`). With `cache="memory"`, each decoded image (uint8, already
    resized) is kept in one array in memory after its first use; with
    `cache="disk"` in a memory-mapped file outside the data (`DiskCache`,
    `cache_dir`), so later epochs and later runs read no image file. By
    default (`"auto"`) the memory holds the set when it fits in `CACHE_BYTES`
    (256 MiB: about 21,000 images at 64x64 RGB, 1,700 at 224x224), and the
    disk holds it otherwise.

    A file can pass the scan and still fail to decode (e.g. a truncated
    JPEG). What a batch then holds depends on `substitute_unreadable`:

    - `True` (for training): the row is replaced by the next readable sample
      *and that sample's label*, so training never stops. The substitutions
      are counted per file in `substitutions` and reported in one warning at
      the end of the epoch in which a file first failed.
    - `False` (for evaluation and prediction): batches are
      `(images, labels, valid)`. A failed row keeps its own label, its image
      is all zeros and its `valid` entry is 0.0 (1.0 elsewhere). Keras reads
      `valid` as sample weights, so the loss and the `weighted_metrics` of
      `model.evaluate(data)` leave the failed rows out (a `ConditionalModel`'s
      own metrics too; plain compiled `metrics` do not). `model.predict`
      ignores it: drop those rows from its output.

    `read_batch` gives any batch without substitution, with the reason each
    failed row failed, whatever `substitute_unreadable`; `batch_rows` says
    which samples a batch holds. `evaluate_model` and the run tools use them.

    Args:
        paths: list of image file paths.
        labels: 1D array of global class indices, one per path.
        hierarchy: `Hierarchy` (or dict) the labels index into.
        image_size: int or `(height, width)`. Size the images are resized to.
            Defaults to `(64, 64)`.
        batch_size: int. Defaults to 32.
        color_mode: `"rgb"` or `"grayscale"`. Defaults to `"rgb"`.
        shuffle: bool. Whether to reshuffle the samples at the end of every
            epoch (and once at the start). Defaults to `False`.
        seed: int. Seed of the shuffles. Defaults to `None`.
        cache: `"auto"`, `"memory"`, `"disk"` or `"none"` (`True` is
            `"memory"`, `False` `"none"`, `None` `"auto"`). Where decoded images
            are kept. Defaults to `"auto"`.
        cache_dir: str or `Path`. The folder of the disk cache. Defaults to
            `$CONDNET_CACHE_DIR`, else `~/.cache/condnet/decoded`.
        decode_workers: int or `"auto"`. Workers that decode images (1:
            decode in the caller's thread, no read-ahead). Defaults to
            `"auto"`: one per core, at most 16.
        decoder: `"threads"`, `"processes"` or `"auto"`. What the workers
            are. Threads decode in parallel while libjpeg-turbo and Pillow's
            decoders and resizing hold no Python lock, which is most of the
            work, and hand over the pixels without copying them; forked
            processes decode in parallel whatever the image, but send every
            pixel back through a pipe. Threads read more images/s than
            processes on JPEGs and PNGs (`benchmarks/input_pipeline.py`;
            figures in benchmarks/RESULTS.md).
            Defaults to `"auto"`: threads.
        dtype: `"float32"` or `"uint8"`. The training batches' images (4
            times smaller as uint8; a functional Keras model casts them to
            its input's dtype, so the conversion runs inside the model).
            `read_batch` and `numpy` give float32. Defaults to `"float32"`.
        substitute_unreadable: bool. Whether a row whose image fails to
            decode is replaced by the next readable sample (`True`) or kept
            and marked invalid in a third batch element (`False`). Defaults
            to `True`.
        **pydataset_kwargs: `workers`, `use_multiprocessing` and
            `max_queue_size`, passed to `keras.utils.PyDataset`.

    Example:

    ```python
    hierarchy, paths, labels = scan_directory("shapes/train")
    data = ImageFolder(paths, labels, hierarchy, image_size=48, shuffle=True)
    model.fit(data, epochs=5)
    images, labels, errors = data.read_batch(0)  # errors[i] is None or a reason
    ```
    """

    def __init__(
        self,
        paths,
        labels,
        hierarchy,
        image_size=(64, 64),
        batch_size=32,
        color_mode="rgb",
        shuffle=False,
        seed=None,
        cache=None,
        substitute_unreadable=True,
        cache_dir=None,
        decode_workers="auto",
        decoder="auto",
        dtype="float32",
        **pydataset_kwargs,
    ):
        self.hierarchy = _as_hierarchy(hierarchy)
        self.paths = [str(path) for path in paths]
        self.labels = self.hierarchy.check_labels(labels).astype("int32")
        _check_lengths(self.paths, self.labels)
        self.image_size = check_image_size(image_size)
        self.batch_size = _check_batch_size(batch_size)
        self.color_mode = _check_color_mode(color_mode)
        super().__init__(**pydataset_kwargs)
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.cache = self._cache_policy(_check_cache(cache))
        self.cache_dir = cache_dir
        self.decode_workers = _check_decode_workers(decode_workers)
        self.decoder = _check_decoder(decoder)
        if dtype not in ("float32", "uint8"):
            raise ValueError(f"`dtype` must be 'float32' or 'uint8'. Received: dtype={dtype!r}")
        self.dtype = dtype
        self._pending = {}  # row -> (Future of its chunk's decoding, position in it)
        self._pending_lock = threading.Lock()
        self._here = threading.local()  # `.active` while `decoded_here` runs in a thread
        self._store = _StoreSlot(self)  # the decoded images, shared with subsets
        self._store_rows = np.arange(len(self.paths))  # this folder's rows in the store
        self.substitute_unreadable = bool(substitute_unreadable)
        self.substitutions = {}  # path -> rows it was replaced in, all epochs
        self._epoch_substitutions = {}
        self._reported = set()
        self._unreadable = {}  # path -> reason, shared with subsets
        self._shard = None  # (process index, process count): see `shard`
        self._rng, self._order = batch_order(self.num_samples, self.shuffle, seed)

    @property
    def num_samples(self):
        return len(self.paths)

    @property
    def channels(self):
        return 3 if self.color_mode == "rgb" else 1

    @property
    def unreadable(self):
        """The files found so far to fail decoding: a dict path -> reason."""
        return dict(self._unreadable)

    def __len__(self):
        batches = math.ceil(self.num_samples / self.batch_size)
        if self._shard is not None and 0 < self.num_samples % self.batch_size < self._shard[1]:
            batches -= 1  # a last batch of fewer rows than processes gives none to some
        return batches

    def __getitem__(self, index):
        if not self.substitute_unreadable:
            images, labels, errors = self.read_batch(index)
            return images, labels, np.array([error is None for error in errors], "float32")
        rows = self.batch_rows(index)
        self._read_ahead(index)
        images, reasons = self._images(rows)
        if any(reasons):
            rows, images = self._substituted(rows, images, reasons)
        return images.astype(self.dtype, copy=False), self.labels[rows]

    def decoded_here(self, index):
        """`self[index]` with its files decoded in the calling thread and nothing read
        ahead: for a caller that runs several batches at once itself, such as the
        `tf.data` map with parallel calls that feeds `fit` on TensorFlow
        (`condnet.training.distribute.fit_inputs`). Several threads may call it at
        once; the decoded-image store is shared as usual."""
        self._here.active = True
        try:
            return self[index]
        finally:
            self._here.active = False

    def _decodes_here(self):
        return self.decode_workers == 1 or getattr(self._here, "active", False)

    def batch_rows(self, index):
        """The sample indices (into `paths` and `labels`) of batch `index`, in order."""
        if not (is_int(index) and 0 <= index < len(self)):
            raise IndexError(
                f"Batch index out of range: this ImageFolder has {len(self)} batches. "
                f"Received: index={index!r}"
            )
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        if self._shard is None:
            return rows
        index, count = self._shard
        share = len(rows) // count  # every process the same number of rows
        return rows[index * share : (index + 1) * share]

    def read_batch(self, index):
        """Batch `index` without substitution: `(images, labels, errors)`.

        `errors` holds one entry per row: `None` where the image decoded,
        else why it did not (e.g. `"unreadable (OSError: image file is
        truncated)"`). A failed row keeps its own label; its image is all
        zeros and must not be used. Row `i` is the sample
        `batch_rows(index)[i]`.
        """
        rows = self.batch_rows(index)
        self._read_ahead(index)
        images, errors = self._images(rows)
        return images.astype("float32"), self.labels[rows], errors

    def on_epoch_end(self):
        self._report_substitutions()
        if self.shuffle:
            self._cancel_read_ahead()  # the rows ahead were those of the old order
            self._order = self._rng.permutation(self.num_samples)

    def subset(self, indices):
        """A new ImageFolder on some rows (integer indices or a boolean mask).

        It keeps every option of this one and shares its cache of decoded
        images (and of files that fail to decode). Use it for a validation
        split or to train one expert on the samples of its own group.
        """
        rows = _check_indices(indices, self.num_samples)
        subset = ImageFolder(
            [self.paths[row] for row in rows],
            self.labels[rows],
            self.hierarchy,
            image_size=self.image_size,
            batch_size=self.batch_size,
            color_mode=self.color_mode,
            shuffle=self.shuffle,
            seed=self.seed,
            cache=self.cache,
            substitute_unreadable=self.substitute_unreadable,
            cache_dir=self.cache_dir,
            decode_workers=self.decode_workers,
            decoder=self.decoder,
            dtype=self.dtype,
            workers=self.workers,
            use_multiprocessing=self.use_multiprocessing,
            max_queue_size=self.max_queue_size,
        )
        subset._store, subset._unreadable = self._store, self._unreadable
        subset._store_rows = self._store_rows[rows]
        return subset

    def shard(self, index, count):
        """This process's slice of every batch, in a job of `count` processes.

        Batch `i` of shard `index` holds the `index`-th of `count` equal slices
        of batch `i` of this folder (the rows a last batch cannot split evenly
        are left out; a last batch of fewer rows than processes is dropped),
        so the shards of all processes make up each global batch. The
        processes must shuffle alike: a shuffled folder needs a `seed`. It
        shares this folder's caches; `whole` is the folder it slices.
        """
        if not (is_int(count) and count >= 1 and is_int(index) and 0 <= index < count):
            raise ValueError(
                f"shard takes a process index in 0..count-1 and a count >= 1. Received: "
                f"index={index!r}, count={count!r}"
            )
        if self.shuffle and self.seed is None:
            raise ValueError(
                "Shards of a shuffled ImageFolder need its seed, so that every process "
                "shuffles alike. Received: seed=None"
            )
        if self.batch_size % count:
            raise ValueError(
                f"Each of the {count} processes takes an equal slice of every batch, so the "
                f"batch size must divide by {count}. Received: batch_size={self.batch_size}"
            )
        shard = self.subset(np.arange(self.num_samples))
        shard._shard, shard.whole = (index, count), self
        return shard

    def numpy(self):
        """All images and labels as arrays, in `paths` order (small sets only).

        Files that fail to decode are left out, with their labels, and
        counted in one warning.
        """
        images, reasons = self._images(np.arange(self.num_samples))
        kept = [row for row, reason in enumerate(reasons) if reason is None]
        if len(kept) < self.num_samples:
            failed = [self.paths[row] for row, reason in enumerate(reasons) if reason]
            warnings.warn(
                f"numpy() left out {len(failed)} image(s) that fail to decode, with their "
                f"labels: {self._described(failed)}. Replace or delete the files to "
                "silence this warning.",
                stacklevel=2,
            )
        return images[kept].astype("float32"), self.labels[kept]

    def __repr__(self):
        return (
            f"ImageFolder(num_samples={self.num_samples}, num_classes="
            f"{self.hierarchy.num_classes}, image_size={self.image_size}, "
            f"batch_size={self.batch_size}, color_mode={self.color_mode!r})"
        )

    # === Decoding ===

    def _images(self, rows):
        """`(images, reasons)` of `rows`: a uint8 array (zeros where a file fails) and
        None or why, per row. Taken from the store, from the read-ahead, or decoded now."""
        store = self._store.get()
        found = store.found(self._store_rows[rows]) if store else np.zeros(len(rows), bool)
        if store is not None and found.all():  # once cached: one copy out of the store
            return np.asarray(store.images[self._store_rows[rows]]), [None] * len(rows)
        row_list, absent = rows.tolist(), np.flatnonzero(~found).tolist()  # Python ints: fast
        missing = [i for i in absent if self.paths[row_list[i]] not in self._unreadable]
        taken = self._taken([row_list[i] for i in missing])
        images = None
        if len(taken) == 1 and len(missing) == len(rows):  # one chunk, all of the batch
            ((future, places),) = taken.items()
            if [position for _, position in places] == list(range(len(rows))):
                pixels, why = future.result()  # the batch itself, in order: no copy
                if pixels.shape[0] == len(rows):
                    images, taken = pixels, {}
                    self._keep(rows, pixels, why, store)
        if images is None:
            images = np.zeros((len(rows), *self.image_size, self.channels), "uint8")
        if found.any():
            images[found] = store.images[self._store_rows[rows[found]]]
        for future, places in taken.items():
            pixels, why = future.result()
            mine = [missing[j] for j, _ in places]
            theirs = [position for _, position in places]
            images[mine] = pixels[theirs]
            self._keep(rows[mine], pixels[theirs], [why[t] for t in theirs], store)
        reasons = [None] * len(rows)
        for i in absent if self._unreadable else ():
            reasons[i] = self._unreadable.get(self.paths[row_list[i]])
        return images, reasons

    def _taken(self, rows):
        """The decoding of `rows` (started now where the read-ahead had not): a dict
        future -> `[(index in rows, position in the future's chunk), ...]`."""
        taken, indices = {}, list(range(len(rows)))
        while indices:
            self._decode_soon([rows[j] for j in indices])
            with self._pending_lock:
                pending = [(j, self._pending.pop(rows[j], None)) for j in indices]
            for j, entry in pending:
                if entry is not None:
                    taken.setdefault(entry[0], []).append((j, entry[1]))
            # Rows another thread took meanwhile: decode them again.
            indices = [j for j, entry in pending if entry is None]
        return taken

    def _keep(self, rows, images, reasons, store):
        """Note the files that failed; put the decoded images in the store."""
        failed = [j for j, reason in enumerate(reasons) if reason is not None]
        for j in failed:
            self._unreadable[self.paths[rows[j]]] = reasons[j]
        if store is not None:
            decoded = np.ones(len(rows), bool)
            decoded[failed] = False
            store.write(self._store_rows[rows[decoded]], images[decoded])

    def _substituted(self, rows, images, reasons):
        """Each failed row replaced by the next readable sample and its label."""
        rows = rows.copy()
        for i in [i for i, reason in enumerate(reasons) if reason]:
            self._count_substitution(self.paths[rows[i]])
            rows[i], images[i] = self._next_readable(rows[i])
        return rows, images

    def _next_readable(self, row):
        for step in range(1, self.num_samples):
            candidate = (row + step) % self.num_samples
            images, reasons = self._images(np.array([candidate]))
            if reasons[0] is None:
                return candidate, images[0]
        raise ValueError(
            f"None of the {self.num_samples} images of this ImageFolder can be "
            f"decoded, e.g. {self._described([self.paths[row]])}. Check the files."
        )

    def _decode_soon(self, rows):
        """Start decoding `rows` (those not started yet) in chunks spread over the
        decoding workers; each row's `(future, position)` goes to `_pending`. Decoding
        in the calling thread (`_decodes_here`), the rows are claimed under the lock and
        decoded after it, so that other threads decode other rows meanwhile."""
        here = self._decodes_here()
        with self._pending_lock:
            rows = [row for row in rows if row not in self._pending]
            workers = 1 if here else self.decode_workers
            size = max(1, min(_CHUNK, math.ceil(len(rows) / workers)))
            claimed = []
            for start in range(0, len(rows), size):
                chunk = rows[start : start + size]
                future = Future() if here else self._submit([self.paths[row] for row in chunk])
                self._pending.update((row, (future, i)) for i, row in enumerate(chunk))
                claimed.append((future, chunk))
        if here:
            for future, chunk in claimed:
                _settle(future, self._submit([self.paths[row] for row in chunk]))

    def _submit(self, paths):
        arguments = (paths, self.image_size, self.color_mode)
        if self._decodes_here():
            future = Future()
            try:
                future.set_result(decode_files(*arguments))
            except BaseException as error:  # noqa: BLE001 - the waiting threads get it too
                future.set_exception(error)
            return future
        if self.decoder == "processes":
            processes = _process_pool(self.decode_workers)
            if processes is not None:
                # Absolute paths: the processes keep the working folder they were forked in.
                paths = [os.path.abspath(path) for path in paths]
                return processes.submit(decode_files, paths, *arguments[1:])
        return _thread_pool(self.decode_workers).submit(decode_files, *arguments)

    def _read_ahead(self, index):
        """Start decoding the rows of batch `index` and of the `READ_AHEAD` after it that
        the store does not hold."""
        if self._decodes_here():
            return
        store = self._store.get()
        for ahead in range(index, min(len(self), index + 1 + READ_AHEAD)):
            rows = self.batch_rows(ahead)
            if store is not None:
                rows = rows[~store.found(self._store_rows[rows])]
            self._decode_soon([row for row in rows if self.paths[row] not in self._unreadable])

    def _cancel_read_ahead(self):
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            future.cancel()

    def _cache_policy(self, cache):
        if cache != "auto":
            return cache
        return "memory" if self._fits_in_cache() else "disk"

    def _count_substitution(self, path):
        self.substitutions[path] = self.substitutions.get(path, 0) + 1
        self._epoch_substitutions[path] = self._epoch_substitutions.get(path, 0) + 1

    def _report_substitutions(self):
        counts, self._epoch_substitutions = self._epoch_substitutions, {}
        if set(counts) - self._reported:
            self._reported.update(counts)
            warnings.warn(
                f"{sum(counts.values())} row(s) of this epoch held an image that fails "
                "to decode and were replaced by the next readable sample and its label; "
                f"{len(counts)} file(s): {self._described(sorted(counts))}. "
                "`ImageFolder.substitutions` counts the rows per file (evaluation and "
                "prediction never substitute). Replace or delete the files to silence "
                "this warning.",
                stacklevel=2,
            )

    def _described(self, paths):
        shown = [f"{path!r} ({self._unreadable.get(path, 'unreadable')})" for path in paths]
        more = " ..." if len(paths) > _SHOWN_PATHS else ""
        return ", ".join(shown[:_SHOWN_PATHS]) + more

    def _fits_in_cache(self):
        height, width = self.image_size
        return self.num_samples * height * width * self.channels <= CACHE_BYTES


# Batches whose rows are decoded ahead of the one requested.
READ_AHEAD = 2


def _settle(future, done):
    """Give `future` the outcome of the finished future `done`."""
    if done.exception() is not None:
        future.set_exception(done.exception())
    else:
        future.set_result(done.result())


_CHUNK = 64  # most images a decoding task takes (a bounded reply, however many are asked)
DECODERS = ("auto", "processes", "threads")
_POOLS = {}
_POOLS_LOCK = threading.Lock()


class _StoreSlot:
    """The `ImageStore` of a folder's files, shared with its subsets, made at its first
    use (a pack on disk is named after its files' sizes and times, read then)."""

    def __init__(self, folder):
        self.paths, self.cache, self.cache_dir = folder.paths, folder.cache, folder.cache_dir
        self.image_size, self.color_mode = folder.image_size, folder.color_mode
        self.shape = (*folder.image_size, folder.channels)
        self._made, self._store, self._lock = False, None, threading.Lock()

    def get(self):
        with self._lock:
            if not self._made:
                self._store, self._made = self._new_store(), True
            return self._store

    def _new_store(self):
        if self.cache == "memory":
            return ImageStore.in_memory(len(self.paths), self.shape)
        if self.cache == "disk":
            return DiskCache(self.cache_dir, self.image_size, self.color_mode).open(self.paths)
        return None


def _thread_pool(workers):
    """One thread pool per size, shared by every ImageFolder of this process."""
    with _POOLS_LOCK:
        if ("threads", workers) not in _POOLS:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="condnet-decode")
            _POOLS["threads", workers] = pool
        return _POOLS["threads", workers]


def _process_pool(workers):
    """One pool of decoding processes per size, forked from this process (so they start at
    once, with nothing to import), or None where processes cannot be forked."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    with _POOLS_LOCK:
        if ("processes", workers) not in _POOLS:
            context = multiprocessing.get_context("fork")
            with warnings.catch_warnings():  # fork of a threaded process (3.12+, JAX)
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                pool = ProcessPoolExecutor(
                    workers, mp_context=context, initializer=_exit_with, initargs=(os.getpid(),)
                )
            _POOLS["processes", workers] = pool
        return _POOLS["processes", workers]


def _check_cache(cache):
    legacy = {None: "auto", True: "memory", False: "none"}
    if isinstance(cache, bool) or cache is None:
        return legacy[cache]
    if cache not in CACHE_POLICIES:
        raise ValueError(
            f"`cache` must be one of {list(CACHE_POLICIES)} (or True / False / None). "
            f"Received: cache={cache!r}"
        )
    return cache


def _exit_with(parent):
    """In a decoding process: exit as soon as `parent` is gone (even killed with SIGKILL), so
    that no orphan keeps its memory or the pipes of whoever ran the parent."""

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _check_decoder(decoder):
    if decoder not in DECODERS:
        raise ValueError(
            f"`decoder` must be one of {list(DECODERS)}. Received: decoder={decoder!r}"
        )
    if decoder == "auto":
        return "threads"
    return decoder


def _check_decode_workers(workers):
    if workers == "auto":
        return max(1, min(16, os.cpu_count() or 1))
    if not (is_int(workers) and 1 <= workers <= 256):
        raise ValueError(
            "`decode_workers` must be 'auto' or an int from 1 to 256 (1 decodes in the "
            f"caller's thread). Received: decode_workers={workers!r}"
        )
    return int(workers)


def batch_order(count, shuffle, seed):
    """`(rng, order)` of a batched dataset of `count` samples: the generator of its
    reshuffles and its first order (a permutation when shuffled, else 0..count-1)."""
    rng = np.random.default_rng(seed)
    return rng, rng.permutation(count) if shuffle else np.arange(count)

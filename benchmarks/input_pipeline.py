"""Input pipeline: ImageFolder through Keras's iterator vs tf.data AUTOTUNE vs the decode limit.

    python benchmarks/input_pipeline.py [--backend tensorflow|jax|torch | --all-backends] [--quick]

Side by side in one process, one pass over the same JPEG photos each, uncached:

- `condnet`: `ImageFolder(cache="none", dtype="uint8")` as `condnet train` feeds
  it (default `decode_workers` and `decoder`: one thread per core, two batches
  read ahead; JPEGs by libjpeg-turbo), handed over as `fit_inputs` hands it to
  `fit` (a `tf.data` pipeline calling the folder by batch index on TensorFlow,
  the folder itself elsewhere) and stepped through the epoch iterator `fit`
  makes on this backend (`TFEpochIterator`: a known number of steps, a new
  `tf.data` iterator each epoch, never read to its end; `JAXEpochIterator`; the
  DataLoader of `TorchEpochIterator`), made once and iterated epoch after epoch as
  `fit` does (the warm-up call of each pipeline is its first epoch; the medians
  are later epochs). Reading a `tf.data` iterator to its end, as an earlier
  version of this script did, cost about 0.2 s at the end of every other epoch
  there, which `fit` never pays.
- `condnet, processes`: the same with `decoder="processes"` (one forked process
  per core; the pixels come back through a pipe).
- `condnet, 1 thread`: the same with `decode_workers=1` (how it decoded before).
- `tf.data`: `list_files -> read_file -> decode_jpeg -> resize -> batch ->
  prefetch`, `num_parallel_calls=AUTOTUNE`, read to its end by a Python loop.
- `tf.data in fit`: the same pipeline stepped through the epoch iterator `fit`
  makes on this backend, as `condnet` is: what a user's `model.fit(dataset)`
  reads. The targets compare `condnet` with it (both as `fit` reads them); the
  plain loop is shown beside.
- `decode limit`: `decode_image` (libjpeg-turbo at a reduced scale) in one
  process per core, no batching, nothing sent back but the shape: what the
  machine can decode this way.
- `Pillow limit`: the same with Pillow's own JPEG draft decoding (`Image.draft`),
  the decode limit as the issue measured it.

Three sets: 4,000 of photos20's real photos (96 px short side) read at 96 px, and
370 of them upscaled to 480 px and to 1600 px short side (JPEG quality 90; photos20
holds no large photos; 1600 px is a phone photo's size, where libjpeg-turbo decodes
at 1/8 scale) read at 160 px. Then the cache: `--cache-images` photos of 160 px
(20,000 by default: photos20's 8,000 training photos upscaled, mirrored and turned;
1.5 GB decoded, more than `CACHE_BYTES`, so the default policy keeps them on disk),
epoch 1 (decode and write the cache) against the median of epochs 2-4 (read the
cache), through Keras's iterator.
Replaces this backend's section of benchmarks/results/input_pipeline.md and writes
benchmarks/results/input_pipeline-BACKEND.json.
"""

import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import common
import data_sets

os.environ["KERAS_BACKEND"] = common.choose_backend()

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from condnet.data.decode import decode_image  # noqa: E402
from condnet.data.image_folder import ImageFolder  # noqa: E402
from condnet.data.scan import scan_directory  # noqa: E402

BATCH = 32
DOGS = {
    "australian_terrier", "beagle", "border_terrier", "dingo", "english_foxhound",
    "english_springer", "golden_retriever", "old_english_sheepdog", "rhodesian_ridgeback",
    "samoyed", "shih_tzu",
}  # fmt: skip


def scanned(root):
    """`scan_directory` of a flat photos20 folder, dogs and things as the groups."""
    classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    groups = {
        "dogs": [c for c in classes if c in DOGS],
        "things": [c for c in classes if c not in DOGS],
    }
    return scan_directory(root, {g: c for g, c in groups.items() if c})


# === The pipelines ===


class KerasEpochs:
    """Epochs of `data` (a folder, or a `tf.data` dataset as a user hands it to `fit`)
    through the epoch iterator Keras's `fit` makes for this backend (`TFEpochIterator`,
    `JAXEpochIterator`, `TorchEpochIterator`): made once, then each call is one epoch of
    exactly as many steps as `fit` takes, one batch a step, with `fit`'s own
    end-of-epoch calls (the adapter's and `fit_inputs`'s callbacks)."""

    def __init__(self, data):
        from condnet.training.distribute import fit_inputs

        if hasattr(data, "element_spec"):  # a tf.data dataset: `fit` takes it as it is
            x, self.epoch_ends = data, []
        else:  # what `condnet train` hands `fit`
            x, _, self.epoch_ends = fit_inputs(data, None)
        self.iterator, self.pull = _epoch_iterator(x), _puller()

    def __call__(self):
        count = 0
        for _, _, data in self.iterator:
            # TensorFlow's and JAX's train functions draw `next(iterator)` themselves
            # (TensorFlow's inside its `tf.function`, as `pull` does); torch's gets the
            # step's batches in a list.
            count += int(data[0][0].shape[0]) if isinstance(data, list) else self.pull(data)
        for callback in self.epoch_ends:
            callback.on_epoch_end(0)
        return count


def _puller():
    """`iterator -> rows of its next batch`, drawn as this backend's train step draws it:
    on TensorFlow inside a `tf.function` (`next` on a distributed iterator in Python
    costs several milliseconds a batch, which `fit` never pays)."""
    if keras.backend.backend() != "tensorflow":
        return lambda iterator: int(next(iterator)[0].shape[0])
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def pull(iterator):
        return tf.shape(next(iterator)[0])[0]

    return lambda iterator: int(pull(iterator))


def _epoch_iterator(x):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        from keras.src.backend.tensorflow.trainer import TFEpochIterator

        return TFEpochIterator(x=x, shuffle=False, distribute_strategy=tf.distribute.get_strategy())
    if backend == "jax":
        from keras.src.backend.jax.trainer import JAXEpochIterator

        return JAXEpochIterator(x=x, shuffle=False)
    from keras.src.backend.torch.trainer import TorchEpochIterator

    return TorchEpochIterator(x=x, shuffle=False)


def keras_pass(folder):
    """One epoch of `folder` through a new Keras data adapter (the setup included)."""
    return KerasEpochs(folder)()


def tf_data_pipeline(paths, side):
    import tensorflow as tf

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize(image, (side, side))

    dataset = tf.data.Dataset.from_tensor_slices(paths)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(BATCH).prefetch(tf.data.AUTOTUNE)


def tf_data_pass(paths, side):
    return sum(int(batch.shape[0]) for batch in tf_data_pipeline(paths, side))


def _decode(arguments):
    path, side = arguments
    return decode_image(path, side).shape[0]


def _pillow_decode(arguments):
    path, side = arguments
    with Image.open(path) as image:
        image.draft("RGB", (side, side))
        return np.asarray(image.convert("RGB").resize((side, side))).shape[0]


def decode_limit_pass(pool, paths, side, decode=_decode):
    return len(pool.map(decode, [(p, side) for p in paths], chunksize=16))


# === Measures ===


def pipelines(root, side, pool):
    hierarchy, paths, labels = scanned(root)
    folder = dict(
        image_size=side, batch_size=BATCH, cache="none", shuffle=True, seed=0, dtype="uint8"
    )
    fast = ImageFolder(paths, labels, hierarchy, **folder)
    processes = ImageFolder(paths, labels, hierarchy, decoder="processes", **folder)
    serial = ImageFolder(paths, labels, hierarchy, decode_workers=1, **folder)
    return len(paths), {
        "condnet": KerasEpochs(fast),
        "condnet, processes": KerasEpochs(processes),
        "condnet, 1 thread": KerasEpochs(serial),
        "tf.data": lambda: tf_data_pass(paths, side),
        "tf.data in fit": KerasEpochs(tf_data_pipeline(paths, side)),
        "decode limit": lambda: decode_limit_pass(pool, paths, side),
        "Pillow limit": lambda: decode_limit_pass(pool, paths, side, _pillow_decode),
    }


def measure(name, root, side, pool, repeats):
    count, functions = pipelines(root, side, pool)
    timings = common.time_side_by_side(functions, repeats)
    speed = {k: count / v["median"] for k, v in timings.items()}
    print(name, {k: round(v) for k, v in speed.items()}, flush=True)
    return {"set": name, "images": count, "side": side, "images_per_second": speed}


def many_photos(folder, count, side, pool):
    """`count` JPEGs of `side` px (quality 90) from photos20's training photos: each photo
    upscaled, then mirrored and turned upside down for more, in class folders."""
    source = data_sets.extract_photos(folder / "source", 8000)
    jobs = [
        (path, folder / "many" / path.parent.name / f"{variant}-{path.name}", side, variant)
        for variant in range(3)
        for path in sorted(source.rglob("*.jpg"))
    ][:count]
    pool.map(_variant, jobs, chunksize=64)
    return folder / "many"


def _variant(job):
    path, out, side, variant = job
    image = Image.open(path).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    if variant:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if variant == 2:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, quality=90)


def disk_cache(root, side, cache_dir, later=3):
    """Seconds of epoch 1 (decode, write the cache) and of the epochs after it (read it;
    the median of `later` epochs), through Keras's iterator, with the default cache
    policy; the files those later epochs decoded (none, if they read the cache only)."""
    hierarchy, paths, labels = scanned(root)
    options = dict(image_size=side, batch_size=BATCH, cache_dir=cache_dir)
    folder = ImageFolder(paths, labels, hierarchy, shuffle=True, seed=0, dtype="uint8", **options)
    decoded, submit = [], folder._submit
    folder._submit = lambda files: decoded.extend(files) or submit(files)
    epochs, seconds, counts = KerasEpochs(folder), [], []
    for _ in range(1 + later):
        start = time.perf_counter()
        epochs()
        seconds.append(time.perf_counter() - start)
        counts.append(len(decoded))
    return {
        "images": len(paths),
        "side": side,
        "policy": folder.cache,
        "epoch_1_s": seconds[0],
        "epoch_2_s": statistics.median(seconds[1:]),
        "later_epochs_s": seconds[1:],
        "decoded_in_epoch_2": counts[-1] - counts[0],
    }


def main():
    args = common.parse_args(__doc__, more=_options)
    backend = keras.backend.backend()
    archive = data_sets.DATA_SETS["photos20"]["archive"]
    if not archive.exists():
        print(f"skipped: {archive} is absent (the shared data folder)")
        return
    count, large, repeats = (512, 185, 2) if args.quick else (4000, 370, 7)
    with tempfile.TemporaryDirectory(prefix="condnet-input-") as scratch:
        scratch = Path(scratch)
        small = data_sets.extract_photos(scratch / "small", count)
        few = data_sets.extract_photos(scratch / "few", large)
        big = data_sets.upscaled(few, scratch / "large", 480)
        huge = data_sets.upscaled(few, scratch / "huge", 1600)
        with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
            rows = [
                measure("photos20, 96 px, read at 96", small, 96, pool, repeats),
                measure("photos20 upscaled to 480 px, read at 160", big, 160, pool, repeats),
                measure("photos20 upscaled to 1600 px, read at 160", huge, 160, pool, repeats),
            ]
            many = many_photos(scratch, 2000 if args.quick else args.cache_images, 160, pool)
        cache = disk_cache(many, 160, scratch / "cache")
    _write(args, backend, rows, cache)


def _options(parser):
    parser.add_argument(
        "--cache-images",
        type=int,
        default=20000,
        help="photos of 160 px in the disk-cache measure (default: 20000)",
    )


def _write(args, backend, rows, cache):
    table = common.markdown_table(
        ["set", *PIPELINES, *(f"/ {k}" for k in RATIOS)],
        [
            [
                f"{r['set']} ({r['images']} images)",
                *(f"{r['images_per_second'][k]:.0f}" for k in PIPELINES),
                *(f"{_ratio(r, k):.2f}" for k in RATIOS),
            ]
            for r in rows
        ],
    )
    ratio = cache["epoch_1_s"] / cache["epoch_2_s"]
    cached = (
        f"Cache, {cache['images']} photos of {cache['side']} px read at {cache['side']} px "
        f'through Keras\'s iterator, default policy (`cache="auto"` chose '
        f"`{cache['policy']}`): epoch 1 (decode + write) {cache['epoch_1_s']:.2f} s, "
        f"epochs 2-{1 + len(cache['later_epochs_s'])} (read the cache; "
        f"{cache['decoded_in_epoch_2']} files decoded) "
        f"{', '.join(f'{s:.2f}' for s in cache['later_epochs_s'])} s, median "
        f"{cache['epoch_2_s']:.2f} s: {ratio:.1f}x."
    )
    body = "\n".join(
        [*common.machine(backend), "", "images/s, one pass each:", "", table, "", cached, ""]
    )
    variant = "quick" if args.quick else "full"
    document = {"rows": rows, "disk_cache": cache}
    heading = f"Input pipeline: {backend}"
    common.write_results("input_pipeline", variant, document, heading, body, args.results, backend)
    print(table)
    print(cached)


def _ratio(row, other):
    speeds = row["images_per_second"]
    return speeds["condnet"] / speeds[other]


RATIOS = ("tf.data in fit", "tf.data", "decode limit", "Pillow limit")  # condnet / each
PIPELINES = (
    "condnet",
    "condnet, processes",
    "condnet, 1 thread",
    "tf.data",
    "tf.data in fit",
    "decode limit",
    "Pillow limit",
)

if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

"""On one GPU: training in float32 and mixed precision, the input pipeline, routed predict.

    python benchmarks/gpu.py [--backend tensorflow|jax|torch | --all-backends] [--quick]
                             [--batch-size 32] [--precisions float32 mixed_bfloat16 ...]
    python benchmarks/gpu.py --smoke --results /tmp/gpu_smoke.md   # a few steps: does it run?

Meant for a machine with one GPU; it runs on a CPU too and says so (the
device is in the heading; a CPU, which emulates float16, leaves mixed_float16
out unless asked). condnet's default image model (`build_image_model` as
`condnet train` builds it with its default options: small_cnn trunk, branch
placement, the light augmentation, soft routing), 10 CIFAR-10 classes in 2
groups, at 32 px and at 160 px. Side by side in one process:

1. Training images/s in float32, mixed_bfloat16 and mixed_float16: one model
   per precision (same seed), `model.fit` on synthetic uint8 images from numpy,
   one epoch of a fixed number of steps per call; a warm-up epoch (tracing,
   compiling), then interleaved timed epochs, timed from epoch begin to epoch
   end (`models.EpochTimer`); the median.
2. The input pipeline: `ImageFolder` (uncached, default decode workers, uint8
   batches, as `condnet train` reads a folder too large to cache) over JPEGs,
   epochs through Keras's data adapter for the backend as `fit` runs them
   (`input_pipeline.KerasEpochs`), against the fastest training images/s at the
   same image size: >= 1 means decoding keeps the training step fed. The JPEGs
   are photos20's 96 px photos for 32 px, and the same photos upscaled to
   480 px (3x the image size) for 160 px; synthesized JPEGs without photos20.
3. Predict: the model trained in step 1 at the device's preferred precision
   (`resolve_precision("auto")`), its gate bias set so that routing splits
   the images evenly, with `routing="hard"` (`model.predict`, which runs only
   the chosen expert of each row) against its flat baseline of equal MACs
   (`condnet.evaluation.baseline.flat_baseline`), at batch 32, 256 and 1,024.

Replaces the section "GPU: BACKEND on DEVICE" of benchmarks/results/gpu.md and
writes the key DEVICE[-quick|-smoke] of benchmarks/results/gpu-BACKEND.json.
"""

import os
import statistics
import tempfile
from pathlib import Path

import common
import data_sets

# Pick the backend before Keras is imported (--all-backends reruns this script per backend).
os.environ["KERAS_BACKEND"] = common.choose_backend()

import keras  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402
from input_pipeline import KerasEpochs  # noqa: E402
from PIL import Image  # noqa: E402

import condnet  # noqa: E402
from condnet.data.image_folder import ImageFolder  # noqa: E402
from condnet.evaluation.baseline import flat_baseline  # noqa: E402
from condnet.evaluation.cost import count_macs, routed_macs  # noqa: E402
from condnet.models.precision import resolve_precision  # noqa: E402
from condnet.vision.augmentation import make_augmentation  # noqa: E402
from condnet.vision.image_model import build_image_model  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# A CPU emulates float16: mixed_float16 trained about 60x (32 px) and 200x (112 px) slower
# than float32 on TensorFlow (a 2-core Xeon), so a CPU run leaves it out unless asked.
CPU_PRECISIONS = ("float32", "mixed_bfloat16")
HIERARCHY = condnet.Hierarchy(models.HIERARCHIES[2])  # 10 classes, 2 groups
SEED = 1337  # condnet train's default
FULL = {
    "image_sizes": (32, 160),
    "steps": 100,
    "repeats": 5,
    "photos": 1024,
    "predict_batch_sizes": (32, 256, 1024),
    "predict_images": 2048,
}
QUICK = {**FULL, "steps": 20, "repeats": 3, "photos": 512}
SMOKE = {
    "image_sizes": (32, 112),
    "steps": 2,
    "repeats": 1,
    "photos": 40,
    "predict_batch_sizes": (8, 32),
    "predict_images": 64,
}


def main():
    args = common.parse_args(__doc__, more=_options)
    settings = SMOKE if args.smoke else QUICK if args.quick else FULL
    backend, device, auto = keras.backend.backend(), device_name(), resolve_precision("auto")
    precisions = args.precisions or (CPU_PRECISIONS if device == "CPU" else PRECISIONS)
    batch_size = args.batch_size or (8 if args.smoke else 32)
    settings = {**settings, "batch_size": batch_size, "precisions": precisions}
    keep = auto if auto in precisions else precisions[0]  # the precision predict runs in
    print(f"backend {backend} on {device}; auto precision: {auto}", flush=True)
    with tempfile.TemporaryDirectory(prefix="condnet-gpu-") as scratch:
        inputs = [input_speed(Path(scratch), s, settings) for s in settings["image_sizes"]]
    training, predicting = [], []
    for image_size in settings["image_sizes"]:
        row, model = training_speeds(image_size, settings, keep)
        training.append(row)
        predicting += predict_speeds(model, image_size, settings)
    results = {"backend": backend, "device": device, "auto_precision": auto}
    results.update(settings=settings, training=training, input=inputs)
    results.update(predict_precision=keep, predict=predicting)
    write(args, results)


def _options(parser):
    parser.add_argument("--smoke", action="store_true", help="a few steps of everything")
    parser.add_argument(
        "--batch-size", type=int, help="training and input batch size (default 32, condnet's)"
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        help=f"to train in (default: all on a GPU, {' '.join(CPU_PRECISIONS)} on a CPU)",
    )


def device_name():
    """The first GPU the backend computes on (with the count if several), else "CPU"."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        names = [tf.config.experimental.get_device_details(g).get("device_name") for g in gpus]
    elif backend == "jax":
        import jax

        names = [d.device_kind for d in jax.devices() if d.platform != "cpu"]
    else:
        import torch

        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if not names:
        return "CPU"
    return (names[0] or "GPU") + (f" (1 of {len(names)})" if len(names) > 1 else "")


# === 1. Training ===


def build(image_size, precision):
    """The model `condnet train` builds with its default options (`run_config._build`)."""
    keras.utils.set_random_seed(SEED)
    model = build_image_model(
        HIERARCHY,
        image_size=image_size,
        augmentation=make_augmentation("auto", image_size=image_size, seed=SEED),
        routing="soft",
        expert_dropout=0.3,
        seed=SEED,
        precision=precision,
    )
    model.compile()  # Adam; Keras adds loss scaling under mixed_float16
    return model


def training_speeds(image_size, settings, keep):
    """Training images/s of each precision at `image_size`, and the model trained in `keep`."""
    batch_size, repeats = settings["batch_size"], settings["repeats"]
    rng = np.random.default_rng(0)
    shape = (settings["steps"] * batch_size, image_size, image_size, 3)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    y = rng.integers(0, HIERARCHY.num_classes, len(x)).astype("int32")
    precisions = settings["precisions"]
    trained = {p: build(image_size, p) for p in precisions}
    timers = {p: models.EpochTimer() for p in precisions}

    def epoch(precision):
        fit = dict(batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
        return lambda: trained[precision].fit(x, y, callbacks=[timers[precision]], **fit)

    common.time_side_by_side({p: epoch(p) for p in precisions}, repeats)
    row = {"image_size": image_size, "batch_size": batch_size, "images": len(x)}
    for p, timer in timers.items():
        row[p] = len(x) / statistics.median(timer.seconds[1:])
        row[f"{p}_first_epoch_s"] = timer.seconds[0]
    print(f"training at {image_size} px: {_rounded(row)}", flush=True)
    return row, trained[keep]


# === 2. Input pipeline ===


def input_speed(scratch, image_size, settings):
    """images/s of `ImageFolder` through Keras's data adapter, one uncached pass per call."""
    root, source = jpeg_folder(scratch, image_size, settings["photos"])
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    labels = np.arange(len(paths)) % HIERARCHY.num_classes
    folder = ImageFolder(
        paths, labels, HIERARCHY, image_size=image_size, batch_size=settings["batch_size"],
        shuffle=True, seed=0, cache="none", dtype="uint8",
    )  # fmt: skip
    timing = common.time_side_by_side({"input": KerasEpochs(folder)}, settings["repeats"])
    speed = len(paths) / timing["input"]["median"]
    print(f"input at {image_size} px: {speed:.0f} images/s ({source})", flush=True)
    return {"image_size": image_size, "images": len(paths), "source": source, "input": speed}


def jpeg_folder(scratch, image_size, count):
    """JPEGs to read at `image_size`: photos20's 96 px photos up to 96 px, else about a
    third as many upscaled to 3x `image_size`; synthesized without photos20."""
    side = 96 if image_size <= 96 else 3 * image_size
    count = count if side == 96 else max(count // 3, 20)
    target = scratch / f"{image_size}px"
    if not data_sets.DATA_SETS["photos20"]["archive"].exists():
        return synthesized(target, count, side), f"synthesized JPEGs of {side} px (no photos20)"
    photos = data_sets.extract_photos(scratch / f"{image_size}px-photos", count)
    if side == 96:
        return photos, "photos20, 96 px short side"
    return data_sets.upscaled(photos, target, side), f"photos20 upscaled to {side} px short side"


def synthesized(folder, count, side, seed=0):
    """`count` smooth random JPEGs of `side` px (quality 90) in 10 class folders."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)
        path = folder / f"class_{i % 10}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
    return folder


# === 3. Routed predict ===


def predict_speeds(model, image_size, settings):
    """images/s of hard-routed predict and of the flat baseline, per batch size."""
    shape = (image_size, image_size, 3)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (settings["predict_images"], *shape), dtype=np.uint8)
    features = model.trunk.predict(x, batch_size=256, verbose=0)[model.gate_tap]
    _, shares = models.balance_gate(model.gate, features)
    model.routing = "hard"
    flat = flat_baseline(model, shape)
    macs = {"routed_macs": routed_macs(model, shape)["routed"], "flat_macs": count_macs(flat)}
    rows = []
    for batch_size in settings["predict_batch_sizes"]:
        functions = {
            "routed": lambda b=batch_size: model.predict(x, batch_size=b, verbose=0),
            "flat": lambda b=batch_size: flat.predict(x, batch_size=b, verbose=0),
        }
        timings = common.time_side_by_side(functions, settings["repeats"])
        speeds = {name: len(x) / t["median"] for name, t in timings.items()}
        row = {"image_size": image_size, "batch_size": batch_size, **speeds, **macs}
        rows.append({**row, "shares": shares.tolist()})
        print(f"predict at {image_size} px: {_rounded(row)}", flush=True)
    return rows


def _rounded(row):
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


# === Report ===


def write(args, results):
    """The markdown section and the JSON file."""
    backend, device = results["backend"], results["device"]
    body = "\n".join([*common.machine(backend), *setup(results), "", *tables(results)])
    print(body)
    size = " (smoke)" if args.smoke else " (quick)" if args.quick else ""
    heading = f"GPU: {backend} on {device}{size}"
    variant = device + ("-smoke" if args.smoke else "-quick" if args.quick else "")
    written = common.write_results("gpu", variant, results, heading, body, args.results, backend)
    print(f"\nwrote section '{heading}' of {written}")
    print(f"wrote {common.results_file('gpu', backend)}")


def setup(results):
    settings = results["settings"]
    cpu = " (no GPU: this ran on the CPU)" if results["device"] == "CPU" else ""
    return [
        f"- device: {results['device']}{cpu}; `resolve_precision('auto')`: "
        f"{results['auto_precision']}",
        f"- model: `build_image_model` with `condnet train`'s defaults, {HIERARCHY.num_classes} "
        f"classes in {HIERARCHY.num_groups} groups, soft routing, `compile()` (Adam)",
        f"- training: batch {settings['batch_size']}, {settings['steps']} steps per epoch on "
        f"random uint8 images, 1 warm-up epoch, median of {settings['repeats']} interleaved "
        "epochs",
        f"- predict: {settings['predict_images']} random uint8 images, median of "
        f"{settings['repeats']} interleaved calls after one warm-up call each",
    ]


def tables(results):
    precisions = results["settings"]["precisions"]
    return [
        "### Training (images/s)",
        "",
        training_table(results["training"], precisions),
        "",
        "### Input pipeline against the training step (images/s)",
        "",
        input_table(results["input"], results["training"], precisions),
        "",
        "`ImageFolder(cache='none', dtype='uint8')`, default decode workers, one pass "
        "through Keras's data adapter. input / training >= 1: decoding keeps up with the "
        "fastest precision's training step (measured apart, not while training).",
        "",
        f"### Predict, {results['predict_precision']} (images/s)",
        "",
        predict_table(results["predict"]),
        "",
        "routed: `model.predict` with `routing='hard'` (only the chosen expert of each row "
        "runs; the gate's bias set so that routing splits the images evenly). flat: "
        "`flat_baseline`, a flat CNN of at most the routed MACs.",
    ]


def training_table(rows, precisions):
    """images/s per precision, each mixed one's speedup over float32, the warm-up epochs."""
    mixed = [p for p in precisions if p != "float32"] if "float32" in precisions else []
    lines = [
        [
            f"{r['image_size']} px",
            r["batch_size"],
            *(f"{r[p]:.0f}" for p in precisions),
            *(f"{r[p] / r['float32']:.2f}x" for p in mixed),
            " / ".join(f"{r[f'{p}_first_epoch_s']:.1f}" for p in precisions),
        ]
        for r in rows
    ]
    speedups = [f"{p.removeprefix('mixed_')} / float32" for p in mixed]
    headers = ["image size", "batch", *precisions, *speedups, "1st epoch (s, each)"]
    return common.markdown_table(headers, lines)


def input_table(inputs, training, precisions):
    lines = []
    for row, trained in zip(inputs, training):
        fastest = max(precisions, key=lambda p: trained[p])
        lines.append(
            [
                f"{row['image_size']} px",
                f"{row['images']} {row['source']}",
                f"{row['input']:.0f}",
                f"{trained[fastest]:.0f} ({fastest})",
                f"{row['input'] / trained[fastest]:.2f}",
            ]
        )
    headers = ["image size", "JPEGs", "input", "training, fastest", "input / training"]
    return common.markdown_table(headers, lines)


def predict_table(rows):
    lines = [
        [
            f"{r['image_size']} px",
            r["batch_size"],
            f"{r['routed']:.0f}",
            f"{r['flat']:.0f}",
            f"{r['routed'] / r['flat']:.2f}",
            f"{r['routed_macs'] / 1e6:.1f}M / {r['flat_macs'] / 1e6:.1f}M",
            " ".join(f"{s:.2f}" for s in r["shares"]),
        ]
        for r in rows
    ]
    headers = ["image size", "batch", "routed", "flat", "routed / flat", "MACs", "route shares"]
    return common.markdown_table(headers, lines)


if __name__ == "__main__":
    main()

"""Does decoding JPEGs at a reduced scale change the pixels, or the accuracy?

    python benchmarks/draft.py [--seeds 3] [--epochs 10] [--train-per-class 100]

`decode_image` decodes a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, as
Pillow's `draft`) when the image size asked is that much smaller, then resizes
(bilinear). Against the full decode resized the same way, on photos20's photos:

1. pixels: mean absolute difference (0-255) and PSNR, per read size, on the
   96 px photos and on the same photos upscaled to 480 px;
2. accuracy: the plain Keras CNN (`defaults.plain_cnn`) trained side by side on
   the two decodings of the same photos (96 px read at 48 px: 1/2 scale), the same
   seed, `--epochs` epochs, `--seeds` seeds, scored on the test photos decoded the
   same way.

Replaces the "Reduced-scale JPEG decoding" section of benchmarks/results/draft.md and
writes benchmarks/results/draft-<backend>.json.
"""

import os
import statistics
import tempfile
from pathlib import Path

import common
import data_sets

os.environ["KERAS_BACKEND"] = common.choose_backend()

import keras  # noqa: E402
import numpy as np  # noqa: E402
from defaults import plain_cnn  # noqa: E402
from PIL import Image  # noqa: E402

from condnet.data.decode import decode_image  # noqa: E402


def full_decode(path, side):
    """The whole JPEG decoded, then resized as `decode_image` resizes."""
    with Image.open(path) as image:
        image = image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
        return np.asarray(image, "uint8")


def pixel_rows(paths, sides, name):
    rows = []
    for side in sides:
        differences = np.stack(
            [
                np.abs(decode_image(p, side).astype(float) - full_decode(p, side)).mean()
                for p in paths
            ]
        )
        errors = [
            np.mean((decode_image(p, side).astype(float) - full_decode(p, side)) ** 2)
            for p in paths
        ]
        psnr = 10 * np.log10(255**2 / max(np.mean(errors), 1e-12))
        rows.append({"set": name, "side": side, "mean_abs": differences.mean(), "psnr": psnr})
        print(rows[-1], flush=True)
    return rows


def load(root, hierarchy, per_class, side, decode):
    images, labels = [], []
    for label, name in enumerate(hierarchy.classes):
        for path in sorted((root / name).iterdir())[:per_class]:
            images.append(decode(path, side))
            labels.append(label)
    return np.stack(images).astype("float32"), np.asarray(labels, "int32")


def accuracy_rows(root, hierarchy, args):
    rows = []
    for seed in range(args.seeds):
        for name, decode in (("reduced scale", decode_image), ("full decode", full_decode)):
            train = load(root / "train", hierarchy, args.train_per_class, 48, decode)
            test = load(root / "test", hierarchy, args.test_per_class, 48, decode)
            keras.utils.set_random_seed(seed)
            model = plain_cnn(48, hierarchy.num_classes)
            model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
            model.fit(*train, epochs=args.epochs, batch_size=32, verbose=0)
            accuracy = float(np.mean(model.predict(test[0], verbose=0).argmax(1) == test[1]))
            rows.append({"decoding": name, "seed": seed, "accuracy": accuracy})
            print(rows[-1], flush=True)
    return rows


def main():
    args = common.parse_args(__doc__, more=_options)
    archive = data_sets.DATA_SETS["photos20"]["archive"]
    if not archive.is_file():
        print(f"skipped: {archive} is absent (the shared data folder)")
        return
    hierarchy = data_sets.hierarchy("photos20")
    root = data_sets.extract("photos20", Path("/tmp/condnet-benchmark-data"))
    photos = [p for c in hierarchy.classes for p in sorted((root / "train" / c).iterdir())[:10]]
    with tempfile.TemporaryDirectory(prefix="condnet-draft-") as scratch:
        source = Path(scratch) / "source"
        for path in photos:
            (source / path.parent.name).mkdir(parents=True, exist_ok=True)
            (source / path.parent.name / path.name).write_bytes(path.read_bytes())
        large = sorted(data_sets.upscaled(source, Path(scratch) / "large", 480).rglob("*.jpg"))
        pixels = pixel_rows(photos, (48, 32, 24), "photos20 (96 px)")
        pixels += pixel_rows(large, (224, 160, 96), "photos20 upscaled to 480 px")
    accuracy = accuracy_rows(root, hierarchy, args)
    _write(args, pixels, accuracy)


def _options(parser):
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=50)


def _write(args, pixels, accuracy):
    pixel_table = common.markdown_table(
        ["photos", "read at", "mean abs. difference (0-255)", "PSNR (dB)"],
        [[r["set"], f"{r['side']} px", f"{r['mean_abs']:.2f}", f"{r['psnr']:.1f}"] for r in pixels],
    )
    summary = []
    for name in ("reduced scale", "full decode"):
        values = [r["accuracy"] for r in accuracy if r["decoding"] == name]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append([name, f"{statistics.mean(values):.4f} ± {spread:.4f}", len(values)])
    accuracy_table = common.markdown_table(["decoding", "test accuracy", "seeds"], summary)
    body = "\n".join(
        [
            *common.machine(os.environ["KERAS_BACKEND"]),
            "",
            "Pixels: `decode_image` (reduced-scale JPEG decoding) against the whole image "
            "decoded and resized the same way, 200 photos of photos20:",
            "",
            pixel_table,
            "",
            f"Accuracy: the plain CNN on photos20 read at 48 px from 96 px photos (1/2 "
            f"scale), {args.train_per_class} training and {args.test_per_class} test photos "
            f"per class, {args.epochs} epochs (no early stopping: on so few photos the "
            "validation loss of a BatchNorm CNN lags for several epochs), the same seeds for "
            "both decodings:",
            "",
            accuracy_table,
            "",
        ]
    )
    variant = "quick" if args.quick else "full"
    document = {"pixels": pixels, "accuracy": accuracy}
    common.write_results(
        "draft", variant, document, "Reduced-scale JPEG decoding", body, args.results
    )
    print(body)


if __name__ == "__main__":
    main()

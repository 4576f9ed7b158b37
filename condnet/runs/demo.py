"""`condnet demo`: the whole workflow on the embedded shapes data set."""

import sys
import time
from pathlib import Path

from condnet.data.demo_data import SHAPES, make_shapes_dataset
from condnet.runs.claim import check_foreign
from condnet.runs.outputs import check_output, mark

DEMO_IMAGE_SIZE = 48
DEMO_FILTERS = (16, 32, 64, 128)
VALIDATION_SHARE = 0.2  # the recipe's default validation_split
# The demo's estimate: a few training steps of the demo's model are timed on this
# machine, then scaled. Measured once on a 2-core CPU (TensorFlow, the defaults): the
# steps took 3.3 ms per image, the whole demo after drawing (model and flat baseline,
# each epoch with its validation pass and input pipeline, scoring, report) 143 s, 2.5
# times 3.3 ms x 1,440 training images x 12 epochs; drawing took 1.1 ms per image.
TIMED_STEPS = 3
WHOLE_RUN_FACTOR = 2.5
SECONDS_PER_DRAWN_IMAGE = 0.0011


def run_demo(
    out,
    epochs=12,
    samples_per_class=300,
    test_samples_per_class=100,
    verbose="auto",
    data_only=False,
    **options,
):
    """Generate the shapes data (once), train on it, evaluate on its test split.

    Writes `out/data/{train,test}/<group>/<class>/*.png` and the run in
    `out/run` (replaced on each call), then prints the test metrics.
    `data_only=True` writes the data and stops there (no training; returns
    None). Before training it prints how long it expects to take on this
    machine (`estimate_seconds`). `options` are `TrainingOptions` fields (e.g.
    `routing="hard"`) beside the demo's image size and filters. Returns the
    test metrics.
    """
    out = Path(out)
    data = out / "data"
    check_output(out)  # not inside a run or around another's data
    if out.is_dir():  # a new folder is created below
        check_foreign(out, "demo")
    options = {"image_size": DEMO_IMAGE_SIZE, "filters": DEMO_FILTERS, **options}
    if not data_only:
        drawn = 0 if (data / "train").is_dir() else samples_per_class + test_samples_per_class
        seconds = estimate_seconds(samples_per_class, epochs, drawn, options.get("routing"))
        print(expected_time_line(seconds, epochs, samples_per_class), file=sys.stderr, flush=True)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "demo", ["data", "run"])
    _draw(data, samples_per_class, test_samples_per_class)
    if data_only:
        print(f"Data written to {data / 'train'} and {data / 'test'} (--data-only: no training).")
        return None
    return _train_and_score(out, data, epochs, verbose, options, started)


def _draw(data, samples_per_class, test_samples_per_class):
    if (data / "train").is_dir():
        return
    print(f"Drawing the shapes data set into {data} ...", file=sys.stderr, flush=True)
    make_shapes_dataset(
        data,
        samples_per_class=samples_per_class,
        image_size=DEMO_IMAGE_SIZE,
        seed=0,
        test_samples_per_class=test_samples_per_class,
    )


def _train_and_score(out, data, epochs, verbose, options, started):
    from condnet.evaluation.report import summary_table, summary_title
    from condnet.runs.recipe import train
    from condnet.runs.run_dir import evaluate_run

    train(data / "train", out / "run", epochs=epochs, overwrite=True, verbose=verbose, **options)
    scoring = time.perf_counter()
    metrics = evaluate_run(out / "run", data / "test", report_dir=out / "run" / "test-report")
    now = time.perf_counter()
    print(
        f"\nThe test set scored in {now - scoring:.0f} s (the whole demo, data and training "
        f"included, took {now - started:.0f} s)."
    )
    print(summary_table(metrics, summary_title(metrics, "Test set")))
    print(
        f"Report: {out / 'run' / 'report.md'} (validation), "
        f"{out / 'run' / 'test-report' / 'report.md'} (test)"
    )
    return metrics


# === The time it will take ===


def estimate_seconds(samples_per_class, epochs, drawn_per_class, routing=None):
    """Seconds the demo is expected to take here: `seconds_per_image` measured now, scaled
    by `WHOLE_RUN_FACTOR` to every epoch of the model and of the flat baseline, plus the
    drawing of `drawn_per_class` images per class (0 when the data exists)."""
    classes = sum(len(names) for names in SHAPES.values())
    training_images = round(classes * samples_per_class * (1 - VALIDATION_SHARE))
    training = seconds_per_image(routing) * training_images * epochs * WHOLE_RUN_FACTOR
    return training + classes * drawn_per_class * SECONDS_PER_DRAWN_IMAGE


def seconds_per_image(routing=None, batch_size=32):
    """Seconds one training image costs the demo's model on this machine: `TIMED_STEPS`
    steps on a batch of random images, timed after one step that compiles."""
    import numpy as np

    from condnet.hierarchy import Hierarchy
    from condnet.vision.image_model import build_image_model

    model = build_image_model(
        Hierarchy(SHAPES),
        image_size=DEMO_IMAGE_SIZE,
        filters=DEMO_FILTERS,
        routing=routing or "soft",
    )
    model.compile()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE, 3))
    labels = np.arange(batch_size) % model.hierarchy.num_classes
    model.train_on_batch(images.astype("float32"), labels)
    start = time.perf_counter()
    for _ in range(TIMED_STEPS):
        model.train_on_batch(images.astype("float32"), labels)
    return (time.perf_counter() - start) / (TIMED_STEPS * batch_size)


def expected_time_line(seconds, epochs, samples_per_class):
    """The line the demo prints before it starts."""
    minutes = seconds / 60
    shown = f"{seconds:.0f} s" if seconds < 90 else f"{minutes:.{int(minutes < 10)}f} min"
    return (
        f"Expected time on this machine: about {shown} (an estimate from {TIMED_STEPS} "
        f"training steps timed just now, for {epochs} epochs on {samples_per_class} images "
        "per class, the flat baseline included; early stopping can make it shorter)."
    )

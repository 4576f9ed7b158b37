"""`condnet demo`: the whole workflow on the embedded shapes data set."""

import time
from pathlib import Path

from condnet.data.demo_data import make_shapes_dataset
from condnet.runs.claim import check_foreign
from condnet.runs.outputs import check_output, mark

DEMO_IMAGE_SIZE = 48
DEMO_FILTERS = (16, 32, 64, 128)


def run_demo(
    out,
    epochs=12,
    samples_per_class=300,
    test_samples_per_class=100,
    verbose="auto",
    **options,
):
    """Generate the shapes data (once), train on it, evaluate on its test split.

    Writes `out/data/{train,test}/<group>/<class>/*.png` and the run in
    `out/run` (replaced on each call), then prints the test metrics.
    `options` are `TrainingOptions` fields (e.g. `routing="hard"`) beside the
    demo's image size and filters. Returns the test metrics.
    """
    from condnet.evaluation.report import summary_table
    from condnet.runs.recipe import train
    from condnet.runs.run_dir import evaluate_run

    out = Path(out)
    data = out / "data"
    check_output(out)  # not inside a run or around another's data
    if out.is_dir():  # a new folder is created below
        check_foreign(out, "demo")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "demo", ["data", "run"])
    if not (data / "train").is_dir():
        print(f"Drawing the shapes data set into {data} ...")
        make_shapes_dataset(
            data,
            samples_per_class=samples_per_class,
            image_size=DEMO_IMAGE_SIZE,
            seed=0,
            test_samples_per_class=test_samples_per_class,
        )
    options = {"image_size": DEMO_IMAGE_SIZE, "filters": DEMO_FILTERS, **options}
    train(data / "train", out / "run", epochs=epochs, overwrite=True, verbose=verbose, **options)
    scoring = time.perf_counter()
    metrics = evaluate_run(out / "run", data / "test", report_dir=out / "run" / "test-report")
    now = time.perf_counter()
    print(
        f"\nTest set ({metrics['num_samples']} images), scored in {now - scoring:.0f} s "
        f"(the whole demo, data and training included, took {now - started:.0f} s):"
    )
    print(summary_table(metrics))
    print(
        f"Report: {out / 'run' / 'report.md'} (validation), "
        f"{out / 'run' / 'test-report' / 'report.md'} (test)"
    )
    return metrics

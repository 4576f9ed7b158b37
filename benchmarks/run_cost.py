"""What a whole run costs: `condnet train` with its defaults against the plain Keras CNN's script.

    python benchmarks/run_cost.py [--train-per-class 300] [--test-per-class 100]
        [--epochs 5] [--seeds 1] [--backend tensorflow|jax|torch]

Both run as a user runs them, as commands in their own process, on the same
CIFAR-10 folders (the first `--train-per-class` / `--test-per-class` JPEGs of
each class, 32 px), the same epochs, one after the other on a quiet machine:

- `plain`: `python ../shared/tools/plain_cnn.py TRAIN TEST --image-size 32
  --epochs E` (the yardstick of the accuracy targets: `image_dataset_from_directory`,
  20% validation, EarlyStopping(patience=5), then the test set);
- `condnet`: `condnet train TRAIN --out RUN --image-size 32 --epochs E --seed S`
  with every other option at its default: the conditional model, its flat
  baseline (the same trunk, split and epochs), the evaluation and the report.

The ratio of wall times is the figure; each run's `timing.json` says where its
time went (the share that neither trains nor scores a model included).
Replaces the "Run cost" section of benchmarks/results/run_cost.md and writes
benchmarks/results/run_cost-BACKEND.json.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import data_sets

os.environ["KERAS_BACKEND"] = common.choose_backend()


from condnet.runs.files import METRICS, TIMING  # noqa: E402

PLAIN = common.REPOSITORY.parent / "shared" / "tools" / "plain_cnn.py"


def timed(command, env):
    """Wall seconds of `command` as a subprocess; its standard output."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def one_seed(train, test, args, seed, scratch, env):
    plain_seconds, out = timed(
        [sys.executable, PLAIN, train, test, "--image-size", "32", "--epochs", str(args.epochs),
         "--seed", str(seed)],
        env,
    )  # fmt: skip
    run = scratch / f"run-{seed}"
    condnet_seconds, _ = timed(
        [sys.executable, "-m", "condnet", "train", train, "--out", run, "--image-size", "32",
         "--epochs", str(args.epochs), "--seed", str(seed), "--quiet"],
        env,
    )  # fmt: skip
    timing = json.loads((run / TIMING).read_text())
    metrics = json.loads((run / METRICS).read_text())
    return {
        "seed": seed,
        "plain_seconds": plain_seconds,
        "plain_accuracy": json.loads(out.strip().splitlines()[-1])["accuracy"],
        "condnet_seconds": condnet_seconds,
        "condnet_validation_accuracy": metrics["accuracy"],
        "ratio": condnet_seconds / plain_seconds,
        "timing": timing,
    }


def main():
    args = common.parse_args(__doc__, more=_options)
    backend = os.environ["KERAS_BACKEND"]
    spec = data_sets.DATA_SETS["cifar10"]
    if not spec["archive"].is_file() or not PLAIN.is_file():
        print(f"skipped: {spec['archive']} or {PLAIN} is absent (the shared folder)")
        return
    root = data_sets.extract("cifar10", Path("/tmp/condnet-benchmark-data"))
    with tempfile.TemporaryDirectory(prefix="condnet-run-cost-") as scratch:
        scratch = Path(scratch)
        groups = spec["groups"]
        train = data_sets.link_first(
            root / "train", groups, args.train_per_class, scratch / "train"
        )
        test = data_sets.link_first(root / "test", groups, args.test_per_class, scratch / "test")
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env["CONDNET_CACHE_DIR"] = str(scratch / "cache")
        rows = [one_seed(train, test, args, seed, scratch, env) for seed in range(args.seeds)]
    _write(args, backend, rows)


def _options(parser):
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=1)


def _write(args, backend, rows):
    table = common.markdown_table(
        ["seed", "plain script (s)", "condnet train (s)", "ratio", "no-model share",
         "flat baseline share", "plain test acc.", "condnet val. acc."],
        [
            [
                r["seed"], f"{r['plain_seconds']:.1f}", f"{r['condnet_seconds']:.1f}",
                f"{r['ratio']:.2f}", f"{r['timing']['overhead_share']:.1%}",
                f"{r['timing']['share'].get('flat baseline', 0):.1%}",
                f"{r['plain_accuracy']:.3f}", f"{r['condnet_validation_accuracy']:.3f}",
            ]
            for r in rows
        ],
    )  # fmt: skip
    ratio = statistics.mean(r["ratio"] for r in rows)
    parts = rows[0]["timing"]["parts"]
    split = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in parts.items())
    body = "\n".join(
        [
            *common.machine(backend),
            "",
            f"CIFAR-10, {args.train_per_class} training images per class (20% held out for "
            f"validation by each), {args.epochs} epochs, 32 px; both as commands in their "
            "own process (imports included).",
            "",
            table,
            "",
            f"Mean ratio condnet / plain: {ratio:.2f}x. Where seed 0's `condnet train` time "
            f"went (`timing.json`): {split}.",
            "",
        ]
    )
    variant = "quick" if args.quick else "full"
    document = {"args": common.arguments(args), "rows": rows}
    heading = f"Run cost: {backend}"
    common.write_results("run_cost", variant, document, heading, body, args.results, backend)
    print(body)


if __name__ == "__main__":
    main()

"""Conditional text classifiers on 20 Newsgroups: condnet's text models against flat Keras ones.

    python benchmarks/text_news20.py [--seeds 3] [--trunks cnn,gru,transformer]
        [--epochs 10] [--sequence-length 256] [--vocabulary 20000] [--quick]
        [--skip-keras-cnn] [--condnet-train-only] [--condnet-option NAME=VALUE ...]
        [--variant LABEL:NAME=VALUE,... ...] [--section TITLE]

The training half of 20 Newsgroups (`../shared/data/news20-train.tar.gz`, 11,314
posts, headers included, as users receive them), in five groups by the
newsgroups' own prefixes: comp (5 newsgroups), rec (4), sci (4), talk (4) and
other (alt.atheism, misc.forsale, soc.religion.christian). For each seed the
posts are split 70% training / 10% validation / 20% test (stratified, drawn by
`condnet.data.splits.split_indices`; the collection's own test half is never
read). One `TextVectorization` is adapted on the training posts only and every
model reads its ids. Rows, all trained side by side on the same split with Adam,
batch 32, at most `--epochs` epochs, early stopping on validation accuracy
(patience 2, best weights restored):

- `flat, ten lines`: the model a user would write from the Keras text
  classification example: Embedding(64) -> GlobalAveragePooling1D -> Dense.
- `flat, Keras example 1D-CNN`: the 1D-CNN of the Keras example "Text
  classification from scratch" (Embedding(128), two strided Conv1D(128, 7),
  global max pooling, Dense(128)).
- `flat, <trunk>`: condnet's text trunk with one softmax head over every
  class (the flat model of the same trunk).
- `condnet, <trunk>`: `build_text_model` (soft routing while training),
  scored hard-routed (only the chosen expert runs).
- `condnet train (defaults)`: the recipe `condnet train DATA_DIR` runs, with its
  defaults (`--condnet-option NAME=VALUE` changes one), on a folder of links
  to the seed's training and validation posts (`<group>/<class>/<post>`; it
  draws its own validation eighth, with the seed), its own vectorizer adapted on
  its training split, its own epochs, schedule and early stopping; the shipped
  hard-routed `model.keras` scored on the same test posts. Its wall time is the
  whole `train` call. `condnet train's flat baseline`: the run's `baseline.keras`.
  Each `--variant LABEL:NAME=VALUE,...` adds a `condnet train (LABEL)` row (and its
  baseline's) with those options instead, e.g. `--variant 'cnn:text_trunk="cnn"'`.

Reported per row: test accuracy, hierarchical F1, the MACs per document that
inference runs (routed: trunk + gate + the costliest expert), training time.
Writes the key `--section` of `benchmarks/results/text_news20-<backend>.json` and the
"Text: 20 Newsgroups" section of `benchmarks/results/text_news20.md` (not with --quick,
a smoke run on a few posts).
"""

import json
import os
import shutil
import statistics
import time
from pathlib import Path

import common
import data_sets

os.environ["KERAS_BACKEND"] = common.choose_backend()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from condnet.data.splits import split_indices  # noqa: E402
from condnet.data.text import (  # noqa: E402
    TextFolder,
    make_vectorizer,
    read_documents,
    scan_documents,
)
from condnet.evaluation.cost import count_macs, routed_macs  # noqa: E402
from condnet.evaluation.evaluate import evaluate_model  # noqa: E402
from condnet.hierarchy import Hierarchy  # noqa: E402
from condnet.runs.files import BASELINE, BEST, HIERARCHY, STATE  # noqa: E402
from condnet.runs.recipe import train  # noqa: E402
from condnet.text.text_model import build_text_model, text_trunk  # noqa: E402

NEWS = data_sets.DATA_SETS["news20"]["archive"]


def splits(labels, seed):
    """(train, validation, test) row indices: 70 / 10 / 20, stratified."""
    rest, test = split_indices(labels, 0.2, seed=seed)
    train, validation = split_indices(labels[rest], 0.125, seed=seed)
    return rest[train], rest[validation], test


# === Models ===


def ten_line_model(vocabulary, length, classes):
    tokens = keras.Input((length,), dtype="int32")
    x = keras.layers.Embedding(vocabulary, 64)(tokens)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, keras.layers.Dense(classes, activation="softmax")(x))


def keras_cnn_model(vocabulary, length, classes):
    """The 1D-CNN of the Keras example "Text classification from scratch"."""
    tokens = keras.Input((length,), dtype="int32")
    x = keras.layers.Embedding(vocabulary, 128)(tokens)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Conv1D(128, 7, padding="valid", activation="relu", strides=3)(x)
    x = keras.layers.Conv1D(128, 7, padding="valid", activation="relu", strides=3)(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    x = keras.layers.Dropout(0.5)(keras.layers.Dense(128, activation="relu")(x))
    return keras.Model(tokens, keras.layers.Dense(classes, activation="softmax")(x))


def flat_trunk_model(vocabulary, length, classes, trunk):
    base = text_trunk(vocabulary, length, trunk)
    layers = keras.layers
    pool = layers.GlobalAveragePooling1D if trunk == "bag" else layers.GlobalMaxPooling1D
    x = pool()(base.output["features"])
    x = keras.layers.Dropout(0.3)(x)
    return keras.Model(base.input, keras.layers.Dense(classes, activation="softmax")(x))


def train_and_score(name, model, data, args, hierarchy):
    train, validation, test = data
    if not hasattr(model, "hierarchy"):
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    else:
        model.compile()
    stop = keras.callbacks.EarlyStopping(
        "val_accuracy", patience=2, mode="max", restore_best_weights=True
    )
    start = time.perf_counter()
    history = model.fit(train, validation_data=validation, epochs=args.epochs, callbacks=[stop],
                        verbose=0)  # fmt: skip
    seconds = time.perf_counter() - start
    if hasattr(model, "hierarchy"):
        model.routing = "hard"
        macs = routed_macs(model, (args.sequence_length,))["routed"]
    else:
        macs = count_macs(model, (args.sequence_length,))
    metrics = evaluate_model(model, test, hierarchy)
    row = {
        "row": name,
        "accuracy": metrics["accuracy"],
        "hierarchical_f1": metrics["hierarchical_f1"],
        "mmacs": macs / 1e6,
        "epochs": len(history.history["loss"]),
        "seconds": seconds,
    }
    print(json.dumps(row), flush=True)
    return row


def variants(args):
    """`{label: options}` of the `condnet train` rows to run: `(defaults)` with the
    `--condnet-option` values, or one row per `--variant LABEL:NAME=VALUE,...`."""
    if not args.variant:
        return {"defaults": common.option_values(args.condnet_option)}
    found = {}
    for text in args.variant:
        label, _, pairs = text.partition(":")
        found[label] = common.option_values([p for p in pairs.split(",") if p])
    return found


def condnet_train_rows(args, paths, labels, hierarchy, split, seed):
    """The `condnet train` rows (one per variant) and their flat baselines'."""
    rows = []
    for label, options in variants(args).items():
        rows += condnet_train_variant(args, paths, labels, hierarchy, split, seed, label, options)
    return rows


def condnet_train_variant(args, paths, labels, hierarchy, split, seed, label, options):
    """The `condnet train (LABEL)` row and its flat baseline's, on this seed's split."""
    train_rows, validation_rows, test_rows = split
    folder = args.cache / f"news20-linked-{seed}"
    if not folder.is_dir():
        for row in (*train_rows, *validation_rows):
            name = hierarchy.classes[labels[row]]
            link = folder / hierarchy.group_of(name) / name / Path(paths[row]).name
            link.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(paths[row], link)  # a copy: the scan skips links that leave it
    run = args.cache / "runs-news20" / f"seed-{seed}"
    start = time.perf_counter()
    train(folder, run, seed=seed, validation_split=0.125, overwrite=True, verbose=0,
          **options)  # fmt: skip
    seconds = time.perf_counter() - start
    model = keras.models.load_model(run / BEST)
    ordered = Hierarchy(json.loads((run / HIERARCHY).read_text()))
    remap = np.array([ordered.classes.index(name) for name in hierarchy.classes])
    texts, _ = read_documents([paths[r] for r in test_rows])
    test = TextFolder(texts, remap[labels[test_rows]], ordered, model.preprocessor)
    model.routing = "hard"
    flat = keras.models.load_model(run / BASELINE)
    length = model.preprocessor.get_config()["output_sequence_length"]
    epochs = len(json.loads((run / STATE).read_text())["history"])
    scored = {
        f"condnet train ({label})": (model, routed_macs(model, (length,))["routed"]),
        f"condnet train's flat baseline ({label})": (flat, count_macs(flat, (length,))),
    }
    return [
        {
            "row": name,
            "accuracy": metrics["accuracy"],
            "hierarchical_f1": metrics["hierarchical_f1"],
            "mmacs": macs / 1e6,
            "epochs": epochs,
            "seconds": seconds,
            "seed": seed,
        }
        for name, (scored_model, macs) in scored.items()
        for metrics in [evaluate_model(scored_model, test, ordered)]
    ]


def run_seed(args, texts, labels, hierarchy, seed):
    keras.utils.set_random_seed(seed)
    train_rows, validation_rows, test_rows = splits(labels, seed)
    vectorizer = make_vectorizer(
        [texts[r] for r in train_rows], args.vocabulary, args.sequence_length
    )
    vocabulary = vectorizer.vocabulary_size()

    def folder(rows, shuffle=False):
        picked = [texts[r] for r in rows]
        return TextFolder(picked, labels[rows], hierarchy, vectorizer, shuffle=shuffle, seed=seed)

    data = (folder(train_rows, True), folder(validation_rows), folder(test_rows))
    length, classes = args.sequence_length, hierarchy.num_classes
    rows = [train_and_score("flat, ten lines", ten_line_model(vocabulary, length, classes),
                            data, args, hierarchy)]  # fmt: skip
    if not args.skip_keras_cnn:
        rows.append(train_and_score("flat, Keras example 1D-CNN", keras_cnn_model(
            vocabulary, length, classes), data, args, hierarchy))  # fmt: skip
    for trunk in [t for t in args.trunks.split(",") if t]:
        flat = flat_trunk_model(vocabulary, length, classes, trunk)
        rows.append(train_and_score(f"flat, {trunk}", flat, data, args, hierarchy))
        model = build_text_model(hierarchy, vocabulary, length, trunk=trunk)
        rows.append(train_and_score(f"condnet, {trunk}", model, data, args, hierarchy))
    return [{**row, "seed": seed} for row in rows]


# === Main ===


def main():
    args = common.parse_args(__doc__, more=_options)
    if not NEWS.exists():
        print(f"skipped: {NEWS} is absent (the shared data folder)")
        return
    root = data_sets.extract("news20", args.cache)
    hierarchy, paths, labels = scan_documents(root, data_sets.news20_groups(root))
    if args.quick:
        keep = np.concatenate([np.flatnonzero(labels == c)[:20] for c in range(20)])
        paths, labels = [paths[i] for i in keep], labels[keep]
        args.epochs = 1
    texts, fallbacks = read_documents(paths)
    print(f"{len(texts)} posts, {fallbacks} read as Windows-1252", flush=True)
    start = time.perf_counter()
    rows = []
    for seed in range(args.seeds):
        if not args.condnet_train_only:
            rows += run_seed(args, texts, labels, hierarchy, seed)
        if not args.quick:
            split = splits(labels, seed)
            rows += condnet_train_rows(args, paths, labels, hierarchy, split, seed)
            print(json.dumps(rows[-2 * len(variants(args)) :]), flush=True)
    if not args.quick:
        _write(args, rows, time.perf_counter() - start)


def _options(parser):
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trunks", default="bag,cnn,gru,transformer")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--vocabulary", type=int, default=20000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/condnet-benchmark-data"))
    parser.add_argument(
        "--condnet-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a TrainingOptions field for the condnet train row (JSON value)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:NAME=VALUE,...",
        help="a condnet train row with these TrainingOptions values (repeat for more rows)",
    )
    parser.add_argument("--section", default="Text: 20 Newsgroups")
    parser.add_argument(
        "--condnet-train-only", action="store_true", help="only the condnet train rows"
    )
    parser.add_argument(
        "--skip-keras-cnn", action="store_true", help="leave out the Keras example's 1D-CNN"
    )


def _write(args, rows, seconds):
    names = list(dict.fromkeys(row["row"] for row in rows))
    table = []
    for name in names:
        mine = [row for row in rows if row["row"] == name]

        def spread(key, mine=mine):
            values = [row[key] for row in mine]
            deviation = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.4f} ± {deviation:.4f}"

        mean_seconds = statistics.mean(row["seconds"] for row in mine)
        mmacs = f"{mine[0]['mmacs']:.4f}"
        table.append([name, spread("accuracy"), spread("hierarchical_f1"), mmacs,
                      f"{mean_seconds:.0f}", str(len(mine))])  # fmt: skip
    body = "\n".join(
        [
            f"`{common.command_line()}` ({seconds / 60:.1f} min, {keras.backend.backend()}; "
            f"{args.sequence_length} ids per post, vocabulary {args.vocabulary}, at most "
            f"{args.epochs} epochs, early stopping on validation accuracy).",
            "",
            common.markdown_table(
                [
                    "row",
                    "test accuracy",
                    "hierarchical F1",
                    "MMACs per post (routed)",
                    "training s",
                    "seeds",
                ],  # fmt: skip
                table,
            ),
        ]
    )
    document = {"args": common.arguments(args), "rows": rows}
    common.write_results("text_news20", args.section, document, args.section, body, args.results)
    print(table)


if __name__ == "__main__":
    main()

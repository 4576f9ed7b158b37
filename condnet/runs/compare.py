"""`condnet compare`: finished runs side by side (accuracy, routed MACs, training time).

The accuracies are those of each run's `metrics.json`: its validation split,
hard-routed (`mixture`: the soft mixture; `baseline`: the run's flat
baseline on the same images). `mistake_distance` is how far the wrong answers
miss (the height of the lowest common ancestor of the true and predicted
class, `condnet.evaluation.mistakes`), beside the flat baseline's.
`backoff_accuracy` and `backoff_coverage` are those of the answers given at
the run's back-off thresholds on that split (`condnet.evaluation.backoff`);
`unknown_score` and `unknown_flagged` name the score of model.keras's
unknown-class thresholds in unknown.json and the share of the validation
images (all of known classes) it flagged there. `backbone` is a text run's
trunk, e.g. `bag (text)`.
"""

import csv
import io
import json
import math
import sys
from pathlib import Path

from condnet.choices import HUB_TEXT_TRUNK
from condnet.runs.documents import is_text_run
from condnet.runs.files import CONFIG, HISTORY, METRICS
from condnet.runs.outputs import staged_file, write_file
from condnet.runs.run_dir import nested_entry, read_metrics, read_options

COLUMNS = (
    "run",
    "accuracy",
    "mixture",
    "baseline",
    "gate_accuracy",
    "hierarchical_f1",
    "mistake_distance",
    "baseline_mistake_distance",
    "backoff_accuracy",
    "backoff_coverage",
    "unknown_score",
    "unknown_flagged",
    "routed_mmacs",
    "all_experts_mmacs",
    "epochs",
    "train_minutes",
    "routing",
    "backbone",
)
OUTPUT_SUFFIXES = (".md", ".csv", ".json")


def find_runs(paths):
    """The finished runs among `paths`: each a run directory, or a folder of them (one
    level down, e.g. a `cv` output or a `runs/` folder)."""
    runs = []
    for path in map(Path, paths):
        if (path / METRICS).is_file():
            runs.append(path)
        elif path.is_dir() and any((child / METRICS).is_file() for child in path.iterdir()):
            runs += sorted(child for child in path.iterdir() if (child / METRICS).is_file())
        else:
            raise ValueError(
                f"{str(path)!r} is not a finished condnet run (no {METRICS}) nor a folder of "
                "runs. Pass run directories written by `condnet train`. "
                f"Received: {str(path)!r}"
            )
    if not runs:
        raise ValueError("No runs to compare: pass one or more run directories.")
    return runs


def compare_runs(paths):
    """One row per run (`COLUMNS`), most accurate first (runs without an accuracy last).

    A run whose metrics.json cannot be used is left out, and a config.json or
    history.csv that cannot be used leaves its columns blank; each says so in one
    line on standard error, naming the file. With no run left, a ValueError.
    """
    rows, left_out = [], []
    for run in find_runs(paths):
        try:
            rows.append(_row(run))
        except ValueError as error:
            left_out.append(str(error))
    if not rows:
        more = f" ({len(left_out) - 1} more runs left out likewise)" if len(left_out) > 1 else ""
        raise ValueError(f"No run to compare: {left_out[0]}{more}")
    for message in left_out:
        _warn(f"left out: {message}")
    return sorted(rows, key=lambda row: (row["accuracy"] is None, -(row["accuracy"] or 0)))


def _row(run):
    metrics = read_metrics(run / METRICS)
    options = _or_blank(lambda: read_options(run / CONFIG), {}) if (run / CONFIG).is_file() else {}
    history = _or_blank(lambda: _history(run), [])
    seconds = [row["epoch_seconds"] for row in history if row["epoch_seconds"] is not None]
    macs = metrics.get("macs_per_image") or {}
    return {
        "run": str(run),
        "accuracy": metrics.get("accuracy"),
        "mixture": nested_entry(metrics, ("mixture", "accuracy")),
        "baseline": nested_entry(metrics, ("baseline", "flat", "accuracy")),
        "gate_accuracy": metrics.get("gate_accuracy", metrics.get("group_accuracy")),
        "hierarchical_f1": metrics.get("hierarchical_f1"),
        "mistake_distance": metrics.get("mistake_distance"),
        "baseline_mistake_distance": nested_entry(
            metrics, ("baseline", "flat", "mistake_distance")
        ),
        "backoff_accuracy": nested_entry(metrics, ("backoff", "conditional", "accuracy")),
        "backoff_coverage": nested_entry(metrics, ("backoff", "conditional", "coverage")),
        **_unknown_columns(run),
        "routed_mmacs": _millions(macs.get("routed")),
        "all_experts_mmacs": _millions(macs.get("all_experts")),
        "epochs": len(history) or None,
        "train_minutes": round(sum(seconds) / 60, 2) if seconds else None,
        "routing": _text(metrics.get("training_routing") or options.get("routing")),
        "backbone": _backbone(options),
    }


def _backbone(options):
    """What reads the inputs: the image backbone, or a text run's trunk (`"bag (text)"`,
    `"hub: PRESET (text)"` for a keras-hub backbone)."""
    if is_text_run({"options": options}):
        if options.get("text_trunk") == HUB_TEXT_TRUNK:
            return f"hub: {_text(options.get('backbone'))} (text)"
        return f"{_text(options.get('text_trunk'))} (text)"
    return _text(options.get("backbone"))


def _unknown_columns(run):
    """model.keras's unknown-class score and the share flagged where its thresholds were
    chosen, from unknown.json (blank without it, or with a warning when it is damaged)."""
    from condnet.runs.files import BEST, UNKNOWN
    from condnet.runs.run_dir import read_unknown

    blank = {"unknown_score": None, "unknown_flagged": None}
    if not (run / UNKNOWN).is_file():
        return blank
    record = _or_blank(lambda: read_unknown(run / UNKNOWN), {})
    entry = nested_entry(record, ("models", BEST))
    if not isinstance(entry, dict):
        return blank
    return {
        "unknown_score": _text(entry.get("score", "softmax")),
        "unknown_flagged": nested_entry(entry, ("there", "flagged")),
    }


def _or_blank(read, blank):
    """`read()`, or `blank` with a one-line warning when the file cannot be used."""
    try:
        return read()
    except ValueError as error:
        _warn(f"blank columns: {error}")
        return blank


def _warn(message):
    print(f"condnet compare: warning: {message}", file=sys.stderr, flush=True)


def _text(value):
    return value if isinstance(value, str) or value is None else json.dumps(value)[:40]


def _history(run):
    """history.csv's rows as `{"epoch_seconds": float or None}`; [] without the file."""
    path = run / HISTORY
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return [{"epoch_seconds": _seconds(row.get("epoch_seconds"))} for row in rows]
    except (OSError, ValueError, csv.Error) as error:  # UnicodeDecodeError is a ValueError
        raise ValueError(
            f"The run's {HISTORY} cannot be read as CSV ({type(error).__name__}: "
            f"{str(error)[:200]}); `condnet train` writes it after each epoch, restore it. "
            f"Received: path={str(path)!r}"
        ) from None


def _seconds(text):
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"epoch_seconds is {text!r:.40}, not a number") from None
    return value if math.isfinite(value) and value >= 0 else None


def _millions(value):
    return None if value is None else round(value / 1e6, 3)


# === Output ===


def table(rows):
    """A Markdown table of the rows (the console shows the same)."""

    def cell(value):
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def check_outputs(output, plot):
    """Refuse bad output names before anything runs."""
    if output is not None and Path(output).suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(
            f"--output must end in {', '.join(OUTPUT_SUFFIXES)} (the format follows the "
            f"name). Received: --output {output}"
        )
    if plot is not None and Path(plot).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"--plot must end in .png, .svg or .pdf. Received: --plot {plot}")


def write_table(rows, path):
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(rows, indent=1) + "\n"
    elif suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        text = table(rows)
    write_file(path, text)
    return path


def plot_runs(rows, path):
    """Accuracy against routed MMACs per image, one labelled point per run (and its baseline)."""
    shown = [r for r in rows if r["routed_mmacs"] is not None]
    return accuracy_against_macs(
        path,
        [(Path(r["run"]).name, r["routed_mmacs"], r["accuracy"], "tab:blue") for r in shown],
        "Runs (x: each run's flat baseline at the same MACs)",
        crosses=[(r["routed_mmacs"], r["baseline"]) for r in shown if r["baseline"] is not None],
    )


def accuracy_against_macs(path, points, title, crosses=(), line=(), required=True):
    """Save a scatter of `(label, mmacs, accuracy, colour)` points, grey crosses at
    `(mmacs, accuracy)` and a dashed red line through `line`; returns the path, or None
    without matplotlib when not `required`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        if not required:
            return None
        raise ImportError("--plot needs matplotlib: pip install 'condnet[plots]'") from None
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for label, mmacs, accuracy, colour in points:
        axes.scatter(mmacs, accuracy, color=colour)
        axes.annotate(label, (mmacs, accuracy), fontsize=8)
    for mmacs, accuracy in crosses:
        axes.scatter(mmacs, accuracy, color="tab:gray", marker="x")
    if line:
        axes.plot([x for x, _ in line], [y for _, y in line], "r--")
    axes.set(xlabel="routed MMACs per image", ylabel="validation accuracy (hard-routed)")
    axes.set_title(title)
    figure.tight_layout()
    with staged_file(path) as temporary:  # a cut-short save leaves the old plot
        figure.savefig(temporary, dpi=100)
    pyplot.close(figure)
    return Path(path)

"""`condnet compare`: finished runs side by side (accuracy, routed MACs, training time).

The accuracies are those of each run's `metrics.json`: its validation split,
hard-routed (`mixture`: the soft mixture; `baseline`: the run's flat
baseline on the same images).
"""

import csv
import io
import json
from pathlib import Path

from condnet.runs.checkpoint import HISTORY, METRICS

COLUMNS = (
    "run",
    "accuracy",
    "mixture",
    "baseline",
    "gate_accuracy",
    "hierarchical_f1",
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
    """One row per run (`COLUMNS`), most accurate first."""
    rows = [_row(run) for run in find_runs(paths)]
    return sorted(rows, key=lambda row: -row["accuracy"])


def _row(run):
    metrics = _read_json(run / METRICS)
    options = (
        _read_json(run / "config.json").get("options", {})
        if (run / "config.json").is_file()
        else {}
    )
    history = _history(run)
    seconds = [float(r["epoch_seconds"]) for r in history if r.get("epoch_seconds")]
    macs = metrics.get("macs_per_image", {})
    flat = metrics.get("baseline", {}).get("flat", {})
    return {
        "run": str(run),
        "accuracy": metrics["accuracy"],
        "mixture": metrics.get("mixture", {}).get("accuracy"),
        "baseline": flat.get("accuracy"),
        "gate_accuracy": metrics.get("gate_accuracy", metrics.get("group_accuracy")),
        "hierarchical_f1": metrics.get("hierarchical_f1"),
        "routed_mmacs": _millions(macs.get("routed")),
        "all_experts_mmacs": _millions(macs.get("all_experts")),
        "epochs": len(history) or None,
        "train_minutes": round(sum(seconds) / 60, 2) if seconds else None,
        "routing": metrics.get("training_routing", options.get("routing")),
        "backbone": options.get("backbone"),
    }


def _read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{str(path)!r} cannot be read as JSON ({type(error).__name__}: {error}). Restore "
            "it or leave the run out."
        ) from None


def _history(run):
    path = run / HISTORY
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


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
    path.write_text(text)
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
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return Path(path)

"""The report's plots (matplotlib): training curves, routing and confusion matrices, and
risk-coverage curves."""

import math
import warnings

import numpy as np

from condnet.evaluation.analysis import BACKOFF_SIDES

NO_MATPLOTLIB = (
    'Plots were skipped because matplotlib is not installed: `pip install "condnet[plots]"`.'
)
NO_HISTORY = "No training history was given, so training_curves.png was not drawn."
WIDE_PLOTS = ("training_curves.png",)  # shown across the page, not in the grid
CURVES_WIDTH = 9  # inches: 900 px at the 100 dpi of every plot
COMPARED = ("accuracy",)  # panels that also show the flat baseline's curves
NOT_PLOTTED = ("epoch", "phase", "epoch_seconds")  # bookkeeping columns of history.csv


def write_plots(run_dir, hierarchy, metrics, history, flat_history=None):
    """Draw the report's PNGs into `run_dir`; return their paths and notes on what was
    skipped (all of them, with a warning, without matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warnings.warn(NO_MATPLOTLIB, stacklevel=3)
        return [], [NO_MATPLOTLIB]
    plots, notes = [], []
    if history:
        plots.append(_plot_history(run_dir / "training_curves.png", history, flat_history))
    else:
        notes.append(NO_HISTORY)
    groups = hierarchy.groups
    plots.append(
        _plot_matrix(
            run_dir / "routing_matrix.png",
            metrics["routing_matrix"],
            groups,
            "expert that ran",
            "true group",
        )
    )
    if metrics["group_confusion"] != metrics["routing_matrix"]:  # e.g. soft mixture, hedging
        plots.append(
            _plot_matrix(
                run_dir / "group_confusion.png",
                metrics["group_confusion"],
                groups,
                "gate's top group",
                "true group",
            )
        )
    plots.append(_plot_class_confusion(run_dir / "class_confusion.png", hierarchy, metrics))
    if metrics.get("backoff"):
        plots.append(_plot_risk_coverage(run_dir / "risk_coverage.png", metrics["backoff"]))
    return plots, notes


def _plot_risk_coverage(path, section):
    """One panel per level: the risk (share wrong) of answering the most confident
    images, against the share answered, for each model."""
    sides = [(key, name) for key, name in BACKOFF_SIDES if section.get(key)]
    levels = list(section[sides[0][0]]["risk_coverage"])
    figure = _figure(4.5 * len(levels), 3.5)
    for index, level in enumerate(levels):
        axes = figure.add_subplot(1, len(levels), index + 1)
        for (key, name), style in zip(sides, ("-", "--")):
            curve = section[key]["risk_coverage"][level]
            axes.plot(curve["coverage"], curve["risk"], style, marker=".", label=name)
        axes.set(title=f"risk-coverage: {level}", xlabel="coverage", ylabel="risk", xlim=(0, 1))
        axes.set_ylim(bottom=0)  # a risk is never negative, even when every answer is right
        axes.legend()
    figure.savefig(path, dpi=100)
    return path


def _plot_class_confusion(path, hierarchy, metrics):
    """Row-normalised class confusion, classes grouped by group with boundary lines."""
    counts = np.asarray(metrics["class_confusion"])
    totals = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    shares = counts / totals
    names = hierarchy.classes
    size = min(3.5 + 0.3 * len(names), 30)
    figure = _figure(size + 1, size)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class's images")
    axes.set(
        title="class confusion (row-normalised; counts in cells)",
        xlabel="predicted class",
        ylabel="true class",
    )
    if len(names) <= 100:
        _label_ticks(axes, names)
    if len(names) <= 20:
        _annotate(axes, counts, shares)
    for group in hierarchy.groups[:-1]:
        edge = hierarchy.group_slice(group).stop - 0.5
        axes.axhline(edge, color="black", linewidth=1)
        axes.axvline(edge, color="black", linewidth=1)
    figure.savefig(path, dpi=100)
    return path


def _figure(width, height):
    # A bare Figure draws with Agg without pyplot: no global backend switch, no
    # open windows, nothing left in pyplot's figure registry.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _plot_matrix(path, matrix, names, xlabel, ylabel):
    """A heatmap of a square count matrix; labels and counts while they fit."""
    matrix = np.asarray(matrix)
    size = min(3.5 + 0.3 * len(names), 30)
    figure = _figure(size + 1, size)
    axes = figure.add_subplot()
    figure.colorbar(axes.imshow(matrix, cmap="Blues"), ax=axes, shrink=0.8)
    axes.set(title=path.stem.replace("_", " "), xlabel=xlabel, ylabel=ylabel)
    if len(names) <= 100:
        _label_ticks(axes, names)
    if len(names) <= 20:
        _annotate(axes, matrix, matrix / max(matrix.max(), 1))
    figure.savefig(path, dpi=100)
    return path


def _label_ticks(axes, names):
    fontsize = 9 if len(names) <= 30 else 6
    axes.set_xticks(range(len(names)), names, rotation=90, fontsize=fontsize)
    axes.set_yticks(range(len(names)), names, fontsize=fontsize)


def _annotate(axes, matrix, shades):
    for (i, j), count in np.ndenumerate(matrix):
        color = "white" if shades[i, j] > 0.5 else "black"
        axes.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)


def _history_names(history):
    """Panel names: one per metric, leaving out series that never change (fixed loss weights)."""
    changing = [
        key
        for key, values in history.items()
        if key not in NOT_PLOTTED and (len(set(values)) > 1 or len(values) == 1)
    ]
    return list(dict.fromkeys(key.removeprefix("val_") for key in changing))


def _curves(name, history, flat_history):
    """The `(label, values, line style)` series of one panel: the run's `name` and
    `val_name`, and on the `COMPARED` panels the flat baseline's, dashed."""
    keys = (name, f"val_{name}")
    series = [(key, history[key], "-") for key in keys if key in history]
    if name in COMPARED:
        series += [(f"flat baseline {k}", flat_history[k], "--") for k in keys if k in flat_history]
    return series


def _plot_history(path, history, flat_history=None):
    from matplotlib import rc_context

    names = _history_names(history)
    columns = min(len(names), 2)
    rows = math.ceil(len(names) / columns)
    with rc_context({"font.size": 12, "axes.titlesize": 13, "legend.fontsize": 10}):
        figure = _figure(CURVES_WIDTH, 3.2 * rows)
        for index, name in enumerate(names):
            axes = figure.add_subplot(rows, columns, index + 1)
            for label, values, style in _curves(name, history, flat_history or {}):
                epochs = range(1, len(values) + 1)
                axes.plot(epochs, values, style, marker=".", label=label)
            axes.set(title=name, xlabel="epoch")
            axes.xaxis.get_major_locator().set_params(integer=True)
            axes.legend()
        figure.savefig(path, dpi=100)
    return path

"""Write a run's metrics as report.md, report.html and PNG plots."""

import html
import math
import warnings
from pathlib import Path

import numpy as np

NO_MATPLOTLIB = (
    'Plots were skipped because matplotlib is not installed: `pip install "condnet[plots]"`.'
)
NO_HISTORY = "No training history was given, so training_curves.png was not drawn."
REQUIRED_KEYS = (
    "num_samples",
    "accuracy",
    "group_accuracy",
    "level_accuracy",
    "hierarchical_precision",
    "hierarchical_recall",
    "hierarchical_f1",
    "routing",
    "per_class",
    "per_group",
    "expected_calibration_error",
    "group_confusion",
    "class_confusion",
    "routing_matrix",
)
SCORE_COLUMNS = ("precision", "recall", "f1", "support")
ROUTING_COLUMNS = ("expert", "samples routed", "share", "samples of its group", "routed right")
STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:70em}"
    "table{border-collapse:collapse;margin-bottom:1em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
    "th:first-child,td:first-child{text-align:left}img{max-width:100%}"
)


def write_report(run_dir, hierarchy, metrics, history=None, title="condnet report"):
    """Write `report.md`, `report.html` and PNG plots of a run into `run_dir`.

    The report holds a summary table, precision/recall/F1/support per group and
    per class, how many samples each expert received, and the plots:
    `training_curves.png` (when a history is given), `group_confusion.png`,
    `class_confusion.png` and `routing_matrix.png` (true group x expert chosen).

    Plots need matplotlib (`pip install "condnet[plots]"`). Without it the
    report is still written, with a warning and a note in place of the plots,
    so that a finished training run never loses its report.

    Args:
        run_dir: str or path. Folder to write into; created if missing.
        hierarchy: `Hierarchy`. The one the metrics were computed for.
        metrics: dict. The result of `condnet.evaluation.metrics.evaluate_predictions`.
        history: optional dict mapping a metric name to its per-epoch values
            (`loss`, `val_loss`, ...), or the `History` returned by `model.fit`.
            Defaults to `None` (no training curves).
        title: str. Heading of the report. Defaults to `"condnet report"`.

    Returns:
        The list of written paths: `report.md`, `report.html`, then the PNGs.

    Example:

    ```python
    metrics = evaluate_predictions(hierarchy, y_test, model.predict(x_test))
    write_report("runs/pets", hierarchy, metrics, history=history)
    print(summary_table(metrics))
    ```
    """
    _check_metrics(metrics, hierarchy)
    history = _history_dict(history)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plots, notes = _write_plots(run_dir, hierarchy, metrics, history)
    sections = _sections(hierarchy, metrics, plots, notes)
    markdown, page = run_dir / "report.md", run_dir / "report.html"
    markdown.write_text(_markdown(title, sections), encoding="utf-8")
    page.write_text(_html(title, sections), encoding="utf-8")
    return [markdown, page, *plots]


def summary_table(metrics):
    """A short plain-text table of the headline metrics, for the terminal."""
    rows = [("metric", "value")] + _summary_rows(metrics)
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


# === Content ===


def _summary_rows(metrics):
    ece = metrics["expected_calibration_error"]
    levels = ", ".join(_number(value) for value in metrics["level_accuracy"])
    return [
        ("num_samples", str(metrics["num_samples"])),
        ("accuracy", _number(metrics["accuracy"])),
        ("group_accuracy", _number(metrics["group_accuracy"])),
        ("level_accuracy", levels),
        ("hierarchical_precision", _number(metrics["hierarchical_precision"])),
        ("hierarchical_recall", _number(metrics["hierarchical_recall"])),
        ("hierarchical_f1", _number(metrics["hierarchical_f1"])),
        ("wrong_expert_share", _number(metrics["routing"]["wrong_expert_share"])),
        ("class_ece", _number(ece["class"])),
        ("group_ece", _number(ece["group"])),
    ]


def _sections(hierarchy, metrics, plots, notes):
    """The report as (heading, items); an item is a table, an image or a text."""
    groups = [(g, metrics["per_group"][g]) for g in hierarchy.groups]
    classes = [(c, metrics["per_class"][c]) for c in hierarchy.classes]
    return [
        ("Summary", [("table", ("metric", "value"), _summary_rows(metrics))]),
        ("Per group", [("table", ("group", *SCORE_COLUMNS), _score_rows(groups))]),
        (
            "Per class",
            [("table", ("class", "group", *SCORE_COLUMNS), _class_rows(hierarchy, classes))],
        ),
        ("Routing", [("table", ROUTING_COLUMNS, _routing_rows(hierarchy, metrics))]),
        ("Plots", [("image", path.name) for path in plots] + [("text", n) for n in notes]),
    ]


def _score_rows(scores):
    return [
        (name, *(_number(s[key]) for key in SCORE_COLUMNS[:3]), str(s["support"]))
        for name, s in scores
    ]


def _class_rows(hierarchy, classes):
    """Score rows with the class's group path (`animal > pet`) second."""
    return [
        (row[0], " > ".join(hierarchy.path(row[0])[:-1]), *row[1:]) for row in _score_rows(classes)
    ]


def _routing_rows(hierarchy, metrics):
    routed = metrics["routing"]["samples_per_expert"]
    matrix = metrics["routing_matrix"]
    return [
        (
            group,
            str(routed[group]),
            _number(routed[group] / metrics["num_samples"]),
            str(sum(matrix[i])),
            str(matrix[i][i]),
        )
        for i, group in enumerate(hierarchy.groups)
    ]


def _number(value):
    return f"{value:.4f}"


# === Markdown and HTML ===


def _markdown(title, sections):
    lines = [f"# {_markdown_text(title)}", ""]
    for heading, items in sections:
        lines += [f"## {heading}", ""]
        for item in items:
            lines += [*_markdown_item(item), ""]
    return "\n".join(lines)


def _markdown_item(item):
    kind, *content = item
    if kind == "table":
        header, rows = content
        return [_markdown_row(header), _markdown_row(["---"] * len(header))] + [
            _markdown_row(row) for row in rows
        ]
    if kind == "image":
        return [f"![{content[0]}]({content[0]})"]
    return [content[0]]


def _markdown_row(cells):
    return "| " + " | ".join(_markdown_text(cell) for cell in cells) + " |"


def _markdown_text(text):
    """Escape what would break a table row or be read as an HTML tag."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<")


def _html(title, sections):
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, items in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts += [_html_item(item) for item in items]
    return "\n".join(parts + ["</body></html>", ""])


def _html_item(item):
    kind, *content = item
    if kind == "table":
        header, rows = content
        head = _html_row(header, "th")
        body = "\n".join(_html_row(row, "td") for row in rows)
        return f"<table>\n<thead>{head}</thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    if kind == "image":
        name = html.escape(content[0])
        return f'<p><a href="{name}"><img src="{name}" alt="{name}"></a></p>'
    return f"<p>{html.escape(content[0])}</p>"


def _html_row(cells, tag):
    return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"


# === Plots ===


def _write_plots(run_dir, hierarchy, metrics, history):
    """Draw the PNGs; return their paths and notes on what was skipped."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warnings.warn(NO_MATPLOTLIB, stacklevel=3)
        return [], [NO_MATPLOTLIB]
    plots, notes = [], []
    if history:
        plots.append(_plot_history(run_dir / "training_curves.png", history))
    else:
        notes.append(NO_HISTORY)
    groups, classes = hierarchy.groups, hierarchy.classes
    for name, names, xlabel, ylabel in (
        ("group_confusion", groups, "predicted group", "true group"),
        ("class_confusion", classes, "predicted class", "true class"),
        ("routing_matrix", groups, "expert chosen", "true group"),
    ):
        path = run_dir / f"{name}.png"
        plots.append(_plot_matrix(path, metrics[name], names, xlabel, ylabel))
    return plots, notes


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
        _annotate(axes, matrix)
    figure.savefig(path, dpi=100)
    return path


def _label_ticks(axes, names):
    fontsize = 9 if len(names) <= 30 else 6
    axes.set_xticks(range(len(names)), names, rotation=90, fontsize=fontsize)
    axes.set_yticks(range(len(names)), names, fontsize=fontsize)


def _annotate(axes, matrix):
    threshold = matrix.max() / 2
    for (i, j), count in np.ndenumerate(matrix):
        color = "white" if count > threshold else "black"
        axes.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)


def _plot_history(path, history):
    names = list(dict.fromkeys(key.removeprefix("val_") for key in history))
    columns = min(len(names), 3)
    figure = _figure(4.5 * columns, 3.5 * math.ceil(len(names) / columns))
    for index, name in enumerate(names):
        axes = figure.add_subplot(math.ceil(len(names) / columns), columns, index + 1)
        for key in (name, f"val_{name}"):
            if key in history:
                epochs = range(1, len(history[key]) + 1)
                axes.plot(epochs, history[key], marker=".", label=key)
        axes.set(title=name, xlabel="epoch")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.legend()
    figure.savefig(path, dpi=100)
    return path


# === Input checks ===


def _check_metrics(metrics, hierarchy):
    if not isinstance(metrics, dict):
        raise TypeError(
            "metrics must be the dict returned by condnet.evaluation.metrics.evaluate_predictions. "
            f"Received: metrics of type {type(metrics).__name__}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in metrics]
    if missing:
        raise ValueError(
            f"metrics is missing {missing}. Pass the dict returned by "
            f"condnet.evaluation.metrics.evaluate_predictions. Received keys: {sorted(metrics)}"
        )
    shape = (len(metrics["class_confusion"]), len(metrics["group_confusion"]))
    if shape != (hierarchy.num_classes, hierarchy.num_groups):
        raise ValueError(
            f"The metrics were computed for {shape[0]} classes in {shape[1]} groups "
            f"but the hierarchy has {hierarchy.num_classes} classes in "
            f"{hierarchy.num_groups} groups. Pass the hierarchy the model was "
            f"trained with. Received: hierarchy={hierarchy!r:.200}"
        )


def _history_dict(history):
    """A name -> per-epoch floats dict from a dict, a keras History or None."""
    history = getattr(history, "history", history)
    if history is None:
        return {}
    if not isinstance(history, dict):
        raise TypeError(
            "history must be a dict mapping metric names to per-epoch values, or "
            "the History returned by model.fit. Received: history of type "
            f"{type(history).__name__}"
        )
    return {str(key): [float(v) for v in values] for key, values in history.items() if len(values)}

"""Write a run's metrics as report.md, report.html and PNG plots."""

import html
import re
from pathlib import Path

from condnet.evaluation.analysis import (
    BACKOFF_SIDES,
    baseline_verdict,
    gap_sources,
)
from condnet.evaluation.gallery import document_gallery, write_gallery
from condnet.evaluation.plots import WIDE_PLOTS, write_plots

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
ROUTING_WORDS = {
    "hard": "hard-routed (only the chosen expert runs)",
    "soft": "soft routing (every expert runs, mixed by the gate)",
    "flat": "flat baseline (no routing)",
}
SCORE_COLUMNS = ("precision", "recall", "f1", "support")
ROUTING_COLUMNS = ("expert", "samples routed", "share", "samples of its group", "routed right")
STYLE = (
    "body{font-family:sans-serif;margin:0;display:grid;grid-template-columns:14em 1fr}"
    "nav{position:sticky;top:0;height:100vh;overflow:auto;padding:1em;background:#f5f5f5}"
    "main{padding:1em 2em;max-width:90em}"
    "table{border-collapse:collapse;margin-bottom:1em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
    "td.number{text-align:right}img{max-width:100%}"
    ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(28em,1fr));gap:1em}"
    ".grid .wide{grid-column:1/-1}.wide img{width:900px;max-width:100%}"
    ".gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(9em,1fr));gap:.5em}"
    "figure{margin:0}.example img{width:96px;height:96px;object-fit:contain;"
    "image-rendering:pixelated}figcaption{font-size:.75em}"
    ".document{border:1px solid #ccc;padding:.25em .5em;margin-bottom:.5em}"
    ".document pre{white-space:pre-wrap;margin:.25em 0;font-size:.85em}"
    "@media (max-width:50em){body{display:block}nav{position:static;height:auto}}"
)


def write_report(
    run_dir,
    hierarchy,
    metrics,
    history=None,
    title="condnet report",
    header=None,
    baseline=None,
    examples=None,
    explain=None,
    documents=False,
):
    """Write `report.md`, `report.html` and PNG plots of a run into `run_dir`.

    The report opens with what it describes (`header`: data, split, best
    epoch, configuration), then the headline metrics, the comparison with a
    flat baseline (when given), a glossary of the metric names,
    precision/recall/F1/support per group and per class, how many samples
    each expert received, a gallery of example images (misrouted,
    misclassified, correct), and the plots: `training_curves.png` (when a
    history is given; series that never change, such as fixed loss weights,
    are left out), `routing_matrix.png` (true group x expert chosen),
    `group_confusion.png` only when the gate's choices differ from the
    routes, and `class_confusion.png` (row-normalised, grouped by group with
    boundaries, counts written in the cells). The HTML page has a table of
    contents and lays plots and images out in a grid.

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
        header: optional dict. `label -> text` lines shown first (e.g. `"data"`,
            `"split"`, `"best epoch"`), and optionally `"configuration"`: a
            dict of options shown as a table.
        baseline: optional dict `{"conditional": scores, "flat": scores}`, each
            with any of `accuracy`, `group_accuracy`, `hierarchical_f1`,
            `macs_per_image`, `images_per_second`, `epochs` (trained): shown side by
            side with a one-line verdict.
        examples: optional list of dicts, one per image, with `path`, `true`
            (class), `predicted` (class), `expert` (group that ran), `true_group`
            and `confidence`: up to 8 of each kind are shown as thumbnails.
        explain: optional callable `(image path, PNG path, caption)` that draws
            why the model decided so (`condnet.evaluation.explain.explainer`):
            each misrouted example shown gets the occlusion maps of the gate
            and of the expert it was sent to. With `documents`, a callable
            `(list of texts) -> list of [(word, weight)]`
            (`condnet.evaluation.explain.weighed_words` of the run's model): each
            quoted document's caption names the words that weighed most.
            Defaults to `None` (none drawn).
        documents: bool. The examples' paths are text documents: the gallery
            quotes the first lines (`condnet.evaluation.gallery.EXCERPT_LINES`) of
            up to 8 misrouted and 8 misclassified ones instead of showing
            thumbnails. Defaults to `False`.

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
    flat_history = _history_dict((baseline or {}).get("flat", {}).get("history"))
    plots, notes = write_plots(run_dir, hierarchy, metrics, history, flat_history)
    if documents:
        gallery = document_gallery(examples or [], explain)
    else:
        gallery = write_gallery(run_dir, examples or [], explain)
    sections = _sections(hierarchy, metrics, plots, notes)
    sections[1:1] = _extra_sections(metrics, header, baseline, gallery, documents)
    sections += _options_section(header)
    if metrics.get("skipped"):
        rows = [(row["path"], row["error"]) for row in metrics["skipped"]]
        note = ("text", f"{metrics['num_skipped']} images could not be decoded and are not scored:")
        sections.insert(2, ("Skipped images", [note, ("table", ("path", "error"), rows)]))
    markdown, page = run_dir / "report.md", run_dir / "report.html"
    markdown.write_text(_markdown(title, sections), encoding="utf-8")
    page.write_text(_html(title, sections), encoding="utf-8")
    return [markdown, page, *plots]


def summary_table(metrics, title=None):
    """A short plain-text table of the headline metrics, for the terminal, under
    `title` (e.g. `summary_title(metrics, "Validation split")`) when given."""
    rows = [("metric", "value")] + _summary_rows(metrics)
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    table = [lines[0], "-" * len(lines[0]), *lines[1:]]
    return "\n".join([title, *table] if title else table)


def summary_title(metrics, scored_on, noun="images"):
    """What a summary table scores: `scored_on` (a split or a folder), the number of
    images (or other `noun`) and the routing, e.g. "Validation split (120 images),
    hard-routed (...):"."""
    routing = ROUTING_WORDS.get(metrics.get("inference_routing"))
    scored = f"{scored_on} ({metrics['num_samples']} {noun})"
    return f"{scored}, {routing}:" if routing else f"{scored}:"


# === Content ===


def _summary_rows(metrics):
    ece = metrics["expected_calibration_error"]
    levels = ", ".join(_number(value) for value in metrics["level_accuracy"])
    skipped = [("num_skipped", str(metrics["num_skipped"]))] if "num_skipped" in metrics else []
    return [
        ("num_samples", str(metrics["num_samples"])),
        *skipped,
        ("accuracy", _number(metrics["accuracy"])),
        ("group_accuracy", _number(metrics["group_accuracy"])),
        ("level_accuracy", levels),
        ("hierarchical_precision", _number(metrics["hierarchical_precision"])),
        ("hierarchical_recall", _number(metrics["hierarchical_recall"])),
        ("hierarchical_f1", _number(metrics["hierarchical_f1"])),
        *_mistake_rows(metrics),
        ("wrong_expert_share", _number(metrics["routing"]["wrong_expert_share"])),
        ("class_ece", _number(ece["class"])),
        ("group_ece", _number(ece["group"])),
    ]


def _mistake_rows(metrics):
    """How far the mistakes miss (`condnet.evaluation.mistakes`), when the metrics say."""
    if "mistake_distance" not in metrics:
        return []
    topk = metrics.get("top_k_distance") or {}
    return [("mistake_distance", _cell(metrics["mistake_distance"]))] + [
        (f"top_{k}_distance", _number(value)) for k, value in topk.items()
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


def _extra_sections(metrics, header, baseline, gallery, documents=False):
    """Baseline, glossary and examples, placed after the summary."""
    from condnet.evaluation.metrics import GLOSSARY

    sections = []
    if baseline:
        items = _baseline_items(baseline, metrics["num_samples"], documents)
        sections.append(("Flat baseline", items))
    if metrics.get("backoff"):
        sections.append(("Back-off", _backoff_items(metrics["backoff"])))
    if metrics.get("unknown"):
        sections.append(("Unknown classes", _unknown_items(metrics["unknown"])))
    glossary = [(name, text) for name, text in GLOSSARY.items()]
    sections.append(("Glossary", [("table", ("name", "meaning"), glossary)]))
    if gallery:
        sections.append(("Examples", gallery))
    if header:
        sections.insert(0, ("About this run", _header_items(header)))
    return sections


def _header_items(header):
    rows = [(k, str(v)) for k, v in header.items() if k != "configuration"]
    return [("table", ("", ""), rows)]


def _options_section(header):
    """The run's every option, last: it is looked up, not read first."""
    configuration = (header or {}).get("configuration")
    if not configuration:
        return []
    rows = [(k, json_text(v)) for k, v in configuration.items()]
    note = ("text", "Every option of the run, as its config.json stores them.")
    return [("Options", [note, ("table", ("option", "value"), rows)])]


def json_text(value):
    """A compact text form of an option value for a table cell."""
    import json

    return value if isinstance(value, str) else json.dumps(value, default=str)


def _baseline_items(baseline, num_samples=None, documents=False):
    """The two models side by side (per document rather than per image for a text run's),
    and the verdict."""
    noun = "documents" if documents else "images"
    keys = (
        "accuracy",
        "group_accuracy",
        "within_group_accuracy",
        "hierarchical_f1",
        "mistake_distance",
        "macs_per_image",
        "images_per_second",
        "epochs",
    )
    conditional, flat = baseline.get("conditional", {}), baseline.get("flat", {})
    rows = [
        (key.replace("image", noun[:-1]), _cell(conditional.get(key)), _cell(flat.get(key)))
        for key in keys
        if key in conditional or key in flat
    ]
    rows[4:4] = _top_k_rows(conditional, flat)
    items = [
        ("table", ("", "conditional (routed)", "flat baseline"), rows),
        ("text", baseline_verdict(conditional, flat, num_samples, noun)),
    ]
    from condnet.evaluation.mistakes import milder_mistakes

    lines = [gap_sources(conditional, flat, noun), milder_mistakes(conditional, flat)]
    return items + [("text", line) for line in lines if line]


def _top_k_rows(conditional, flat):
    """A row per k of both models' `top_k_distance`."""
    mine, theirs = conditional.get("top_k_distance") or {}, flat.get("top_k_distance") or {}
    return [
        (f"top_{k}_distance", _cell(mine.get(k)), _cell(theirs.get(k)))
        for k in dict.fromkeys([*mine, *theirs])
    ]


# === Back-off ===


def _backoff_items(section):
    """Coverage and accuracy at each depth of each model's back-off answers, the area
    under each level's risk-coverage curve, and where the thresholds come from."""
    sides = [(key, name) for key, name in BACKOFF_SIDES if section.get(key)]
    levels = list(section[sides[0][0]]["risk_coverage"])
    header = (
        "",
        *(f"{name}: {part}" for _, name in sides for part in ("threshold", "coverage", "accuracy")),
    )
    rows = [(f"answered at {level}", *_backoff_cells(section, sides, level)) for level in levels]
    rows.append(("unsure", *_backoff_cells(section, sides, "unsure")))
    rows.append(("all answers", *_backoff_cells(section, sides, "all")))
    areas = [
        (
            f"risk-coverage area, {level}",
            *(_cell(section[key]["risk_coverage"][level]["area"]) for key, _ in sides),
        )
        for level in levels
    ]
    return [
        ("text", _backoff_note(section, sides)),
        ("table", header, rows),
        ("table", ("", *(name for _, name in sides)), areas),
    ]


def _unknown_items(section):
    """Per model, the unknown-class score, its thresholds and the share of these images
    (all of known classes) it flags: false alarms, to be read against the rate the
    thresholds were chosen for."""
    rows = []
    for key, name in BACKOFF_SIDES:
        side = section.get(key)
        if side:
            shown = ", ".join(
                f"{group} {'never' if value is None else _cell(value)}"
                for group, value in side["thresholds"].items()
            )
            per_expert = ", ".join(
                f"{group} {_cell(value)}" for group, value in side["flagged_per_expert"].items()
            )
            rows.append((name, side["score"], shown, _cell(side["flagged"]), per_expert))
    note = (
        "Each image is scored by the expert it is routed to (the flat baseline: over all its "
        "classes) and flagged unknown, of its group but of none of its classes, when the "
        "score is below that expert's threshold (unknown.json, chosen on the validation split "
        "for a false-alarm rate, 0.05 by default). These images are all of known classes: "
        "every one flagged is a false alarm."
    )
    header = ("model", "score", "thresholds", "flagged here", "flagged per expert")
    return [("text", note), ("table", header, rows)]


def _backoff_cells(section, sides, level):
    cells = []
    for key, _ in sides:
        side = section[key]
        if "levels" not in side:
            cells += ["-", "-", "-"]
        elif level == "unsure":
            cells += ["", _cell(side["unsure"]), ""]
        elif level == "all":
            cells += ["", _cell(side["coverage"]), _cell(side["accuracy"])]
        else:
            entry = next(row for row in side["levels"] if row["level"] == level)
            threshold = "never" if entry["threshold"] is None else _cell(entry["threshold"])
            cells += [threshold, _cell(entry["coverage"]), _cell(entry["accuracy"])]
    return cells


def _backoff_note(section, sides):
    chosen = [name for key, name in sides if "levels" in section[key]]
    if not chosen:
        return (
            "No back-off thresholds for these models: `condnet backoff RUN_DIR` chooses them on "
            "the run's validation split. The curves show the risk (share wrong) when only the "
            "most confident images are answered."
        )
    target = section.get("target_accuracy")
    aim = f" for {target:.2f} accuracy on the validation split" if target else ""
    return (
        "Each image is answered with its class when the class probability reaches the class "
        "threshold, else with its group when the group's does, else 'unsure'. Thresholds "
        f"(backoff.json){aim}; coverage = the share of images answered at that level, "
        "accuracy = of those answers."
    )


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float) and value < 10:
        return _number(value)
    return f"{value:,.0f}" if isinstance(value, int | float) else str(value)


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
    if kind == "gallery":
        caption, figures = content
        return [f"**{_markdown_text(caption)}**", ""] + [
            f"![{_markdown_text(text)}]({name}) {_markdown_text(text)}  " for name, text in figures
        ]
    if kind == "documents":
        caption, quotes = content
        lines = [f"**{_markdown_text(caption)}**", ""]
        for text, excerpt in quotes:
            lines += [_markdown_text(text), ""]
            lines += [f"> {_markdown_text(line)}  " for line in excerpt.splitlines()] + [""]
        return lines
    return [content[0]]


def _markdown_row(cells):
    return "| " + " | ".join(_markdown_text(cell) for cell in cells) + " |"


def _markdown_text(text):
    """Escape what would break a table row or be read as an HTML tag."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<")


def _html(title, sections):
    anchors = [_anchor(heading) for heading, _ in sections]
    contents = "".join(
        f'<li><a href="#{a}">{html.escape(h)}</a></li>' for a, (h, _) in zip(anchors, sections)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f'<nav id="contents"><h2>Contents</h2><ol>{contents}</ol></nav><main>',
        f"<h1>{html.escape(title)}</h1>",
    ]
    for anchor, (heading, items) in zip(anchors, sections):
        parts.append(f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>')
        plots = [item for item in items if item[0] == "image"]
        others = [item for item in items if item[0] != "image"]
        parts += [_html_item(item) for item in others]
        if plots:
            parts.append('<div class="grid">' + "".join(_html_item(i) for i in plots) + "</div>")
        parts.append("</section>")
    return "\n".join(parts + ["</main></body></html>", ""])


def _anchor(heading):
    return "".join(c if c.isalnum() else "-" for c in heading.lower())


def _html_item(item):
    kind, *content = item
    if kind == "table":
        header, rows = content
        head = _html_row(header, "th")
        body = "\n".join(_html_row(row, "td") for row in rows)
        return f"<table>\n<thead>{head}</thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    if kind == "image":
        name = html.escape(content[0])
        wide = ' class="wide"' if content[0] in WIDE_PLOTS else ""
        return f'<figure{wide}><a href="{name}"><img src="{name}" alt="{name}"></a></figure>'
    if kind == "gallery":
        caption, figures = content
        cells = "".join(
            f'<figure class="example"><img src="{html.escape(n)}" alt="{html.escape(text)}">'
            f"<figcaption>{html.escape(text)}</figcaption></figure>"
            for n, text in figures
        )
        return f'<h3>{html.escape(caption)}</h3><div class="gallery">{cells}</div>'
    if kind == "documents":
        caption, quotes = content
        cells = "".join(
            f'<figure class="document"><figcaption>{html.escape(text)}</figcaption>'
            f"<pre>{html.escape(excerpt)}</pre></figure>"
            for text, excerpt in quotes
        )
        return f"<h3>{html.escape(caption)}</h3>{cells}"
    return f"<p>{html.escape(content[0])}</p>"


def _html_row(cells, tag):
    return "<tr>" + "".join(_html_cell(str(c), tag) for c in cells) + "</tr>"


NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?%?|-")


def _html_cell(text, tag):
    """A cell: numbers right-aligned (class "number"), text left-aligned."""
    number = tag == "td" and NUMBER.fullmatch(text) is not None
    opening = f'<{tag} class="number">' if number else f"<{tag}>"
    return f"{opening}{html.escape(text)}</{tag}>"


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

"""Tests of the report's plots."""

from PIL import Image

from condnet.evaluation import plots
from condnet.evaluation.report import write_report
from condnet.evaluation.report_test import HIERARCHY, HISTORY, make_metrics, read


def test_group_confusion_is_drawn_only_when_it_differs_from_the_routes(tmp_path):
    metrics = make_metrics()  # no gate given: the routes are the predicted groups
    same = write_report(tmp_path / "same", HIERARCHY, metrics)
    assert "group_confusion.png" not in [path.name for path in same]
    metrics["routing_matrix"] = [[30, 0], [0, 0]]  # routes that differ from the gate's choices
    differ = write_report(tmp_path / "differ", HIERARCHY, metrics)
    assert "group_confusion.png" in [path.name for path in differ]


def test_training_curves_leave_out_series_that_never_change(tmp_path, monkeypatch):
    drawn = []
    real = plots._plot_history
    monkeypatch.setattr(
        plots,
        "_plot_history",
        lambda path, history, *rest: drawn.append(history) or real(path, history, *rest),
    )
    history = {**HISTORY, "gate_loss_weight": [1.0, 1.0, 1.0]}
    write_report(tmp_path, HIERARCHY, make_metrics(), history=history)
    assert "gate_loss_weight" in drawn[0]  # given to the plot ...
    names = plots._history_names({k: v for k, v in history.items()})
    assert "gate_loss_weight" not in names  # ... which leaves it out


def test_training_curves_are_wide_and_show_the_flat_baselines_accuracy(tmp_path):
    history = {**HISTORY, "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.4, 0.6, 0.7]}
    flat = {"accuracy": [0.5, 0.6], "val_accuracy": [0.45, 0.55], "loss": [1.0, 0.9]}
    labels = [label for label, _, _ in plots._curves("accuracy", history, flat)]
    assert labels == [
        "accuracy",
        "val_accuracy",
        "flat baseline accuracy",
        "flat baseline val_accuracy",
    ]
    assert [label for label, _, _ in plots._curves("loss", history, flat)] == ["loss", "val_loss"]
    baseline = {"conditional": {"accuracy": 0.8}, "flat": {"accuracy": 0.7, "history": flat}}
    write_report(tmp_path, HIERARCHY, make_metrics(), history=history, baseline=baseline)
    with Image.open(tmp_path / "training_curves.png") as image:
        assert image.width >= 900
    assert '<figure class="wide"><a href="training_curves.png">' in read(tmp_path, "report.html")


def test_risk_coverage_axes_start_at_zero_risk_even_when_every_answer_is_right(
    tmp_path, monkeypatch
):
    figures = []
    real = plots._figure
    monkeypatch.setattr(plots, "_figure", lambda *size: figures.append(real(*size)) or figures[-1])
    flawless = {"coverage": [0.5, 1.0], "risk": [0.0, 0.0]}
    section = {
        side: {"risk_coverage": {"group": flawless, "class": flawless}}
        for side in ("conditional", "flat")
    }
    plots._plot_risk_coverage(tmp_path / "risk.png", section)
    assert [axes.get_ylim()[0] for axes in figures[0].axes] == [0.0, 0.0]
    assert all(axes.get_ylim()[1] > 0 for axes in figures[0].axes)

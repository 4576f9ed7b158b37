import csv
import json
import re

import pytest

from condnet.runs.cli import main
from condnet.runs.compare import compare_runs


def _run(folder, accuracy, routed, seconds, baseline=None):
    folder.mkdir(parents=True)
    metrics = {
        "accuracy": accuracy,
        "gate_accuracy": 0.9,
        "hierarchical_f1": accuracy + 0.1,
        "mixture": {"accuracy": accuracy + 0.01},
        "macs_per_image": {"routed": routed, "all_experts": 2 * routed},
        "training_routing": "soft",
    }
    if baseline is not None:
        metrics["baseline"] = {"flat": {"accuracy": baseline}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.json").write_text(json.dumps({"options": {"backbone": "small_cnn"}}))
    with open(folder / "history.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "epoch_seconds"])
        writer.writeheader()
        writer.writerows({"epoch": i + 1, "epoch_seconds": s} for i, s in enumerate(seconds))
    return folder


def test_compare_orders_runs_and_reads_macs_baseline_and_time(tmp_path):
    a = _run(tmp_path / "runs" / "a", 0.61, 2_000_000, [30, 30], baseline=0.6)
    b = _run(tmp_path / "runs" / "b", 0.72, 5_000_000, [60, 60, 60])
    rows = compare_runs([tmp_path / "runs"])  # a folder of runs
    assert [r["run"] for r in rows] == [str(b), str(a)]
    assert rows[0]["routed_mmacs"] == 5.0 and rows[0]["all_experts_mmacs"] == 10.0
    assert rows[0]["epochs"] == 3 and rows[0]["train_minutes"] == 3.0
    assert rows[1]["baseline"] == 0.6 and rows[0]["baseline"] is None


def test_compare_lists_back_off_and_unknown_class_figures_of_a_run(tmp_path, capsys):
    a = _run(tmp_path / "a", 0.6, 1_000_000, [10])
    metrics = json.loads((a / "metrics.json").read_text())
    metrics["backoff"] = {"conditional": {"accuracy": 0.95, "coverage": 0.7}}
    (a / "metrics.json").write_text(json.dumps(metrics))
    entry = {"score": "mahalanobis", "thresholds": {"x": -3.5}, "there": {"flagged": 0.048}}
    (a / "unknown.json").write_text(json.dumps({"models": {"model.keras": entry}}))
    b = _run(tmp_path / "b", 0.5, 1_000_000, [10])  # neither file: blank columns
    (b / "unknown.json").write_text("[1]")  # damaged: blank, with a warning naming it
    rows = {row["run"]: row for row in compare_runs([a, b])}
    assert rows[str(a)]["backoff_accuracy"] == 0.95 and rows[str(a)]["backoff_coverage"] == 0.7
    assert rows[str(a)]["unknown_score"] == "mahalanobis"
    assert rows[str(a)]["unknown_flagged"] == 0.048
    assert rows[str(b)]["backoff_accuracy"] is None and rows[str(b)]["unknown_score"] is None
    assert "unknown.json cannot be used" in capsys.readouterr().err


def test_cli_compare_prints_writes_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = _run(tmp_path / "a", 0.5, 1_000_000, [10])
    b = _run(tmp_path / "b", 0.7, 3_000_000, [20])
    out, plot = tmp_path / "table.csv", tmp_path / "runs.png"
    assert main(["compare", str(a), str(b), "--output", str(out), "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert printed.index(str(b)) < printed.index(str(a))  # most accurate first
    with open(out, newline="") as handle:
        assert [row["run"] for row in csv.DictReader(handle)] == [str(b), str(a)]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_refuses_a_folder_that_holds_no_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    assert "is not a finished condnet run" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "empty"), "--output", "x.txt"]) == 2
    assert "--output must end in" in capsys.readouterr().err


def test_compare_shows_blanks_and_leaves_out_runs_whose_files_cannot_be_used(tmp_path, capsys):
    good = _run(tmp_path / "good", 0.7, 1_000_000, [10], baseline=0.6)
    empty = _run(tmp_path / "empty", 0.5, 1_000_000, [10])
    (empty / "metrics.json").write_text("{}")
    no_baseline = _run(tmp_path / "no_baseline", 0.6, 1_000_000, [10])
    metrics = json.loads((no_baseline / "metrics.json").read_text())
    (no_baseline / "metrics.json").write_text(json.dumps({**metrics, "baseline": None}))
    listed = _run(tmp_path / "listed", 0.9, 1_000_000, [10])
    (listed / "metrics.json").write_text("[]")
    odd_config = _run(tmp_path / "odd_config", 0.8, 1_000_000, [10])
    (odd_config / "config.json").write_text("[1]")
    odd_history = _run(tmp_path / "odd_history", 0.4, 1_000_000, [10])
    (odd_history / "history.csv").write_bytes(b"epoch,epoch_seconds\n1,\xff\xfe\n")
    assert main(["compare", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    rows = {row["run"]: row for row in json.loads(captured.out)}
    assert list(rows) == [str(r) for r in (odd_config, good, no_baseline, odd_history, empty)]
    assert rows[str(empty)]["accuracy"] is None and rows[str(empty)]["routed_mmacs"] is None
    assert rows[str(no_baseline)]["baseline"] is None and rows[str(good)]["baseline"] == 0.6
    assert rows[str(odd_config)]["backbone"] is None and rows[str(odd_config)]["accuracy"] == 0.8
    assert rows[str(odd_history)]["epochs"] is None
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 3 and all(w.startswith("condnet compare: warning: ") for w in warnings)
    (left_out,) = [w for w in warnings if str(listed / "metrics.json") in w]
    assert "left out: The run's metrics.json cannot be used: it holds a JSON array" in left_out
    assert any(str(odd_config / "config.json") in w and "blank columns" in w for w in warnings)
    assert any(str(odd_history / "history.csv") in w for w in warnings)
    assert "| - |" in main_table([str(empty)], capsys)


def main_table(runs, capsys):
    assert main(["compare", *runs]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "content, problem",
    [
        ("[]", "it holds a JSON array where an object of metrics is expected"),
        ("", r"it is empty \(0 bytes\)"),
        ('{"accuracy": "high"}', r"its entry \['accuracy'\] is 'high', where a number from 0"),
        ('{"accuracy": NaN}', r"its entry \['accuracy'\] is nan"),
        (
            '{"baseline": {"flat": []}}',
            r"its entry \['baseline'\]\['flat'\] is \[\], where an object",
        ),
        ('{"macs_per_image": {"routed": -5}}', r"\['routed'\] is -5, where a finite number >= 0"),
    ],
)
def test_compare_refuses_in_one_line_when_no_run_is_left(tmp_path, capsys, content, problem):
    run = _run(tmp_path / "run", 0.5, 1_000_000, [10])
    (run / "metrics.json").write_text(content)
    assert main(["compare", str(run)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "No run to compare: The run's metrics.json cannot be used: " in err
    assert re.search(problem, err) and str(run / "metrics.json") in err


def test_compare_shows_how_far_each_run_s_mistakes_miss_beside_its_baseline(tmp_path, capsys):
    run = _run(tmp_path / "a", 0.6, 1_000_000, [10], baseline=0.62)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["mistake_distance"] = 1.25
    metrics["baseline"]["flat"]["mistake_distance"] = 1.5
    (run / "metrics.json").write_text(json.dumps(metrics))
    (row,) = compare_runs([run])
    assert (row["mistake_distance"], row["baseline_mistake_distance"]) == (1.25, 1.5)
    assert main(["compare", str(run)]) == 0
    header, _, line = capsys.readouterr().out.splitlines()[:3]
    cells = dict(zip(header.split(" | "), line.split(" | ")))
    assert (cells["mistake_distance"], cells["baseline_mistake_distance"]) == ("1.2500", "1.5000")
    metrics["mistake_distance"] = -1  # a distance is never negative
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"\['mistake_distance'\] is -1, where a finite number"):
        compare_runs([run])

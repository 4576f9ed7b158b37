import csv
import json

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

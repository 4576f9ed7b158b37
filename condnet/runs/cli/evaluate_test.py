"""`condnet evaluate`."""

import json

import pytest

from condnet.runs.cli import main


@pytest.mark.slow
def test_cli_evaluate_prints_the_json_contract(trained, capsys):
    assert main(["evaluate", str(trained / "run"), str(trained / "data" / "test"), "--json"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)  # progress goes to stderr: stdout stays one object
    assert metrics["num_samples"] == 6 * 3
    for label in ("hard routing", "soft routing", "flat baseline"):
        assert f"{label}: 1/1 batches" in captured.err
    for key in ("accuracy", "group_accuracy", "hierarchical_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    routing = metrics["routing"]
    assert sum(routing["samples_per_expert"].values()) == 18
    assert set(routing["samples_per_expert"]) == {"angular", "round"}
    assert 0.0 <= routing["wrong_expert_share"] <= 1.0
    assert (trained / "run" / "evaluation" / "report.md").is_file()


@pytest.mark.slow
def test_cli_evaluate_prints_the_verdict_and_where_the_gap_is(trained, capsys):
    assert main(["evaluate", str(trained / "run"), str(trained / "data" / "test")]) == 0
    out = capsys.readouterr().out
    written = json.loads((trained / "run" / "evaluation" / "metrics.json").read_text())
    assert written["baseline"]["verdict"] in out
    assert written["baseline"]["where"] in out and "Where: the right group for" in out


def test_cli_evaluate_titles_its_table_with_the_folder_and_the_routing(colour_run, capsys):
    run, data = colour_run
    assert main(["evaluate", str(run), str(data), "--routing", "soft", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{data} (8 images), soft routing (every expert runs, mixed by the gate):"
    assert "hard routed accuracy: " in lines[-1]

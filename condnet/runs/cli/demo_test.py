"""`condnet demo`."""

import pytest

from condnet.runs.cli import main


@pytest.mark.one_backend(
    reason=(
        "the demo chains train, evaluate and report, each tested on every backend in its own "
        "module; the chain itself is backend-independent and costs minutes per backend"
    )
)
@pytest.mark.slow
def test_cli_demo_runs_end_to_end(tmp_path, capsys):
    sizes = ["--samples-per-class", "10", "--test-samples-per-class", "5"]
    code = main(["demo", "--out", str(tmp_path), "--epochs", "1", *sizes, "--quiet"])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("Expected time on this machine: about ")  # progress
    printed = captured.out  # results
    assert "Expected time" not in printed
    assert "Test set (30 images), hard-routed (only the chosen expert runs):" in printed
    assert "accuracy" in printed
    assert (tmp_path / "run" / "test-report" / "report.md").is_file()

import json

import common


def test_write_results_keeps_one_file_per_benchmark_and_one_key_per_variant(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    common.write_results("probe", "quick", {"value": 1}, "Probe: jax (quick)", "first")
    common.write_results("probe", "full", {"value": 2}, "Probe: jax", "second")
    markdown = common.write_results("probe", "quick", {"value": 3}, "Probe: jax (quick)", "third")
    assert json.loads((tmp_path / "probe-jax.json").read_text()) == {
        "quick": {"value": 3},
        "full": {"value": 2},
    }
    assert markdown == tmp_path / "probe.md"
    text = markdown.read_text()
    assert "third" in text and "second" in text and "first" not in text
    assert text.index("## Probe: jax (quick)") < text.index("## Probe: jax\n")


def test_read_results_of_a_benchmark_without_a_file_is_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    assert common.read_results("nothing", "torch") == {}

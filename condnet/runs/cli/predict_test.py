"""`condnet predict`."""

import json

import pytest

from condnet.runs.cli import main


def _json_lines(text):
    return [json.loads(line) for line in text.strip().splitlines()]


@pytest.mark.slow
def test_cli_predict_prints_one_json_object_per_image(trained, capsys):
    folder = trained / "data" / "test" / "round" / "ring"
    assert main(["predict", str(trained / "run"), str(folder), "--json"]) == 0
    captured = capsys.readouterr()
    rows = _json_lines(captured.out)
    assert "predicting: 1/1 batches" in captured.err and f", {len(rows)} images" in captured.err
    assert main(["predict", str(trained / "run"), str(folder), "--json", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert [row["path"] for row in rows] == sorted(str(p) for p in folder.glob("*.png"))
    hierarchy = {"angular": ["square", "star", "triangle"], "round": ["circle", "ellipse", "ring"]}
    for row in rows:
        assert row["class"] in hierarchy[row["group"]]  # consistent with the hierarchy
        assert 0 < row["confidence"] <= 1
        assert abs(sum(row["group_probabilities"].values()) - 1) < 1e-4


def test_cli_predict_with_output_prints_a_summary_not_the_rows(colour_run, tmp_path, capsys):
    run, data = colour_run
    rows = tmp_path / "rows.csv"
    assert main(["predict", str(run), str(data), "--output", str(rows), "--quiet"]) == 0
    assert capsys.readouterr().out == f"Wrote 8 rows (one per input) to {rows}\n"
    assert len(rows.read_text().splitlines()) == 1 + 8  # the header, then one row per image
    jsonl = tmp_path / "rows.jsonl"
    assert main(["predict", str(run), str(data), "--output", str(jsonl), "--json", "--quiet"]) == 0
    printed = _json_lines(capsys.readouterr().out)  # --json: the rows on stdout as well
    assert printed == _json_lines(jsonl.read_text()) and len(printed) == 8
    assert main(["predict", str(run), str(data / "cool" / "blue"), "--quiet"]) == 0
    table = capsys.readouterr().out.splitlines()  # no --output: the table on stdout
    assert table[0].split("\t") == ["path", "group", "class", "expert", "confidence"]
    assert [line.split("\t")[2] for line in table[1:]] == ["blue", "blue"]

import json

import pytest

from condnet.data.demo_data import make_shapes_dataset
from condnet.runs.cli import build_parser, main

TRAIN = ["--epochs", "1", "--image-size", "32", "--batch-size", "16", "--no-augment", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_shapes_dataset(root / "data", samples_per_class=8, image_size=32, test_samples_per_class=3)
    code = main(
        [
            "train",
            str(root / "data" / "train"),
            "--out",
            str(root / "run"),
            "--routing",
            "hard",
            *TRAIN,
        ]
    )
    assert code == 0
    return root


def _json_lines(text):
    return [json.loads(line) for line in text.strip().splitlines()]


@pytest.mark.slow
def test_cli_train_writes_the_run(trained):
    for name in ("model.keras", "config.json", "history.csv", "report.md"):
        assert (trained / "run" / name).is_file()


@pytest.mark.slow
def test_cli_evaluate_prints_the_json_contract(trained, capsys):
    assert main(["evaluate", str(trained / "run"), str(trained / "data" / "test"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_samples"] == 6 * 3
    for key in ("accuracy", "group_accuracy", "hierarchical_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    routing = metrics["routing"]
    assert sum(routing["samples_per_expert"].values()) == 18
    assert set(routing["samples_per_expert"]) == {"angular", "round"}
    assert 0.0 <= routing["wrong_expert_share"] <= 1.0
    assert (trained / "run" / "evaluation" / "report.md").is_file()


@pytest.mark.slow
def test_cli_predict_prints_one_json_object_per_image(trained, capsys):
    folder = trained / "data" / "test" / "round" / "ring"
    assert main(["predict", str(trained / "run"), str(folder), "--json"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert [row["path"] for row in rows] == sorted(str(p) for p in folder.glob("*.png"))
    hierarchy = {"angular": ["square", "star", "triangle"], "round": ["circle", "ellipse", "ring"]}
    for row in rows:
        assert row["class"] in hierarchy[row["group"]]  # consistent with the hierarchy
        assert 0 < row["confidence"] <= 1
        assert abs(sum(row["group_probabilities"].values()) - 1) < 1e-4


@pytest.mark.slow
def test_cli_info_reports_parameters_and_compute_per_route(trained, capsys):
    assert main(["info", str(trained / "run"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["parameters"]) == {"trunk", "gate", "expert angular", "expert round"}
    routes = info["macs_per_route"]
    shared = info["macs"]["trunk"] + info["macs"]["gate"]
    assert routes["round"] == shared + info["macs"]["expert round"]
    assert info["macs_all_experts"] > max(routes.values()) > shared > 0
    assert main(["info", str(trained / "run")]) == 0
    assert "MACs per image by route" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_refuses_to_overwrite_a_run(trained, capsys):
    code = main(["train", str(trained / "data" / "train"), "--out", str(trained / "run"), *TRAIN])
    assert code == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "/nonexistent/images", "--out", "{tmp}/run"], "/nonexistent/images"),
        (["train", "{tmp}", "--out", "{tmp}/run", "--resume"], "no run to resume"),
        (["evaluate", "{tmp}", "{tmp}"], "is not a finished condnet run"),
        (["predict", "{tmp}", "x.png"], "is not a finished condnet run"),
    ],
)
def test_cli_errors_say_what_was_wrong(tmp_path, capsys, argv, message):
    assert main([arg.format(tmp=tmp_path) for arg in argv]) == 2
    assert message in capsys.readouterr().err


def test_every_cli_option_has_help_text():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"train", "evaluate", "predict", "info", "demo", "cv", "calibrate"}
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"condnet {name} {action.option_strings or action.dest}"


@pytest.mark.slow
def test_cli_demo_runs_end_to_end(tmp_path, capsys):
    code = main(
        ["demo", "--out", str(tmp_path), "--epochs", "1", "--samples-per-class", "10", "--quiet"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Test set (600 images)" in printed
    assert "accuracy" in printed
    assert (tmp_path / "run" / "test-report" / "report.md").is_file()

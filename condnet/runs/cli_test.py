import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from condnet.data.demo_data import make_shapes_dataset
from condnet.runs.cli import build_parser, main
from condnet.runs.lock import LOCK
from condnet.runs.options import TrainingOptions

TRAIN = ["--epochs", "1", "--image-size", "32", "--batch-size", "16", "--no-augment", "--quiet"]
TRAIN += ["--no-tensorboard"]


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


@pytest.fixture
def colour_run(tmp_path):
    """A finished run of the exact colour model and a folder of plain colour images."""
    from condnet.evaluation.evaluate_test import colour_model, make_colour_folders

    run = tmp_path / "run"
    run.mkdir()
    colour_model().save(run / "model.keras")
    options = {"image_size": 8, "color_mode": "rgb"}
    (run / "config.json").write_text(json.dumps({"options": options}))
    return run, make_colour_folders(tmp_path / "data", per_class=2)


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
        # a missing folder is named as missing whatever the image size (auto reads images)
        (
            ["train", "/nonexistent/images", "--out", "{tmp}/run"],
            "image folder does not exist: '/nonexistent/images'",
        ),
        (
            ["train", "/nonexistent/images", "--out", "{tmp}/run", "--image-size", "32"],
            "image folder does not exist: '/nonexistent/images'",
        ),
        (["train", "{tmp}/file", "--out", "{tmp}/run"], "file' is a file; DATA_DIR is the folder"),
        (
            ["train", "{tmp}/data", "--out", "{tmp}/run", "--image-size", "32"]
            + ["--hierarchy", "missing-groups.json"],
            "No such hierarchy file: 'missing-groups.json'",
        ),
        (["train", "{tmp}", "--out", "{tmp}/run", "--resume"], "no run to resume"),
        (["train", "{tmp}", "--out", "{tmp}/run", "--seed", "-1"], "--seed / seed must be"),
        (["train", "{tmp}", "--out", "{tmp}/run", "--learning-rate", "nan"], "finite number"),
        (["train", "{tmp}", "--out", "{tmp}/run", "--image-size", "4096"], "memory"),
        (["train", "{tmp}", "--out", "{tmp}/run"], "is inside the image folder DATA_DIR"),
        (["train", "{tmp}/data", "--out", "{tmp}/file/run"], "lies under the file"),
        (
            ["train", "{tmp}/data", "--out", "{tmp}/run", "--image-size", "32"]
            + ["--hierarchy", "{tmp}/bad.json"],
            "bad.json",
        ),
        (["train", "{tmp}/data", "--out", "{tmp}/run", "--resume", "--overwrite"], "pass one"),
        (
            ["train", "{tmp}/data", "--out", "{tmp}/run", "--strategy", "staged", "--epochs", "1"],
            "needs --epochs / epochs of 2 or more",
        ),
        (["evaluate", "{tmp}", "{tmp}"], "is not a finished condnet run"),
        (["predict", "{tmp}", "x.png"], "is not a finished condnet run"),
        (["calibrate", "{tmp}/missing"], "is not a folder"),
    ],
)
def test_cli_errors_say_what_was_wrong(tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "bad.json").write_text('{"round": ')
    (tmp_path / "data" / "round" / "ring").mkdir(parents=True)
    assert main([arg.format(tmp=tmp_path) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2


def test_cli_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="--seed / seed must be an int >= 0"):
        main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--seed", "-1", "--debug"])


def test_cli_turns_os_errors_into_a_message_naming_the_file(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "run"))

    monkeypatch.setattr("condnet.runs.recipe.train", refuse)
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"Permission denied: '{tmp_path / 'run'}'" in err and "Traceback" not in err


def test_cli_train_titles_its_table_with_the_split_and_the_routing(tmp_path, capsys, monkeypatch):
    from condnet.evaluation.report_test import make_metrics

    metrics = {**make_metrics(), "inference_routing": "hard", "scored_on": "validation split"}
    monkeypatch.setattr("condnet.runs.recipe.train", lambda *args, **kwargs: {"metrics": metrics})
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().out.splitlines()
    title = "Validation split (30 images), hard-routed (only the chosen expert runs):"
    assert lines[0] == title and lines[1].split() == ["metric", "value"]


def test_cli_evaluate_titles_its_table_with_the_folder_and_the_routing(colour_run, capsys):
    run, data = colour_run
    assert main(["evaluate", str(run), str(data), "--routing", "soft", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{data} (8 images), soft routing (every expert runs, mixed by the gate):"
    assert "hard routed accuracy: " in lines[-1]


def test_cli_version_needs_no_backend(capsys, monkeypatch):
    from condnet import __version__

    monkeypatch.setenv("KERAS_BACKEND", "foo")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"condnet {__version__}"


@pytest.mark.parametrize(
    "backend, installed, message",
    [
        ("foo", True, "KERAS_BACKEND='foo' is not one of tensorflow, jax, torch"),
        ("jax", False, "KERAS_BACKEND=jax, but jax is not installed: pip install 'condnet[jax]'"),
    ],
)
def test_cli_checks_the_backend_first(tmp_path, capsys, monkeypatch, backend, installed, message):
    monkeypatch.setenv("KERAS_BACKEND", backend)
    monkeypatch.setattr("condnet.runs._backend._installed", lambda name: installed)
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_flags_are_generated_from_the_options():
    commands = build_parser()._subparsers._group_actions[0].choices
    flags = {}
    for action in commands["train"]._actions:
        if action.option_strings:
            flags.setdefault(action.dest, action)  # a field's own flag comes first
    for field in dataclasses.fields(TrainingOptions):
        if not field.metadata["cli"]:
            assert field.name not in flags
            continue
        action = flags[field.name]
        assert f"--{field.name.replace('_', '-')}" in action.option_strings
        assert action.help.startswith(field.metadata["help"])
        assert action.choices == field.metadata["argparse"].get("choices")
    cv_flags = {a.dest for a in commands["cv"]._actions}
    assert "validation_split" not in cv_flags and "learning_rate" in cv_flags


def test_train_help_lists_every_option_under_a_topic():
    from condnet.runs.options import HELP_GROUPS

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    titled = {group.title: group._group_actions for group in train._action_groups}
    topics = ["run directory", *HELP_GROUPS, "several processes", "progress"]
    assert list(titled)[2:] == topics  # after "positional arguments" and "options"
    untitled = {a.dest for a in titled["options"]}  # argparse's own group
    assert untitled == {"help", "debug"}
    for title, names in HELP_GROUPS.items():
        assert names and {a.dest for a in titled[title]} == set(names)
    fields = [f.name for f in dataclasses.fields(TrainingOptions) if f.metadata["cli"]]
    listed = [name for names in HELP_GROUPS.values() for name in names]
    assert sorted(listed) == sorted(fields)  # each option in exactly one topic
    sections = {part.split(":")[0]: part for part in train.format_help().split("\n\n")}
    assert "--image-size" in sections["data"]
    assert "--confidence-threshold" in sections["routing"]


def test_cli_passes_only_the_flags_given():
    from condnet.runs.cli import given_options

    parser = build_parser()
    args = parser.parse_args(["train", "d", "--out", "r", "--no-augment", "--filters", "8", "16"])
    assert given_options(args) == {"augment": "none", "filters": (8, 16)}
    options = TrainingOptions(**given_options(args))
    assert options.epochs == TrainingOptions().epochs  # the default lives in one place


def test_cli_refuses_a_train_while_another_holds_the_run(tmp_path, capsys):
    make_shapes_dataset(tmp_path / "data", samples_per_class=4, image_size=16)
    (tmp_path / "run").mkdir()
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "time": "T", "command": "c"}
    (tmp_path / "run" / LOCK).write_text(json.dumps(holder))
    argv = ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *TRAIN]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"locked by pid {os.getppid()} on host {socket.gethostname()} since T" in err
    assert os.listdir(tmp_path / "run") == [LOCK]


@pytest.mark.slow
def test_cli_resume_refuses_a_changed_option_and_trains_more_epochs(trained, tmp_path, capsys):
    run = shutil.copytree(trained / "run", tmp_path / "run")
    data = str(trained / "data" / "train")
    resume = ["train", data, "--out", str(run), "--resume", "--quiet"]
    assert main([*resume, "--routing", "soft"]) == 2
    assert "--routing / routing 'soft' differs from the run's 'hard'" in capsys.readouterr().err
    assert main([*resume, "--epochs", "2"]) == 0
    assert json.loads((run / "state.json").read_text())["epoch"] == 2


def test_every_cli_option_has_help_text():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {
        *("train", "evaluate", "predict", "info", "demo", "cv", "calibrate", "export", "serve"),
        *("compare", "ensemble", "tune", "backoff", "unknown", "explain", "extend"),
    }
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"condnet {name} {action.option_strings or action.dest}"


def test_every_cli_option_names_its_default_once():
    commands = build_parser()._subparsers._group_actions[0].choices
    for name, command in commands.items():
        for action in command._actions:
            shown = f"condnet {name} {action.option_strings}: {action.help}"
            assert action.help.count("(default") <= 1, shown
    train = {a.dest: a.help for a in commands["train"]._actions}
    assert train["weights"].endswith("(default: train from scratch)")
    assert train["seed"].endswith("(default: 1337)")


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


def test_verbosity_is_one_line_per_epoch_outside_a_terminal(monkeypatch):
    import argparse

    from condnet.runs.cli import _verbosity

    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert _verbosity(argparse.Namespace(quiet=False)) == 2
    assert _verbosity(argparse.Namespace(quiet=True)) == 0
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert _verbosity(argparse.Namespace(quiet=False)) == "auto"
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    args = build_parser().parse_args(["train", "data", "--out", "run", "--verbose"])
    assert _verbosity(args) == 1  # a bar per batch, even into a log
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "data", "--out", "run", "--verbose", "--quiet"])


HELP_WITHOUT_KERAS = """
import sys, sysconfig
# As the installed console script runs: its path in this Python's scripts folder.
sys.argv = [sysconfig.get_path("scripts") + "/condnet", *sys.argv[1:]]
from condnet.runs.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("KERAS IMPORTED" if "keras" in sys.modules else "NO KERAS")
"""


@pytest.mark.parametrize("words", [["--help"], ["train", "--help"], ["export", "--help"]])
def test_help_answers_without_importing_keras(words):
    done = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_KERAS, *words],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "usage: condnet" in done.stdout
    assert done.stdout.strip().endswith("NO KERAS")


def test_the_module_runs_as_a_script_with_every_subcommand_defined():
    # `python -m condnet.runs.cli` once stopped at a `__main__` block placed before
    # the later subcommands were defined.
    done = subprocess.run(
        [sys.executable, "-m", "condnet.runs.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "usage: condnet serve" in done.stdout

"""`condnet train`: the run it writes, resuming, refusals, its help."""

import dataclasses
import json
import os
import shutil
import socket

import pytest

from condnet.data.demo_data import make_shapes_dataset
from condnet.runs.cli import build_parser, main
from condnet.runs.cli.conftest import TRAIN
from condnet.runs.lock import LOCK
from condnet.runs.options import TrainingOptions


@pytest.mark.slow
def test_cli_train_writes_the_run(trained):
    for name in ("model.keras", "config.json", "history.csv", "report.md"):
        assert (trained / "run" / name).is_file()


@pytest.mark.slow
def test_cli_refuses_to_overwrite_a_run(trained, capsys):
    code = main(["train", str(trained / "data" / "train"), "--out", str(trained / "run"), *TRAIN])
    assert code == 2
    assert "already holds a run" in capsys.readouterr().err


def test_cli_train_titles_its_table_with_the_split_and_the_routing(tmp_path, capsys, monkeypatch):
    from condnet.evaluation.report_test import make_metrics

    metrics = {**make_metrics(), "inference_routing": "hard", "scored_on": "validation split"}
    monkeypatch.setattr("condnet.runs.recipe.train", lambda *args, **kwargs: {"metrics": metrics})
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().out.splitlines()
    title = "Validation split (30 images), hard-routed (only the chosen expert runs):"
    assert lines[0] == title and lines[1].split() == ["metric", "value"]


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

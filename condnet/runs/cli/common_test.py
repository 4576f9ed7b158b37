"""The flags generated from the typed options, and progress."""

import dataclasses
import re
from pathlib import Path

import pytest

from condnet.choices import INFERENCE_ROUTINGS
from condnet.runs.cli import build_parser, main
from condnet.runs.cli.common import given_options, inference_options, verbosity
from condnet.runs.options import InferenceOptions, TrainingOptions


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


def test_cli_passes_only_the_flags_given():
    parser = build_parser()
    args = parser.parse_args(["train", "d", "--out", "r", "--no-augment", "--filters", "8", "16"])
    assert given_options(args) == {"augment": "none", "filters": (8, 16)}
    options = TrainingOptions(**given_options(args))
    assert options.epochs == TrainingOptions().epochs  # the default lives in one place


def test_verbosity_is_one_line_per_epoch_outside_a_terminal(monkeypatch):
    import argparse

    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert verbosity(argparse.Namespace(quiet=False)) == 2
    assert verbosity(argparse.Namespace(quiet=True)) == 0
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert verbosity(argparse.Namespace(quiet=False)) == "auto"
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    args = build_parser().parse_args(["train", "data", "--out", "run", "--verbose"])
    assert verbosity(args) == 1  # a bar per batch, even into a log
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "data", "--out", "run", "--verbose", "--quiet"])


INFERENCE_COMMANDS = ("evaluate", "predict", "export", "serve")


def test_inference_flags_are_generated_from_the_inference_options():
    commands = build_parser()._subparsers._group_actions[0].choices
    fields = {field.name: field for field in dataclasses.fields(InferenceOptions)}
    for name in INFERENCE_COMMANDS:
        flags = [a for a in commands[name]._actions if a.option_strings]
        dests = [a.dest for a in flags]
        assert len(dests) == len(set(dests)), name  # each flag once
        for action in flags:
            if action.dest in fields:
                meta = fields[action.dest].metadata["argparse"]
                assert action.option_strings == [f"--{action.dest.replace('_', '-')}"]
                assert action.choices == meta.get("choices")
                assert action.nargs == meta.get("nargs", action.nargs)
        assert {"routing", "model"} <= set(dests), name
    for name in ("predict", "serve"):
        assert {"back_off", "thresholds", "unknown"} <= {a.dest for a in commands[name]._actions}
    assert fields["routing"].metadata["argparse"]["choices"] == INFERENCE_ROUTINGS


def test_no_inference_flag_is_spelled_in_a_command_module():
    flags = {f'"--{f.name.replace("_", "-")}"' for f in dataclasses.fields(InferenceOptions)}
    for name in (*INFERENCE_COMMANDS, "info", "ensemble"):
        source = (Path(__file__).parent / f"{name}.py").read_text()
        assert not [flag for flag in flags if flag in source], name


def test_inference_flags_keep_each_command_default():
    parser = build_parser()
    evaluate = parser.parse_args(["evaluate", "run", "data"])
    predict = parser.parse_args(["predict", "run", "x.png", "--thresholds", "group=0.8"])
    assert inference_options(evaluate).routing == "hard"
    assert inference_options(predict).routing is None  # the routing the model was saved with
    assert inference_options(predict).thresholds == {"group": 0.8}
    assert inference_options(predict).batch_size == InferenceOptions().batch_size
    commands = parser._subparsers._group_actions[0].choices
    assert "(default: the model saved in the run)" in commands["predict"].format_help()
    routing = next(a for a in commands["evaluate"]._actions if a.dest == "routing")
    assert routing.help.endswith("(default: hard)")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"batch_size": 0}, ValueError, "--batch-size / batch_size must be an int >= 1. "),
        ({"batch_size": 2.5}, TypeError, "Received: batch_size=2.5"),
        ({"routing": "gumbel"}, ValueError, "--routing / routing must be one of"),
        ({"thresholds": ["group"]}, ValueError, "Received: --thresholds group"),
        ({"thresholds": 0.8}, TypeError, "--thresholds / thresholds must be LEVEL=P"),
        ({"quiet": "yes"}, TypeError, "--quiet / quiet must be True or False"),
        ({"model": 3}, TypeError, "--model / model must be a string or None. Received: model=3"),
    ],
)
def test_inference_options_refuse_a_bad_value_naming_the_flag(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        InferenceOptions(**kwargs)


def test_inference_options_keep_a_good_value():
    options = InferenceOptions(routing="soft", thresholds=["group=0.8", "class=never"])
    assert options.thresholds == {"group": 0.8, "class": None}
    assert dataclasses.replace(options, batch_size=8).batch_size == 8


@pytest.mark.parametrize("command", [["evaluate", "{tmp}", "{tmp}"], ["predict", "{tmp}", "x.png"]])
def test_cli_refuses_a_bad_inference_flag_before_reading_the_run(tmp_path, capsys, command):
    argv = [word.format(tmp=tmp_path) for word in command] + ["--batch-size", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--batch-size / batch_size must be an int >= 1. Received: batch_size=0" in err
    assert "not a finished condnet run" not in err  # checked before the run is read

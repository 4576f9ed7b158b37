"""`main`: errors in one line, the backend checked first, help without Keras, every
subcommand listed."""

import re
import subprocess
import sys

import pytest

from condnet.runs.cli import build_parser, main


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


def test_the_module_runs_as_a_script_listing_every_subcommand():
    done = subprocess.run(
        [sys.executable, "-m", "condnet.runs.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith("usage: condnet")
    listed = set(re.findall(r"^ {4}(\w+)", done.stdout, re.M))  # a wrapped help is indented more
    commands = build_parser()._subparsers._group_actions[0].choices
    assert listed == set(commands) and len(commands) == 16
    serve = subprocess.run(
        [sys.executable, "-m", "condnet.runs.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert serve.stdout.startswith("usage: condnet serve")

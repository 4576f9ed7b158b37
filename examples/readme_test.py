"""Every code block of the README runs (python) or parses (shell) as written.

Python blocks run in order in one namespace (later blocks may use names of
earlier ones, as a reader would), in a temporary folder that holds a small
shapes data set at `runs/demo/data/{train,test}`, where the walkthrough puts it.

Shell blocks: every `condnet ...` line is parsed by the CLI's own parser, so a
flag the README shows that the CLI lacks (or a bad choice) fails here; install
lines (`pip`, `git`, `python -m venv`) and the test loop are not parsed. The
walkthrough's block runs as written, in order, in a temporary folder, with two
changes that keep it short: 1 epoch per run (2 for the resume that lengthens one)
and a small data set (8 images per class).
"""

import json
import os
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


@pytest.fixture
def demo_folder(tmp_path, monkeypatch):
    from condnet.data.demo_data import make_shapes_dataset

    make_shapes_dataset(
        tmp_path / "runs" / "demo" / "data",
        samples_per_class=12,
        image_size=32,
        test_samples_per_class=4,
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_readme_python_blocks_run_as_written(demo_folder, capsys):
    namespace = {}
    for index, block in enumerate(_blocks("python")):
        exec(compile(block, f"README python block {index + 1}", "exec"), namespace)
    assert (demo_folder / "runs" / "cats_and_dogs.keras").is_file()
    outputs = namespace["outputs"]
    assert outputs["classes"].shape == (64, 5)
    printed = capsys.readouterr().out
    assert any(name in printed for name in ("persian", "siamese", "beagle", "pug", "boxer"))


def _command_lines(blocks=None):
    for block in _blocks("bash") if blocks is None else blocks:
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            words = shlex.split(line.split(" #")[0])
            while words and "=" in words[0] and not words[0].startswith("-"):
                words.pop(0)  # environment variables before the command: KERAS_BACKEND=jax
            if words[:1] == ["condnet"]:
                yield shlex.join(words)


def test_readme_shows_condnet_commands():
    assert len(list(_command_lines())) >= 8


@pytest.mark.parametrize("line", list(_command_lines()))
def test_readme_command_parses(line):
    from condnet.runs.cli import build_parser

    words = shlex.split(line)[1:]
    try:
        build_parser().parse_args(words)
    except SystemExit as exit:
        assert exit.code == 0, f"the CLI rejects the README line: {line}"


# === The walkthrough, run ===

WALKTHROUGH = "## Walkthrough"
SHORTER = {"--epochs": "1"}  # every run trains 1 epoch ...
SHORTER_RESUME = {"--epochs": "2"}  # ... and the resume that lengthens one, 2
SMALL_DATA = ["--samples-per-class", "8", "--test-samples-per-class", "2"]


def _walkthrough_lines():
    """The `condnet` lines of the walkthrough's bash blocks, in order, as argument lists."""
    text = README.read_text()
    start = text.index(WALKTHROUGH)
    section = text[start : text.index("\n## ", start + 1)]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [shlex.split(line)[1:] for line in _command_lines(blocks)]


def _shortened(words):
    changes = SHORTER_RESUME if "--resume" in words else SHORTER
    words = [changes.get(before, word) for before, word in zip(["", *words], words)]
    return [*words, *SMALL_DATA] if words[:1] == ["demo"] else words


def test_the_walkthrough_draws_its_data_first_and_trains_on_it():
    lines = _walkthrough_lines()
    assert lines[0][:4] == ["demo", "--out", "runs/demo", "--data-only"]
    assert len(lines) >= 12 and all(line[:1] != ["demo"] for line in lines[1:])
    assert _shortened(["train", "d", "--epochs", "10"]) == ["train", "d", "--epochs", "1"]


# The commands are condnet's logic around training, the same on every backend; training,
# saving and loading on JAX and torch are covered by the other tests (see conftest.py).
@pytest.mark.one_backend(
    reason=(
        "runs every README command in order: the order and where files land are backend-"
        "independent, and each command's backend-dependent part is tested on every backend in"
        " its own module"
    )
)
@pytest.mark.slow
def test_the_walkthrough_runs_in_order_and_writes_only_under_runs(tmp_path, monkeypatch):
    from condnet.runs.cli import main

    monkeypatch.chdir(tmp_path)
    for words in map(_shortened, _walkthrough_lines()):
        assert main(words) == 0, f"the walkthrough fails at: condnet {shlex.join(words)}"
    assert os.listdir(tmp_path) == ["runs"]  # nothing beside runs/
    runs = tmp_path / "runs"
    assert {"soft.json", "rows.csv", "compare.md", "compare.png"} <= set(os.listdir(runs))
    assert (runs / "shapes" / "model.calibrated.keras").is_file()
    assert (runs / "ensemble" / "model.keras").is_file()
    metrics = json.loads((runs / "shapes" / "metrics.json").read_text())
    assert metrics["baseline"]["flat"]["epochs"] == 2  # the resume trained it as long
    assert len(metrics["baseline"]["flat"]["history"]["val_accuracy"]) == 2  # its curves
    assert "| hard |" in (runs / "compare.md").read_text()

"""Every code block of the README runs (python) or parses (shell) as written.

Python blocks run in order in one namespace (later blocks may use names of
earlier ones, as a reader would), in a temporary folder that holds a small
shapes data set at `demo/data/{train,test}`, where the README's commands put it.

Shell blocks: every `condnet ...` line is parsed by the CLI's own parser, so a
flag the README shows that the CLI lacks (or a bad choice) fails here. Training
commands are not run from this test (the demo and CLI tests train on small data);
install lines (`pip`, `git`, `python -m venv`) and the test loop are not parsed.
"""

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
        tmp_path / "demo" / "data", samples_per_class=12, image_size=32, test_samples_per_class=4
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_readme_python_blocks_run_as_written(demo_folder, capsys):
    namespace = {}
    for index, block in enumerate(_blocks("python")):
        exec(compile(block, f"README python block {index + 1}", "exec"), namespace)
    assert (demo_folder / "cats_and_dogs.keras").is_file()
    outputs = namespace["outputs"]
    assert outputs["classes"].shape == (64, 5)
    printed = capsys.readouterr().out
    assert any(name in printed for name in ("persian", "siamese", "beagle", "pug", "boxer"))


def _command_lines():
    for block in _blocks("bash"):
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

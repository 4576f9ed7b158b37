"""A corpus of broken runs: every read-only command refuses each in one line, changing nothing.

One real run is trained once (the CLI tests' `trained`: one epoch of `condnet train`
on a tiny shapes folder). Each broken run is a copy of it with one file missing,
empty, truncated, foreign, of the wrong JSON type, with wrong keys or absurd
values. Every read-only command that reads that file (`evaluate`, `predict`,
`info`, `compare`, `export --format keras`) runs against it through
`condnet.runs.cli.main` and must exit with status 2 and one line on standard
error that names the file, with no traceback, leaving every file of the run
byte-identical and writing nothing. Files a command does not read (state.json
for all of them; config.json and history.csv for `compare`'s blank columns) must
not stop it.
"""

import hashlib
import json
import shutil
import zipfile

import pytest

from condnet.runs.cli import conftest as cli_conftest
from condnet.runs.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.one_backend(
        reason="how each command refuses a damaged run file is condnet's own file reading, "
        "the same on every backend; loading a sound run is tested on every backend in "
        "run_dir_test, and this corpus's trained run costs minutes per backend"
    ),
]
trained = cli_conftest.trained  # the fixture of the CLI tests' one tiny real run

# === Damages: (file, how it is broken) ===


def _write(name, content):
    def damage(run):
        path = run / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))

    return damage


def _remove(name):
    return lambda run: (run / name).unlink()


def _truncate(name):
    def damage(run):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])

    return damage


def _zip(name, members):
    def damage(run):
        (run / name).unlink()
        with zipfile.ZipFile(run / name, "w") as archive:
            for member, text in members.items():
                archive.writestr(member, text)

    return damage


def _copy(source, name):
    return lambda run: shutil.copyfile(run / source, run / name)


def _folder(name):
    def damage(run):
        (run / name).unlink()
        (run / name).mkdir()

    return damage


def _other_run_model(run):
    from condnet.evaluation.evaluate_test import colour_model

    colour_model().save(run / "model.keras")


def _narrow_baseline(run):
    import keras

    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled)).save(
        run / "baseline.keras"
    )


def _edit(name, change):
    def damage(run):
        value = json.loads((run / name).read_text())
        (run / name).write_text(json.dumps(change(value)))

    return damage


def _options(**values):
    return _edit(
        "config.json", lambda config: {**config, "options": {**config["options"], **values}}
    )


def _without_option(key):
    def change(config):
        config["options"].pop(key)
        return config

    return _edit("config.json", change)


OTHER_TREE = {"fruit": ["apple", "pear", "plum"], "veg": ["kale", "leek", "okra"]}
MODEL_DAMAGES = {
    "model.keras missing": _remove("model.keras"),
    "model.keras empty": _write("model.keras", b""),
    "model.keras a text file": _write("model.keras", "this is not a model\n"),
    "model.keras a zip that is no Keras archive": _zip("model.keras", {"notes.txt": "hello"}),
    "model.keras with a garbled config": _zip("model.keras", {"config.json": "{not json"}),
    "model.keras truncated": _truncate("model.keras"),
    "model.keras a folder": _folder("model.keras"),
    "model.keras a plain Keras model": _copy("baseline.keras", "model.keras"),
    "model.keras of another run": _other_run_model,
}
BASELINE_DAMAGES = {
    "baseline.keras empty": _write("baseline.keras", b""),
    "baseline.keras a text file": _write("baseline.keras", "not a model"),
    "baseline.keras truncated": _truncate("baseline.keras"),
    "baseline.keras with 3 outputs": _narrow_baseline,
    "baseline.keras a condnet model": _copy("model.keras", "baseline.keras"),  # evaluate only
}
CONFIG_DAMAGES = {
    "config.json missing": _remove("config.json"),
    "config.json empty": _write("config.json", b""),
    "config.json not JSON": _write("config.json", '{"options": '),
    "config.json not UTF-8": _write("config.json", b'{"options": "caf\xe9"}'),
    "config.json nested too deeply": _write("config.json", "[" * 100_000),
    "config.json a list": _write("config.json", "[1]"),
    "config.json options a list": _write("config.json", '{"options": []}'),
    "config.json without options": _edit("config.json", lambda c: {"hierarchy": c["hierarchy"]}),
    "config.json without color_mode": _without_option("color_mode"),
    "config.json image_size 100000": _options(image_size=100000),
    "config.json image_size 0": _options(image_size=0),
    "config.json image_size auto": _options(image_size="auto"),
    "config.json image_size of 3 sides": _options(image_size=[32, 32, 3]),
    "config.json color_mode cmyk": _options(color_mode="cmyk"),
    "config.json image_size 64 (not the model's)": _options(image_size=64),
    "config.json color_mode grayscale (not the model's)": _options(color_mode="grayscale"),
    "config.json hierarchy not a tree": _edit(
        "config.json", lambda c: {**c, "hierarchy": {"a": 3}}
    ),
    "config.json hierarchy of another run": _edit(
        "config.json", lambda c: {**c, "hierarchy": OTHER_TREE}
    ),
}
HIERARCHY_DAMAGES = {
    "hierarchy.json empty": _write("hierarchy.json", b""),
    "hierarchy.json a list": _write("hierarchy.json", "[1]"),
    "hierarchy.json not JSON": _write("hierarchy.json", "{round: "),
    "hierarchy.json with an empty group": _write(
        "hierarchy.json", '{"round": [], "angular": ["x"]}'
    ),
    "hierarchy.json of another run": _write("hierarchy.json", json.dumps(OTHER_TREE)),
}
METRICS_DAMAGES = {
    "metrics.json empty": _write("metrics.json", b""),
    "metrics.json not JSON": _write("metrics.json", "{"),
    "metrics.json a list": _write("metrics.json", "[]"),
    "metrics.json null": _write("metrics.json", "null"),
    "metrics.json accuracy a word": _edit("metrics.json", lambda m: {**m, "accuracy": "high"}),
    "metrics.json accuracy 7": _edit("metrics.json", lambda m: {**m, "accuracy": 7}),
    "metrics.json accuracy NaN": _edit("metrics.json", lambda m: {**m, "accuracy": float("nan")}),
    "metrics.json baseline a list": _edit("metrics.json", lambda m: {**m, "baseline": []}),
    "metrics.json negative MACs": _edit(
        "metrics.json", lambda m: {**m, "macs_per_image": {"routed": -1}}
    ),
}
READERS = ["evaluate", "predict", "info", "export"]  # the commands that load the model
CASES = [
    *[(command, damage) for damage in MODEL_DAMAGES for command in READERS],
    *[(c, damage) for damage in BASELINE_DAMAGES for c in ("evaluate", "predict -b")][:-1],
    *[(c, damage) for damage in CONFIG_DAMAGES for c in [*READERS, "predict -b"]],
    *[(c, damage) for damage in HIERARCHY_DAMAGES for c in [*READERS, "predict -b"]],
    *[(command, damage) for damage in METRICS_DAMAGES for command in ("compare", "evaluate")],
    ("compare", "metrics.json missing"),
]
DAMAGES = {
    **MODEL_DAMAGES,
    **BASELINE_DAMAGES,
    **CONFIG_DAMAGES,
    **HIERARCHY_DAMAGES,
    **METRICS_DAMAGES,
    "metrics.json missing": _remove("metrics.json"),
}


@pytest.fixture(scope="module")
def broken(trained, tmp_path_factory):
    """`broken(damage)`: a copy of the tiny run with one file broken, made once per damage."""
    copies = {}

    def make(damage):
        if damage not in copies:
            run = tmp_path_factory.mktemp("broken") / "run"
            shutil.copytree(trained / "run", run)
            DAMAGES.get(damage, STATE_DAMAGES.get(damage))(run)
            copies[damage] = run
        return copies[damage]

    return make


def _argv(command, run, data, out):
    image = data / "round" / "ring" / "00000.png"
    return {
        "evaluate": ["evaluate", run, data, "--quiet", "--report-dir", out / "report"],
        "predict": ["predict", run, image, "--quiet"],
        "predict -b": ["predict", run, image, "--quiet", "--model", "baseline.keras"],
        "info": ["info", run],
        "compare": ["compare", run],
        "export": ["export", run, "--format", "keras", "--out", out / "exported.keras"],
    }[command]


def _snapshot(folder):
    """Every file and folder under `folder`, with the SHA-256 of each file."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        )
        for path in sorted(folder.rglob("*"))
    }


def test_the_corpus_covers_every_read_only_command_and_run_file():
    assert len(CASES) == len(set(CASES)) == 179
    assert {command for command, _ in CASES} == {*READERS, "predict -b", "compare"}
    files = {damage.split()[0] for _, damage in CASES}
    assert files == {
        "model.keras",
        "baseline.keras",
        "config.json",
        "hierarchy.json",
        "metrics.json",
    }


PARAMETERS = [pytest.param(*case, id=f"{case[0]} x {case[1]}") for case in CASES]


def _run_command(command, run, trained, tmp_path):
    """`command` on the broken `run`: (run, its files' hashes before, argv, exit status)."""
    before = _snapshot(run)
    argv = [str(word) for word in _argv(command, run, trained / "data" / "test", tmp_path)]
    return run, before, argv, main(argv)


@pytest.mark.parametrize("command, damage", PARAMETERS)
def test_a_read_only_command_refuses_a_broken_run_in_one_line_and_changes_nothing(
    command,
    damage,
    broken,
    trained,
    tmp_path,
    capsys,
):
    run, before, argv, code = _run_command(command, broken(damage), trained, tmp_path)
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"condnet {argv[0]}: error: ") and "Traceback" not in err
    assert damage.split()[0] in lines[0]  # it names the file
    assert _snapshot(run) == before
    assert not list(tmp_path.iterdir())  # no report, no export, not even a partial one


# === What a command does not read does not stop it ===

STATE_DAMAGES = {
    "state.json missing": _remove("state.json"),
    "state.json empty": _write("state.json", b""),
    "state.json a list": _write("state.json", "[1]"),
    "state.json epoch a word": _edit("state.json", lambda s: {**s, "epoch": "many"}),
}
IGNORED = [
    *[(command, damage) for damage in STATE_DAMAGES for command in ("predict", "info")],
    ("compare", "config.json a list"),
    ("compare", "config.json not UTF-8"),
    ("compare", "config.json missing"),
    ("predict", "metrics.json a list"),
]


@pytest.mark.parametrize("command, damage", IGNORED, ids=[f"{c} x {d}" for c, d in IGNORED])
def test_a_file_a_command_does_not_read_does_not_stop_it(
    command,
    damage,
    broken,
    trained,
    tmp_path,
    capsys,
):
    run, before, _, code = _run_command(command, broken(damage), trained, tmp_path)
    assert code == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if command == "compare" and "missing" not in damage:  # a blank column, said in one line
        (warning,) = captured.err.strip().splitlines()
        assert warning.startswith("condnet compare: warning: blank columns: The run's config.json")
    shown = {"predict": "ring/00000.png", "info": "Hierarchy:", "compare": str(run)}[command]
    assert shown in captured.out  # its answer, as from an intact run
    assert _snapshot(run) == before

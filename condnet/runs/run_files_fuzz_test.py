"""Fuzzing a run's JSON files and tune's space files: whatever they hold, one clear error.

Random bytes, random JSON values and values close to valid ones are written as
`config.json`, `metrics.json`, `state.json` and space files and read with the
readers condnet uses (`condnet.runs.run_dir`, `condnet.runs.tune.read_space`).
Each is either accepted, and then usable as the commands use it, or refused
with a `ValueError` whose message names the file. `CONDNET_FUZZ_EXAMPLES=5000`
explores further (with a fresh random seed) than the 200 fixed examples CI runs.
"""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from condnet.choices import MAX_IMAGE_SIDE
from condnet.runs.compare import _row, table
from condnet.runs.files import CONFIG, METRICS, STATE
from condnet.runs.run_dir import input_shape_of, read_config, read_metrics, read_state
from condnet.testing import fuzz_settings

FUZZ = fuzz_settings()
NAMES = st.text(max_size=6)
LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | NAMES | st.integers(-5, 3000)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(NAMES, children, max_size=4),
    max_leaves=30,
)


def _near(keys):
    """Objects holding some of `keys` with random values: past the type checks."""
    return st.dictionaries(st.sampled_from(keys) | NAMES, VALUES, max_size=len(keys) + 1)


CONFIGS = st.fixed_dictionaries(
    {"options": _near(["image_size", "color_mode", "backbone"])},
    optional={"hierarchy": VALUES | st.just({"a": ["x"], "b": ["y"]})},
) | st.fixed_dictionaries(
    {
        "options": st.fixed_dictionaries(
            {
                "image_size": VALUES | st.integers(0, 5000) | st.lists(st.integers(0, 3000)),
                "color_mode": VALUES | st.sampled_from(["rgb", "grayscale", "cmyk"]),
            }
        )
    }
)
SECTIONS = ["accuracy", "gate_accuracy", "mixture", "baseline", "macs_per_image"]
METRIC_FILES = _near(SECTIONS) | st.fixed_dictionaries(
    {
        "accuracy": st.floats() | VALUES,
        "mixture": _near(["accuracy"]),
        "baseline": st.none() | st.fixed_dictionaries({"flat": _near(["accuracy"])}),
        "macs_per_image": _near(["routed", "all_experts"]),
    }
)
STATES = _near(["phase", "epoch", "phase_done", "checkpoint", "best", "history"]) | (
    st.fixed_dictionaries(
        {
            "phase": st.integers(-1, 3) | VALUES,
            "epoch": st.integers(-1, 3),
            "phase_done": st.booleans(),
            "checkpoint": st.sampled_from(["epoch-0001.keras", "../x.keras", "a/b.keras", ""]),
            "best": st.none() | st.floats(),
            "history": st.lists(VALUES | st.just({"epoch": 1}), max_size=3),
        }
    )
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tmp_path_factory.mktemp("run_files_fuzz")


def _refused_or_read(path, content, read):
    """`read(path)` after writing `content`; None when refused with a message naming it."""
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    try:
        return read()
    except ValueError as error:
        assert type(error) is ValueError  # not a parser's subclass
        assert f"The run's {path.name} cannot be used: " in str(error) or str(path) in str(error)
        assert str(path) in str(error) and "\n" not in str(error), str(error)
        return None


def _json(value):
    return json.dumps(value, allow_nan=True)


# === config.json ===


def _config(run, content):
    config = _refused_or_read(run / CONFIG, content, lambda: read_config(run / CONFIG))
    if config is not None:  # usable: the input shape of the model, within the limits
        _, height, width, channels = input_shape_of(config)
        sides = (height, width)
        assert all(isinstance(side, int) and 1 <= side <= MAX_IMAGE_SIDE for side in sides)
        assert channels in (1, 3)


@FUZZ
@given(content=st.binary(max_size=256))
def test_fuzz_config_of_random_bytes(run, content):
    _config(run, content)


@FUZZ
@given(value=VALUES | CONFIGS)
def test_fuzz_config_of_random_json(run, value):
    _config(run, _json(value))


# === metrics.json (as compare reads it) ===


def _metrics(run, content):
    metrics = _refused_or_read(run / METRICS, content, lambda: read_metrics(run / METRICS))
    if metrics is not None:  # usable: a row of `condnet compare`, printable and JSON
        row = _row(run)
        assert row["accuracy"] is None or 0 <= row["accuracy"] <= 1
        assert table([row]) and json.dumps(row, allow_nan=False)


@FUZZ
@given(content=st.binary(max_size=256))
def test_fuzz_metrics_of_random_bytes(run, content):
    _metrics(run, content)


@FUZZ
@given(value=VALUES | METRIC_FILES)
def test_fuzz_metrics_of_random_json(run, value):
    _metrics(run, _json(value))


# === state.json ===


def _state(run, content):
    state = _refused_or_read(run / STATE, content, lambda: read_state(run))
    if state is not None:  # usable: what a resume reads, with the types it needs
        assert isinstance(state["epoch"], int) and state["epoch"] >= 0
        assert "/" not in state["checkpoint"] and state["checkpoint"].endswith(".keras")
        assert state["best"] is None or math.isfinite(state["best"])


@FUZZ
@given(content=st.binary(max_size=256))
def test_fuzz_state_of_random_bytes(run, content):
    _state(run, content)


@FUZZ
@given(value=VALUES | STATES)
def test_fuzz_state_of_random_json(run, value):
    _state(run, _json(value))


@pytest.mark.parametrize(
    "name, content, problem",
    [
        (CONFIG, "[" * 100_000, "it nests too deeply to read"),
        (CONFIG, "", r"it is empty \(0 bytes\)"),
        (
            METRICS,
            '{"accuracy": 7}',
            r"its entry \['accuracy'\] is 7, where a number from 0 to 1 is expected",
        ),
        (METRICS, "[1]", "it holds a JSON array where an object of metrics is expected"),
        (STATE, '{"phase": 0}', 'its "epoch" is missing, where an int >= 0 is expected'),
        (STATE, "null", "it holds a JSON null where an object is expected"),
    ],
)
def test_run_file_errors_name_the_file_the_problem_and_the_fix(run, name, content, problem):
    read = {CONFIG: read_config, METRICS: read_metrics, STATE: lambda path: read_state(run)}
    (run / name).write_text(content)
    with pytest.raises(
        ValueError, match=rf"The run's {name} cannot be used: {problem}\. "
    ) as error:
        read[name](run / name)
    fix = {CONFIG: "re-train the run or restore", METRICS: "restore the file", STATE: "--overwrite"}
    assert fix[name] in str(error.value) and f"Received: path='{run / name}'" in str(error.value)


# === Space files of `condnet tune` ===

SPACE_VALUES = (
    VALUES
    | st.fixed_dictionaries(
        {
            "choices": st.lists(
                VALUES | st.sampled_from(["soft", "hard", "8 16", "none"]), max_size=3
            )
        }
    )
    | st.fixed_dictionaries(
        {"min": VALUES | st.floats(-1, 1), "max": VALUES | st.floats(0, 2)},
        optional={"sampling": st.sampled_from(["linear", "log", "cubic"])},
    )
)
SPACE_NAMES = st.sampled_from(
    ["routing", "learning_rate", "filters", "epochs", "image_size", "augment", "batch_size"]
)


@FUZZ
@given(space=st.dictionaries(SPACE_NAMES, SPACE_VALUES, max_size=3) | VALUES)
def test_fuzz_space_file_is_checked_before_any_trial(run, space):
    kt = pytest.importorskip("keras_tuner")
    from condnet.runs.tune import hyperparameters, read_space

    path = run / "space.json"
    path.write_text(_json(space))
    try:
        read = read_space(path)
    except ValueError as error:
        assert type(error) is ValueError and str(path) in str(error), str(error)
        return
    hp = hyperparameters(read)  # accepted: KerasTuner declares every entry ...
    assert isinstance(hp, kt.HyperParameters)


@pytest.mark.parametrize(
    "space, message",
    [
        ({"routing": "bogus"}, r"bad entry for 'routing': 'bogus' is refused \(--routing"),
        (
            {"image_size": {"choices": [32, 100000]}},
            r"'image_size': 100000 is refused \(--image-size / image_size: image_size must be",
        ),
        (
            {"learning_rate": {"min": 0, "max": 1, "sampling": "log"}},
            "log sampling needs 'min' > 0",
        ),
        ({"epochs": {"min": 1, "max": 2.5}}, r"2.5 is refused \(--epochs / epochs must be an int"),
        ({"batch_size": [16, 32]}, "KerasTuner choices must be numbers, strings or true/false"),
    ],
)
def test_a_bogus_space_entry_is_named_with_its_value(tmp_path, space, message):
    pytest.importorskip("keras_tuner")
    from condnet.runs.tune import read_space

    (tmp_path / "space.json").write_text(json.dumps(space))
    with pytest.raises(ValueError, match=message) as error:
        read_space(tmp_path / "space.json")
    assert "Fix or remove the entry. Received: " in str(error.value)


def test_condnet_tune_refuses_a_bogus_space_file_before_the_first_trial(tmp_path, capsys):
    pytest.importorskip("keras_tuner")
    from condnet.evaluation.evaluate_test import make_colour_folders
    from condnet.runs.cli import main

    data = make_colour_folders(tmp_path / "data", per_class=2)
    (tmp_path / "space.yaml").write_text("routing: {choices: [hard, bogus]}\n")
    argv = ["tune", str(data), "--out", str(tmp_path / "search"), "--trials", "2"]
    assert main([*argv, "--space", str(tmp_path / "space.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "bad entry for 'routing': 'bogus' is refused (--routing / routing must be one" in err
    assert not (tmp_path / "search").exists()  # no trial ran, nothing was written

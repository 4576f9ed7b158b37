"""Every command that writes, driven into every place it may not write: nothing changes."""

import hashlib
import json
import os

import keras
import pytest

from condnet.evaluation.evaluate_test import colour_model, make_colour_folders
from condnet.runs.cli import main
from condnet.runs.outputs import (
    MARKER,
    check_replaceable,
    guard,
    mark,
    read_mark,
    recover,
    staged_folder,
)

TENSORFLOW = keras.backend.backend() == "tensorflow"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """data/ (images), run/ (a run read), other/ (another run), mine/ (a user's folder)."""
    root = tmp_path_factory.mktemp("workspace")
    data = make_colour_folders(root / "data", per_class=2)
    for name in ("run", "other"):
        run = root / name
        run.mkdir()
        colour_model().save(run / "model.keras")
        options = {"image_size": 8, "color_mode": "rgb", "data_dir": str(data)}
        (run / "config.json").write_text(json.dumps({"options": options}))
        (run / "metrics.json").write_text(json.dumps({"accuracy": 1.0}))
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "epoch-0001.keras").write_text("checkpoint")
        mark(run, "run", [])
    (root / "mine").mkdir()
    (root / "mine" / "thesis.txt").write_text("years of work")
    (root / "mine" / "config.json").write_text("{}")  # a run-like name, not a run
    return root


def _snapshot(root):
    """Every file under `root` (hidden ones too) with the hash of its bytes."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return found


# Places no output may go: (name, folder output, file output), relative to the workspace.
# Folder outputs take the second, file outputs the third (plus their suffix); None: no case.
# A new file in a user's folder is a normal output, so that place is for folders only.
PLACES = [
    ("the data", "data", "data/warm/red/out"),
    ("inside the data", "data/warm/out", "data/warm/out"),
    ("a folder holding the data", ".", None),
    ("the run read", "run", "run/metrics"),
    ("inside the run read", "run/checkpoints", "run/checkpoints/epoch-0001"),
    ("another run", "other", "other/metrics"),
    ("inside another run", "other/checkpoints/new", "other/checkpoints/new"),
    ("a folder condnet did not write", "mine", None),
]
# command -> (argv for an output path, suffix of a file output or None for a folder).
# --overwrite where the command has it: even asked to replace, it must refuse. `train`
# goes without: replacing a run condnet wrote is what its --overwrite is for.
COMMANDS = {
    "train": (lambda t, p: ["train", t.data, "--out", p, "--epochs", "1"], None),
    "cv": (lambda t, p: ["cv", t.data, "--out", p, "--overwrite", "--epochs", "1"], None),
    "tune": (lambda t, p: ["tune", t.data, "--out", p, "--trials", "1", "--epochs", "1"], None),
    "demo": (lambda t, p: ["demo", "--out", p, "--epochs", "1"], None),
    "evaluate --report-dir": (lambda t, p: ["evaluate", t.run, t.data, "--report-dir", p], None),
    "ensemble": (
        lambda t, p: ["ensemble", t.run, t.run, "--data", t.data, "--out", p, "--overwrite"],
        None,
    ),
    "explain": (lambda t, p: ["explain", t.run, t.data, "--out", p], None),
    "evaluate --output": (lambda t, p: ["evaluate", t.run, t.data, "--output", p], ".json"),
    "predict --output": (lambda t, p: ["predict", t.run, t.data, "--output", p], ".csv"),
    "compare --output": (lambda t, p: ["compare", t.run, "--output", p], ".json"),
    "compare --plot": (lambda t, p: ["compare", t.run, "--plot", p], ".png"),
    "export keras": (
        lambda t, p: ["export", t.run, "--format", "keras", "--out", p, "--overwrite"],
        ".keras",
    ),
}
if TENSORFLOW:  # elsewhere `export` runs itself again under TensorFlow: a process per case
    COMMANDS["export onnx"] = (lambda t, p: ["export", t.run, "--out", p, "--overwrite"], ".onnx")
    COMMANDS["export tf_saved_model"] = (
        lambda t, p: ["export", t.run, "--format", "tf_saved_model", "--out", p, "--overwrite"],
        None,
    )

CASES = [
    (command, place)
    for command, (_, suffix) in COMMANDS.items()
    for place in PLACES
    if place[1 if suffix is None else 2] is not None
    and (command, place[0]) != ("demo", "inside the data")  # demo reads no data: unknown
]


class _Paths:
    def __init__(self, root):
        self.run, self.data = str(root / "run"), str(root / "data")


@pytest.mark.parametrize("command, place", CASES, ids=[f"{c} -> {p[0]}" for c, p in CASES])
def test_no_command_writes_where_it_may_not(workspace, command, place, capsys):
    build, suffix = COMMANDS[command]
    name, folder, file = place
    target = workspace / (folder if suffix is None else file + suffix)
    before = _snapshot(workspace)
    assert main(build(_Paths(workspace), str(target))) == 2, f"{command} wrote into {name}"
    error = capsys.readouterr().err
    assert "Traceback" not in error and len(error.strip().splitlines()) <= 2
    assert _snapshot(workspace) == before  # every file as it was, nothing added


def test_the_matrix_covers_every_writing_command():
    assert {c for c, _ in CASES} >= {
        "train",
        "cv",
        "tune",
        "evaluate --report-dir",
        "explain",
        "evaluate --output",
        "predict --output",
        "export keras",
        "ensemble",
        "compare --output",
        "compare --plot",
    }
    assert len(CASES) >= 60


# === The guard's rules, one by one ===


def test_a_marked_folder_is_replaced_only_with_overwrite_and_when_it_holds_nothing_else(tmp_path):
    out = tmp_path / "ensemble"
    with staged_folder(out, "ensemble") as partial:
        (partial / "model.keras").write_text("first")
    assert read_mark(out)["names"] == ["model.keras"]
    with pytest.raises(ValueError, match="pass --overwrite"):
        check_replaceable(out, "ensemble")
    check_replaceable(out, "ensemble", overwrite=True)
    with pytest.raises(ValueError, match="holds an ensemble, not an export"):
        check_replaceable(out, "export", overwrite=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"condnet did not write .*notes.txt"):
        check_replaceable(out, "ensemble", overwrite=True)


def test_a_failed_write_leaves_the_old_output_and_no_partial_copy(tmp_path):
    out = tmp_path / "evaluation"
    with staged_folder(out, "evaluation") as partial:
        (partial / "report.md").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(out, "evaluation") as partial:
            (partial / "report.md").write_text("half")
            raise KeyboardInterrupt  # Ctrl-C or SIGTERM mid-write
    assert (out / "report.md").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation"]


def test_a_swap_cut_between_its_two_renames_is_finished_by_the_next_write(tmp_path):
    out = tmp_path / "evaluation"
    with staged_folder(out, "evaluation") as partial:
        (partial / "report.md").write_text("old")
    os.replace(out, tmp_path / ".evaluation.old-999999")  # killed after the first rename
    recover(out)
    assert (out / "report.md").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation"]


def test_the_run_own_output_folders_may_be_written(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    mark(run, "run", [])
    (run / "config.json").write_text("{}")
    guard(run / "evaluation", "evaluation", flag="--report-dir", reads=[run])
    guard(run / "export" / "model.onnx", "export file", reads=[run])
    with pytest.raises(ValueError, match="lies inside the run"):
        guard(run / "logs", "evaluation", flag="--report-dir", reads=[run])
    with pytest.raises(ValueError, match="lies inside the run"):
        guard(run / "export" / "model.onnx", "export file")  # another run's export folder


def test_a_file_output_never_replaces_a_folder_or_a_link(tmp_path):
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "target.txt").write_text("keep")
    (tmp_path / "link.csv").symlink_to(tmp_path / "target.txt")
    for name in ("folder.csv", "link.csv"):
        with pytest.raises(ValueError, match="is not a regular file"):
            check_replaceable(tmp_path / name, "rows file", flag="--output")
    assert (tmp_path / "target.txt").read_text() == "keep"


def test_the_marker_is_hidden_and_lists_what_was_written(tmp_path):
    with staged_folder(tmp_path / "out", "evaluation") as partial:
        (partial / "a.png").write_text("x")
        (partial / "examples").mkdir()
    assert (tmp_path / "out" / MARKER).is_file()
    assert read_mark(tmp_path / "out")["names"] == ["a.png", "examples"]


def test_a_report_folder_from_before_markers_is_replaced_but_not_one_with_other_files(tmp_path):
    old = tmp_path / "evaluation"
    (old / "examples").mkdir(parents=True)
    for name in ("metrics.json", "report.md", "routing_matrix.png"):
        (old / name).write_text("old")
    check_replaceable(old, "evaluation", flag="--report-dir")
    (old / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"condnet did not write .*notes.txt"):
        check_replaceable(old, "evaluation", flag="--report-dir")

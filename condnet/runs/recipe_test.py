import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from condnet.runs.checkpoint import read_state
from condnet.runs.claim import RunClaim
from condnet.runs.files import RUN_FILES
from condnet.runs.lock import LOCK, RunLocked
from condnet.runs.options import TrainingOptions
from condnet.runs.outputs import mark
from condnet.runs.recipe import resume, train
from condnet.runs.run_dir import calibrate_run, load_run

# TensorBoard off: it costs every test run a summary writer; one test checks the logs.
# The flat baseline off: it trains a second model; the tests of the baseline turn it on.
TINY = dict(
    image_size=32,
    filters=(8, 8, 8, 8),
    batch_size=16,
    augment=False,
    verbose=0,
    tensorboard=False,
    baseline=False,
)


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """Two epochs of a hard-routed run with hedging and a Gumbel temperature (copy to change)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    options = dict(routing="hard", confidence_threshold=0.6, temperature=0.5, patience=10)
    train(shapes / "train", run, epochs=2, **options, **TINY)
    return run


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


def history_rows(run_dir):
    with open(run_dir / "history.csv") as handle:
        return list(csv.DictReader(handle))


def _fake_run(folder):
    """A committed run's files (contents that no training writes) and a file of the user's."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.keras", "state.json", "config.json"):
        (folder / name).write_text(f"old {name}")
    (folder / "notes.txt").write_text("mine")
    return folder


@pytest.mark.slow
def test_train_writes_a_complete_run_directory(shapes, tmp_path):
    run = tmp_path / "run"
    result = train(shapes / "train", run, epochs=2, **{**TINY, "tensorboard": True})
    for name in (
        "model.keras",
        "config.json",
        "hierarchy.json",
        "history.csv",
        "metrics.json",
        "report.md",
        "report.html",
        "routing_matrix.png",
        "state.json",
    ):
        assert (run / name).is_file(), name
    assert [row["epoch"] for row in history_rows(run)] == ["1", "2"]
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["image_size"] == 32 and config["options"]["epochs"] == 2
    assert config["hierarchy"] == {
        "angular": ["square", "star", "triangle"],
        "round": ["circle", "ellipse", "ring"],
    }
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_samples"] == 6 * 12 - len(result["model"].hierarchy.classes) * 10
    best = max(float(row["val_accuracy"]) for row in history_rows(run))
    np.testing.assert_allclose(metrics["accuracy"], best, atol=1e-6)  # model.keras is the best
    assert all(float(row["epoch_seconds"]) > 0 for row in history_rows(run))
    _assert_tensorboard_logs(run / "logs")


def _assert_tensorboard_logs(logs):
    """Per-epoch scalars for training and validation, and the options in the HParams view."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for split in ("train", "validation"):
        events = EventAccumulator(str(logs / split), size_guidance={"tensors": 0})
        events.Reload()
        tags = events.Tags()["tensors"] + events.Tags()["scalars"]
        assert any("accuracy" in tag for tag in tags), (split, tags)
    hparams = b"".join(path.read_bytes() for path in (logs / "hparams").glob("events.*"))
    assert b"hparams" in hparams and b"learning_rate" in hparams and b"routing" in hparams


_KILLED_RUN = """
import os, signal, sys, keras
from condnet.runs.recipe import train

class Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 2 and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

train(sys.argv[1], sys.argv[2], epochs=4, callbacks=[Kill()], patience=10,
      image_size=32, filters=(8, 8, 8, 8), batch_size=16, augment=False, verbose=0)
"""


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_from_its_last_epoch(shapes, tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(_KILLED_RUN))
    killed = subprocess.run(
        [sys.executable, str(script), str(shapes / "train"), str(run)],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = read_state(run)
    assert state["epoch"] == 2 and not (run / "report.md").exists()
    checkpoint = keras.models.load_model(run / "checkpoints" / state["checkpoint"])
    steps = (
        int(
            checkpoint.optimizer.iterations.numpy()
            if hasattr(checkpoint.optimizer.iterations, "numpy")
            else checkpoint.optimizer.iterations
        )
        // 2
    )
    assert steps > 0

    with pytest.raises(RunLocked, match="no longer running.*--break-lock"):
        resume(run, verbose=0)  # the killed process left its lock
    result = resume(run, break_lock=True, verbose=0)
    assert [row["epoch"] for row in history_rows(run)] == ["1", "2", "3", "4"]
    final = keras.models.load_model(run / "checkpoints" / read_state(run)["checkpoint"])
    iterations = int(keras.ops.convert_to_numpy(final.optimizer.iterations))
    assert iterations == 4 * steps  # optimizer state carried over, not restarted
    assert result["metrics"]["num_samples"] > 0


def test_refuses_a_run_directory_that_holds_a_run(shapes, tmp_path):
    run = _fake_run(tmp_path / "run")
    with pytest.raises(
        ValueError, match="already holds a run \\(config.json, state.json.*--overwrite"
    ):
        train(shapes / "train", run, epochs=1, **TINY)
    assert (run / "model.keras").read_text() == "old model.keras"  # nothing lost
    assert not (run / LOCK).exists()


def test_resume_needs_a_run(tmp_path):
    with pytest.raises(ValueError, match="no run to resume.*config.json is missing"):
        resume(tmp_path)


def test_train_resume_keyword_points_to_resume(tmp_path):
    with pytest.raises(TypeError, match="continue one with condnet.runs.recipe.resume"):
        train("data", tmp_path, resume=True)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"routing": "top1"}, "routing='top1'"),
        ({"strategy": "greedy"}, "strategy must be one of"),
        ({"epochs": 0}, "epochs must be an int >= 1"),
        ({"seed": -1}, "--seed / seed must be an int >= 0. Received: seed=-1"),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number > 0"),
        ({"expert_placement": "middle"}, "expert_placement must be one of"),
        (
            {"expert_placement": "branch", "backbone": "EfficientNetB0"},
            "needs backbone='small_cnn'",
        ),
    ],
)
def test_bad_options_fail_before_any_file_is_written(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        train("data", tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()


def test_a_misspelt_fit_argument_fails_before_any_file_is_written(shapes, tmp_path):
    with pytest.raises(TypeError, match="'epoch' \\(did you mean 'epochs'\\?\\)"):
        train(shapes / "train", tmp_path / "run", epoch=3)
    assert not (tmp_path / "run").exists()


def test_overwrite_with_a_mistyped_data_dir_keeps_the_run(tmp_path):
    run = _fake_run(tmp_path / "run")
    with pytest.raises(ValueError, match="image folder does not exist"):
        train(tmp_path / "shapes/trian", run, overwrite=True, **TINY)
    assert (run / "model.keras").read_text() == "old model.keras"
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_overwrite_with_a_bad_hierarchy_file_keeps_the_run(shapes, tmp_path):
    run = _fake_run(tmp_path / "run")
    (tmp_path / "groups.json").write_text('{"round": ["circle", ')
    with pytest.raises(ValueError, match="groups.json"):
        train(shapes / "train", run, hierarchy=tmp_path / "groups.json", overwrite=True, **TINY)
    assert (run / "model.keras").read_text() == "old model.keras"


@pytest.mark.parametrize("out", ["train", "train/run", "."])
def test_a_run_inside_or_around_the_data_is_refused_and_nothing_written(shapes, out):
    before = sorted(str(p) for p in shapes.rglob("*"))
    with pytest.raises(ValueError, match="the image folder DATA_DIR"):
        train(shapes / "train", shapes / out, epochs=1, **TINY)
    assert sorted(str(p) for p in shapes.rglob("*")) == before


def test_a_run_under_a_file_is_refused(shapes, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="lies under the file"):
        train(shapes / "train", tmp_path / "file" / "run", epochs=1, **TINY)


def test_a_lock_held_by_a_live_process_refuses_a_second_train(shapes, tmp_path):
    run = _fake_run(tmp_path / "run")
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "time": "T", "command": "c"}
    (run / LOCK).write_text(json.dumps(holder))
    with pytest.raises(RunLocked, match=f"locked by pid {os.getppid()} on host .* since T"):
        train(shapes / "train", run, overwrite=True, epochs=1, **TINY)
    assert (run / "model.keras").read_text() == "old model.keras"
    assert json.loads((run / LOCK).read_text()) == holder


class _FailFirstBatch(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        raise RuntimeError("the new run broke")


def test_overwrite_restores_the_old_run_when_the_new_one_fails_early(shapes, tmp_path):
    run = _fake_run(tmp_path / "run")
    with pytest.raises(RuntimeError, match="the new run broke"):
        train(shapes / "train", run, overwrite=True, callbacks=[_FailFirstBatch()], **TINY)
    assert {p.name: p.read_text() for p in run.iterdir()} == {
        "model.keras": "old model.keras",
        "state.json": "old state.json",
        "config.json": "old config.json",
        "notes.txt": "mine",
    }
    assert sorted(os.listdir(tmp_path)) == ["run"]  # the aside folder is gone


@pytest.mark.slow
def test_overwrite_replaces_only_run_files_once_the_new_run_commits(shapes, tmp_path):
    run = _fake_run(tmp_path / "run")
    (run / ".tmp-model.keras").write_text("a killed write")
    seen = []

    class SeeAside(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(sorted(p.name[:14] for p in tmp_path.iterdir()))

    train(shapes / "train", run, overwrite=True, epochs=1, callbacks=[SeeAside()], **TINY)
    assert seen[0] == [".run.replaced-", "run"]  # kept aside until the first commit
    assert sorted(os.listdir(tmp_path)) == ["run"]
    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / ".tmp-model.keras").exists()
    assert keras.models.load_model(run / "model.keras").hierarchy.num_groups == 2
    assert read_state(run)["epoch"] == 1


@pytest.mark.slow
def test_a_run_killed_before_its_first_epoch_starts_again_without_overwrite(shapes, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    mark(run, "run", RUN_FILES)  # the killed run's claim marked the folder before its config
    config = {"options": {**TrainingOptions().to_config(), "data_dir": str(shapes / "train")}}
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no state.json .*nothing is lost.*without --resume"):
        resume(run)
    train(shapes / "train", run, epochs=1, **TINY)
    assert read_state(run)["epoch"] == 1
    assert json.loads((run / "config.json").read_text())["options"]["image_size"] == 32


@pytest.mark.slow
def test_model_options_reach_the_saved_model(trained):
    model = keras.models.load_model(trained / "model.keras")
    assert model.routing == "hard"
    assert model.confidence_threshold == 0.6 and model.temperature == 0.5
    config = json.loads((trained / "config.json").read_text())["options"]
    assert TrainingOptions.from_config(config).confidence_threshold == 0.6


@pytest.mark.slow
def test_resume_with_more_epochs_trains_them(trained, tmp_path):
    run = _copy(trained, tmp_path)
    resume(run, epochs=3, verbose=0)
    assert [row["epoch"] for row in history_rows(run)] == ["1", "2", "3"]
    assert read_state(run)["epoch"] == 3
    assert json.loads((run / "config.json").read_text())["options"]["epochs"] == 3
    assert resume(run, verbose=0)["metrics"]["num_samples"] > 0  # a finished run: no new epoch
    assert read_state(run)["epoch"] == 3


@pytest.mark.slow
def test_resume_refuses_options_that_contradict_the_run(trained, tmp_path):
    run = _copy(trained, tmp_path)
    config = (run / "config.json").read_text()
    with pytest.raises(
        ValueError, match="--routing / routing 'soft' differs from the run's 'hard'"
    ):
        resume(run, routing="soft", seed=7, image_size=32)
    with pytest.raises(ValueError, match="--seed / seed 7 differs from the run's 1337"):
        resume(run, seed=7)
    with pytest.raises(ValueError, match="--epochs / epochs 1 is fewer than the run's 2"):
        resume(run, epochs=1)
    with pytest.raises(ValueError, match="is not the run's image folder"):
        resume(run, tmp_path)
    assert (run / "config.json").read_text() == config


@pytest.mark.slow
def test_resume_and_calibrate_refuse_images_added_since_the_split(trained, shapes, tmp_path):
    run = _copy(trained, tmp_path)
    data = shutil.copytree(shapes / "train", tmp_path / "data")
    config = json.loads((run / "config.json").read_text())
    config["options"]["data_dir"] = str(data)
    (run / "config.json").write_text(json.dumps(config))
    image = next(data.rglob("*.png"))
    for n in range(3):
        shutil.copy(image, image.with_name(f"added-{n}.png"))
    changed = r"changed since the run drew its split: 3 file\(s\) added \(.*added-0.png"
    with pytest.raises(ValueError, match=changed):
        resume(run, epochs=3, verbose=0)
    with pytest.raises(ValueError, match=changed):
        calibrate_run(run)
    assert read_state(run)["epoch"] == 2 and not (run / "model.calibrated.keras").exists()
    for n in range(3):
        image.with_name(f"added-{n}.png").unlink()
    assert calibrate_run(run)["model"] == "model.calibrated.keras"  # the same files: fine


@pytest.mark.slow
def test_an_overwrite_killed_before_its_first_epoch_is_undone_by_resume(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    history = (run / "history.csv").read_text()
    RunClaim(run, overwrite=True).__enter__()  # the new run's claim, then kill -9
    (run / "config.json").write_text('{"options": {"epochs": 99}}')  # its uncommitted config
    with pytest.raises(ValueError, match=r"interrupted before the new run .* old run is in"):
        load_run(run)  # evaluate, predict, export: say where the old run waits
    assert resume(run, verbose=0)["metrics"]["num_samples"] > 0
    assert "Restored the run" in capsys.readouterr().err
    assert (run / "history.csv").read_text() == history and read_state(run)["epoch"] == 2
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]


@pytest.mark.slow
def test_a_held_lock_refuses_a_resume(trained, tmp_path):
    run = _copy(trained, tmp_path)
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "time": "T", "command": "c"}
    (run / LOCK).write_text(json.dumps(holder))
    with pytest.raises(RunLocked, match="locked by pid"):
        resume(run, epochs=3)
    assert read_state(run)["epoch"] == 2


def user_model_file(directory):
    """A user's .keras classifier (it rescales its own inputs): path, options, reloaded."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for index, width in enumerate((8, 16), start=1):
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(name=f"stage_{index}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    path = directory / "own.keras"
    keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x)).save(path)
    return str(path), {}, keras.models.load_model(path)


@pytest.mark.slow
def test_a_three_level_folder_trains_routes_and_reports(shapes, tmp_path):
    import shutil

    layout = {
        "round": {"hollow": ["ring"], "filled": ["circle", "ellipse"]},
        "angular": {"pointed": ["star", "triangle"], "boxy": ["square"]},
    }
    source = {"round": "round", "angular": "angular"}
    for group, subgroups in layout.items():
        for subgroup, classes in subgroups.items():
            for name in classes:
                shutil.copytree(
                    shapes / "train" / source[group] / name,
                    tmp_path / "deep" / group / subgroup / name,
                )
    result = train(tmp_path / "deep", tmp_path / "run", epochs=1, routing="hard", **TINY)
    model, metrics = result["model"], result["metrics"]
    assert model.hierarchy.depth == 3
    assert model.experts["round"].hierarchy.groups == ["filled", "hollow"]
    assert len(metrics["level_accuracy"]) == 3
    assert (
        metrics["level_accuracy"][0] >= metrics["level_accuracy"][1] >= metrics["level_accuracy"][2]
    )
    assert "level_accuracy" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.slow
def test_a_soft_run_ships_a_hard_routed_model_scored_beside_its_mixture_and_baseline(
    shapes, tmp_path, capsys
):
    run = tmp_path / "run"
    options = {**TINY, "image_size": "auto"}
    del options["baseline"]  # on by default
    result = train(shapes / "train", run, epochs=2, **options)
    assert "Flat baseline" not in capsys.readouterr().err  # verbose=0: no heading either
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "config.json").read_text())["options"]["image_size"] == 32
    assert metrics["training_routing"] == "soft" and metrics["inference_routing"] == "hard"
    shipped = keras.models.load_model(run / "model.keras")
    assert shipped.routing == "hard"
    assert getattr(shipped, "optimizer", None) is None  # checkpoints keep it, not the shipped file
    assert result["metrics"]["accuracy"] == metrics["accuracy"]
    mixture = {"accuracy", "group_accuracy", "gate_accuracy", "within_group_accuracy", "note"}
    assert set(metrics["mixture"]) == mixture  # as `condnet evaluate` writes it
    baseline = metrics["baseline"]
    assert baseline["flat"]["macs_per_image"] <= metrics["macs_per_image"]["routed"]
    assert baseline["conditional"]["macs_per_image"] == metrics["macs_per_image"]["routed"]
    assert (run / "baseline.keras").is_file()
    flat = keras.models.load_model(run / "baseline.keras")
    assert flat.output.shape[-1] == 6
    report = (run / "report.md").read_text()
    assert "## Flat baseline" in report and baseline["verdict"] in report
    assert baseline["where"].startswith("Where: the right group for")
    assert baseline["where"] in report
    within = metrics["mixture"]["within_group_accuracy"]
    assert baseline["conditional"]["within_group_accuracy"] == within
    assert within >= metrics["mixture"]["accuracy"]
    assert baseline["flat"]["within_group_accuracy"] >= baseline["flat"]["accuracy"]
    assert "## About this run" in report and "| best epoch |" in report


@pytest.mark.slow
def test_no_baseline_skips_it(shapes, tmp_path):
    train(shapes / "train", tmp_path / "run", epochs=1, **{**TINY, "baseline": False})
    assert "baseline" not in json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert not (tmp_path / "run" / "baseline.keras").exists()


@pytest.mark.slow
def test_a_resume_that_adds_epochs_trains_the_baseline_as_long(shapes, tmp_path, capsys):
    run = tmp_path / "run"
    options = {**TINY, "baseline": True, "verbose": 2, "patience": 10}
    train(shapes / "train", run, epochs=1, **options)
    printed = capsys.readouterr().err
    heading = "=== Flat baseline, epochs 1-1: one head over every class at the routed MACs"
    assert heading in printed and "(--no-baseline skips it) ===" in printed
    baseline = json.loads((run / "metrics.json").read_text())["baseline"]
    assert (baseline["conditional"]["epochs"], baseline["flat"]["epochs"]) == (1, 1)

    resume(run, epochs=2, verbose=2)
    printed = capsys.readouterr().err
    assert "=== Flat baseline, epochs 1-2:" in printed
    assert "trained again: baseline.keras trained for 1 epochs ===" in printed
    baseline = json.loads((run / "metrics.json").read_text())["baseline"]
    assert (baseline["conditional"]["epochs"], baseline["flat"]["epochs"]) == (2, 2)
    assert baseline["flat"]["epochs_planned"] == 2
    assert "| epochs | 2 | 2 |" in (run / "report.md").read_text()

    weights = keras.models.load_model(run / "baseline.keras").get_weights()
    resume(run, verbose=2)  # as many epochs as the baseline trained: it is kept
    assert "=== Flat baseline" not in capsys.readouterr().err
    for kept, before in zip(keras.models.load_model(run / "baseline.keras").get_weights(), weights):
        np.testing.assert_array_equal(kept, before)


def test_a_missing_data_dir_is_named_whatever_the_image_size(tmp_path):
    for size in ("auto", 32):
        with pytest.raises(ValueError, match=r"image folder does not exist: '.*nowhere'"):
            train(tmp_path / "nowhere", tmp_path / "run", **{**TINY, "image_size": size})
    assert sorted(os.listdir(tmp_path)) == []


def test_a_missing_hierarchy_file_is_named(shapes, tmp_path):
    missing = tmp_path / "groups.json"
    with pytest.raises(ValueError, match=r"No such hierarchy file: '.*groups\.json'"):
        train(shapes / "train", tmp_path / "run", hierarchy=missing, **TINY)
    assert not (tmp_path / "run").exists()


def test_discovery_without_its_extra_fails_before_anything_is_written(
    shapes, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)  # scikit-learn not installed
    flat = shapes / "train" / "round"  # round/<class>/*: a flat folder of classes
    with pytest.raises(ImportError, match=r'pip install "condnet\[discovery\]"'):
        train(flat, tmp_path / "run", hierarchy="auto", **{**TINY, "verbose": 2})
    assert not (tmp_path / "run").exists()
    assert "Discovery" not in capsys.readouterr().err


@pytest.mark.slow
def test_train_and_resume_say_what_they_found_and_where_they_continue(shapes, tmp_path, capsys):
    run = tmp_path / "run"
    options = {**TINY, "verbose": 2}
    train(shapes / "train", run, epochs=1, **options)
    printed = capsys.readouterr().err
    assert "Found 72 images in 6 classes / 2 groups; training on" in printed
    resume(run, epochs=2, verbose=2)
    assert "after epoch 1 (phase 'joint')" in capsys.readouterr().err

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

from condnet.data.demo_data import make_shapes_dataset
from condnet.runs.checkpoint import read_state
from condnet.runs.claim import RunClaim
from condnet.runs.files import RUN_FILES
from condnet.runs.lock import LOCK, RunLocked
from condnet.runs.options import TrainingOptions
from condnet.runs.outputs import mark
from condnet.runs.recipe import _stopping_callbacks, resume, train
from condnet.runs.run_dir import calibrate_run, load_run
from condnet.testing import tiny_resnet_backbone

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
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, samples_per_class=12, image_size=32, test_samples_per_class=4)
    return root


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """Two epochs of a hard-routed run with hedging and a Gumbel temperature (copy to change)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    options = dict(routing="hard", confidence_threshold=0.6, temperature=0.5, patience=10)
    train(shapes / "train", run, epochs=2, **options, **TINY)
    return run


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


def _history_rows(run_dir):
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
    assert [row["epoch"] for row in _history_rows(run)] == ["1", "2"]
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["image_size"] == 32 and config["options"]["epochs"] == 2
    assert config["hierarchy"] == {
        "angular": ["square", "star", "triangle"],
        "round": ["circle", "ellipse", "ring"],
    }
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_samples"] == 6 * 12 - len(result["model"].hierarchy.classes) * 10
    best = max(float(row["val_accuracy"]) for row in _history_rows(run))
    np.testing.assert_allclose(metrics["accuracy"], best, atol=1e-6)  # model.keras is the best
    assert all(float(row["epoch_seconds"]) > 0 for row in _history_rows(run))
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


@pytest.mark.slow
def test_staged_strategy_runs_gate_expert_and_joint_phases(shapes, tmp_path, capsys):
    run = tmp_path / "run"
    loud = {**TINY, "verbose": 2}
    train(shapes / "train", run, epochs=3, strategy="staged", routing="hard", **loud)
    captured = capsys.readouterr()  # progress lines on standard error, none on standard output
    assert "=== Phase" not in captured.out
    headers = [line for line in captured.err.splitlines() if "=== Phase" in line]
    assert [h.split(":")[0] for h in headers] == [
        "=== Phase 1/3",
        "=== Phase 2/3",
        "=== Phase 3/3",
    ]
    assert "gate, epochs 1-1" in headers[0] and "experts, epochs 2-2" in headers[1]
    assert [row["phase"] for row in _history_rows(run)] == ["0", "1", "2"]
    weights = [(r["gate_loss_weight"], r["expert_loss_weight"]) for r in _history_rows(run)]
    assert weights == [("1.0", "0.0"), ("0.0", "1.0"), ("1.0", "1.0")]


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
    assert [row["epoch"] for row in _history_rows(run)] == ["1", "2", "3", "4"]
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


class _PoisonAtEpoch(keras.callbacks.Callback):
    """Turns a weight into NaN when epoch `epoch` (0-based) begins; keeps model.keras's bytes."""

    def __init__(self, run, epoch):
        super().__init__()
        self.run, self.epoch, self.best = run, epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.best = (self.run / "model.keras").read_bytes()
            kernel = next(w for w in self.model.trainable_weights if "kernel" in w.path)
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


@pytest.mark.slow
def test_a_nan_epoch_is_never_committed_and_the_run_resumes_before_it(shapes, tmp_path):
    run = tmp_path / "run"
    poison = _PoisonAtEpoch(run, epoch=1)
    with pytest.raises(
        RuntimeError, match="Epoch 2 .*not saved.*stays at epoch 1.*--learning-rate"
    ):
        train(shapes / "train", run, epochs=3, patience=10, callbacks=[poison], **TINY)
    assert read_state(run)["epoch"] == 1 and read_state(run)["phase_done"] is False
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0001.keras"]
    assert (run / "model.keras").read_bytes() == poison.best
    assert [row["epoch"] for row in _history_rows(run)] == ["1"]

    resume(run, learning_rate=1e-4, verbose=0)  # the change a NaN stop asks for
    assert [row["epoch"] for row in _history_rows(run)] == ["1", "2", "3"]
    assert json.loads((run / "config.json").read_text())["options"]["learning_rate"] == 1e-4


@pytest.mark.slow
def test_a_huge_learning_rate_saves_nothing_and_says_what_to_lower(shapes, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(
        RuntimeError, match="No epoch was saved.*lower --learning-rate \\(now 1e\\+30"
    ):
        train(shapes / "train", run, epochs=2, learning_rate=1e30, **TINY)
    assert read_state(run) is None and not (run / "model.keras").exists()


@pytest.mark.slow
def test_model_options_reach_the_saved_model(trained):
    model = keras.models.load_model(trained / "model.keras")
    assert model.routing == "hard"
    assert model.confidence_threshold == 0.6 and model.temperature == 0.5
    config = json.loads((trained / "config.json").read_text())["options"]
    assert TrainingOptions.from_config(config).confidence_threshold == 0.6


def test_capacity_dispatch_reaches_the_model():
    from condnet.hierarchy import Hierarchy
    from condnet.runs.recipe import _build

    options = TrainingOptions(
        routing="hard", dispatch="capacity", capacity_factor=2.0, image_size=16, filters=(4, 4)
    )
    model = _build(options, Hierarchy({"a": ["x", "y"], "b": ["z", "w"]}), channels=3)
    assert model.dispatch == "capacity" and model.capacity_factor == 2.0


@pytest.mark.parametrize(
    "flags, kept",
    [
        ([], {"RandomFlip", "RandomRotation"}),
        (["--no-flip"], {"RandomRotation"}),
        (["--no-flip", "--no-rotation"], set()),
    ],
)
def test_no_flip_and_no_rotation_drop_them_from_the_policy(flags, kept):
    from condnet.hierarchy import Hierarchy
    from condnet.runs.cli import build_parser, given_options
    from condnet.runs.recipe import _build

    argv = ["train", "d", "--out", "r", "--augment", "standard", "--image-size", "16", *flags]
    given = given_options(build_parser().parse_args(argv))
    options = TrainingOptions(**given, filters=(4, 4))
    model = _build(options, Hierarchy({"a": ["x", "y"], "b": ["z", "w"]}), channels=3)
    augmentation = next(layer for layer in model._flatten_layers() if layer.name == "augmentation")
    names = {type(layer).__name__ for layer in augmentation.layers}
    assert names & {"RandomFlip", "RandomRotation"} == kept
    assert {"RandomZoom", "RandomTranslation"} <= names  # the rest of the policy stays


@pytest.mark.slow
def test_resume_with_more_epochs_trains_them(trained, tmp_path):
    run = _copy(trained, tmp_path)
    resume(run, epochs=3, verbose=0)
    assert [row["epoch"] for row in _history_rows(run)] == ["1", "2", "3"]
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


def _backbone_weights(model):
    from condnet.vision.image_model import backbone_of

    backbone = backbone_of(model)
    return {w.path: keras.ops.convert_to_numpy(w).copy() for w in backbone.weights}


def _fine_tuned_backbone(shapes, run, options, layers):
    """The backbone weights after one frozen epoch and one of fine-tuning its top `layers`."""
    train(
        shapes / "train",
        run,
        epochs=1,
        fine_tune_epochs=1,
        fine_tune_layers=layers,
        fine_tune_learning_rate=1e-2,
        **options,
    )
    last = read_state(run)["checkpoint"]  # model.keras is the best epoch, maybe the frozen one
    return _backbone_weights(keras.models.load_model(run / "checkpoints" / last))


@pytest.mark.slow
def test_transfer_recipe_freezes_the_base_then_fine_tunes_its_top(shapes, tmp_path):
    from condnet.vision.backbones import application_trunk

    base = application_trunk("MobileNetV3Small", input_shape=(32, 32, 3))
    weights_file = tmp_path / "base.weights.h5"
    base.save_weights(weights_file)
    options = dict(TINY, backbone="MobileNetV3Small", weights=str(weights_file), patience=10)
    frozen = train(shapes / "train", tmp_path / "frozen", epochs=1, **options)["model"]
    start = _backbone_weights(frozen)
    loaded = {w.path: keras.ops.convert_to_numpy(w) for w in base.weights}
    assert sum(np.array_equal(loaded[k], v) for k, v in start.items() if k in loaded) > 0
    assert all(np.array_equal(loaded[k], start[k]) for k in loaded if k in start)  # frozen

    after = _fine_tuned_backbone(shapes, tmp_path / "tuned", options, layers=3)
    changed = [k for k in start if not np.array_equal(start[k], after[k])]
    assert changed, "fine-tuning changed no backbone weight"
    assert not any("batch_norm" in k or "/gamma" in k or "moving" in k for k in changed)


def _user_model_file(directory):
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


def _keras_hub_preset(directory):
    """A keras-hub preset without an image converter: path, options, reloaded."""
    keras_hub = pytest.importorskip("keras_hub")
    tiny_resnet_backbone(keras_hub).save_to_preset(directory / "preset")
    path = str(directory / "preset")
    return path, {"preprocess": "unit"}, keras_hub.models.Backbone.from_preset(path)


@pytest.mark.slow
@pytest.mark.parametrize("make_backbone", [_user_model_file, _keras_hub_preset])
def test_a_users_model_or_preset_is_frozen_then_fine_tuned(shapes, tmp_path, make_backbone):
    backbone, extra, source = make_backbone(tmp_path)
    small_cnn_only = {"filters"}
    options = {k: v for k, v in TINY.items() if k not in small_cnn_only}
    options.update(extra, backbone=backbone, patience=10)
    frozen = train(shapes / "train", tmp_path / "frozen", epochs=1, **options)["model"]
    before = _backbone_weights(frozen)
    loaded = [keras.ops.convert_to_numpy(w) for w in source.weights]
    # Frozen: after an epoch, every backbone weight is still one of the loaded ones.
    assert before and all(
        any(v.shape == w.shape and np.array_equal(v, w) for w in loaded) for v in before.values()
    )

    after = _fine_tuned_backbone(shapes, tmp_path / "tuned", options, layers=4)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert changed, "fine-tuning changed no backbone weight"


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


class _Crash(Exception):
    pass


class _CrashAt(keras.callbacks.Callback):
    """Stops the process's training with an exception when `epoch` begins (a crash)."""

    def __init__(self, epoch):
        super().__init__()
        self.crash_epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.crash_epoch:
            raise _Crash(f"crash at epoch {epoch}")


@pytest.mark.slow
@pytest.mark.parametrize("crash_epoch", [1, 2], ids=["inside_a_phase", "at_a_phase_boundary"])
def test_a_staged_run_resumes_inside_and_across_its_phases(shapes, tmp_path, crash_epoch):
    run = tmp_path / "run"
    options = dict(epochs=6, strategy="staged", patience=10, **TINY)
    with pytest.raises(_Crash):
        train(shapes / "train", run, callbacks=[_CrashAt(crash_epoch)], **options)
    assert read_state(run)["epoch"] == crash_epoch
    resume(run, verbose=0)
    rows = _history_rows(run)
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    assert [row["phase"] for row in rows] == ["0", "0", "1", "1", "2", "2"]
    weights = [(r["gate_loss_weight"], r["expert_loss_weight"]) for r in rows]
    assert weights == [("1.0", "0.0")] * 2 + [("0.0", "1.0")] * 2 + [("1.0", "1.0")] * 2
    # each phase decays its own rate along a cosine, and the crash does not restart it
    rates = [float(r["learning_rate"]) for r in rows]
    np.testing.assert_allclose(rates, [1e-3, 1e-3 * 0.505] * 3, rtol=1e-5)


def test_plateau_schedule_keeps_the_rate_until_the_metric_stalls(shapes, tmp_path):
    run = tmp_path / "run"
    train(shapes / "train", run, epochs=2, lr_schedule="plateau", **TINY)
    assert [float(r["learning_rate"]) for r in _history_rows(run)] == pytest.approx([1e-3] * 2)
    with pytest.raises(ValueError, match="must be one of.*Received: lr_schedule='step'"):
        train(shapes / "train", tmp_path / "other", lr_schedule="step", **TINY)
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_train_and_resume_say_what_they_found_and_where_they_continue(shapes, tmp_path, capsys):
    run = tmp_path / "run"
    options = {**TINY, "verbose": 2}
    train(shapes / "train", run, epochs=1, **options)
    printed = capsys.readouterr().err
    assert "Found 72 images in 6 classes / 2 groups; training on" in printed
    resume(run, epochs=2, verbose=2)
    assert "after epoch 1 (phase 'joint')" in capsys.readouterr().err


@pytest.mark.parametrize(("schedule", "epochs_run"), [("cosine", 7), ("plateau", 2)])
def test_early_stopping_waits_for_the_second_half_of_a_cosine_schedule(schedule, epochs_run):
    # A frozen model never improves: with patience 1, a stop that watches from the first
    # epoch ends after 2 epochs; under the cosine it watches from epoch 6 of 10, so 7 run.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.trainable = False
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    options = TrainingOptions(patience=1, lr_schedule=schedule)
    callbacks = _stopping_callbacks(options, None, (10, 1e-3, 0), fit_kwargs={"verbose": 0})
    x, y = np.random.default_rng(0).normal(size=(16, 3)), np.arange(16) % 2
    history = model.fit(x, y, epochs=10, callbacks=callbacks, verbose=0)
    assert len(history.history["loss"]) == epochs_run


class _ExpertWeightsAtStart(keras.callbacks.Callback):
    """The first conv kernel of every expert when the conditional model starts training."""

    def on_train_begin(self, logs=None):
        if not hasattr(self, "kernels"):
            experts = [e for e in self.model.experts.values() if e is not None]
            self.kernels = [keras.ops.convert_to_numpy(e.weights[0]) for e in experts]


@pytest.mark.slow
def test_an_upcycled_run_starts_every_expert_from_one_trained_flat_model(shapes, tmp_path, capsys):
    seen, fresh = _ExpertWeightsAtStart(), _ExpertWeightsAtStart()
    train(shapes / "train", tmp_path / "plain", epochs=1, callbacks=[fresh], **TINY)
    options = dict(epochs=1, upcycle_epochs=2, callbacks=[seen])
    train(shapes / "train", tmp_path / "run", **options, **{**TINY, "verbose": 2})
    assert "=== Upcycling, epochs 1-2: a flat model over all 6 classes" in capsys.readouterr().err
    first, *others = seen.kernels
    assert others and all(np.array_equal(first, kernel) for kernel in others)
    assert not np.array_equal(fresh.kernels[0], fresh.kernels[1])  # without: each its own
    # the copies are of a trained model, not of the experts' common initial weights
    assert not np.allclose(first, fresh.kernels[0])
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["options"]
    assert stored["upcycle_epochs"] == 2


def test_upcycling_experts_that_cannot_be_copied_fails_before_any_file_is_written(shapes, tmp_path):
    options = {**TINY, "expert_placement": "separate", "upcycle_epochs": 1}
    with pytest.raises(ValueError, match="Upcycling copies a flat classifier's columns"):
        train(shapes / "train", tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()


def test_expert_dropout_reaches_the_experts_only(shapes, tmp_path):
    result = train(shapes / "train", tmp_path / "run", epochs=1, expert_dropout=0.5, **TINY)
    model = result["model"]

    def rates(head):
        return [layer.rate for layer in head.layers if isinstance(layer, keras.layers.Dropout)]

    assert all(rates(e) == [0.5] for e in model.experts.values() if e is not None)
    assert rates(model.gate) == [0.3]


@pytest.mark.parametrize(
    ("validation", "monitor"), [(120, "val_accuracy_smoothed"), (600, "val_accuracy")]
)
def test_early_stopping_on_a_small_validation_split_watches_the_smoothed_accuracy(
    validation, monitor
):
    class Split:
        num_samples = validation

    callbacks = _stopping_callbacks(TrainingOptions(), Split(), (10, 1e-3, 0))
    stopping = next(c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping))
    assert stopping.monitor == monitor
    smoothers = [c for c in callbacks if type(c).__name__ == "SmoothedMetric"]
    assert callbacks.index(stopping) > (callbacks.index(smoothers[0]) if smoothers else -1)


@pytest.mark.parametrize(
    ("options", "policy"),
    [
        (dict(backbone="own.keras"), "none"),
        (dict(backbone="MobileNetV3Small", weights="imagenet"), "none"),
        (dict(backbone="own.keras", augment="light"), "light"),
        (dict(), "auto"),
    ],
)
def test_auto_augmentation_is_none_on_a_pretrained_backbone(options, policy):
    from condnet.runs.recipe import resolve_augment

    assert resolve_augment(TrainingOptions(**options)) == policy


@pytest.mark.parametrize(
    ("options", "rate"),
    [
        (dict(), 1e-3),
        (dict(modality="image"), 1e-3),
        (dict(modality="text"), 1e-2),
        (dict(modality="text", learning_rate=3e-4), 3e-4),
    ],
)
def test_auto_learning_rate_is_higher_for_documents(options, rate):
    from condnet.runs.recipe import resolve_learning_rate

    assert resolve_learning_rate(TrainingOptions(**options)) == rate


class _TrunkRuns(keras.callbacks.Callback):
    """Counts, per fit, the calls of the model's trunk on images (not on cached features)."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.fits, self.calls = [], 0
        from condnet.models.conditional_model import ConditionalModel

        original = ConditionalModel.tap_features

        def counted(model, inputs, training=False):
            self.calls += not isinstance(inputs, dict)
            return original(model, inputs, training=training)

        monkeypatch.setattr(ConditionalModel, "tap_features", counted)

    def on_train_begin(self, logs=None):
        self.calls = 0

    def on_train_end(self, logs=None):
        self.fits.append(self.calls)


@pytest.mark.slow
def test_a_frozen_backbone_runs_once_per_image_then_fine_tuning_runs_it(
    shapes, tmp_path, monkeypatch
):
    from condnet.runs import recipe
    from condnet.training import features
    from condnet.vision.image_model import HEAD_UNITS

    images, run_once = [], features._run_once

    def counted(trunk, folder):
        images.append(folder.num_samples)
        return run_once(trunk, folder)

    monkeypatch.setattr(features, "_run_once", counted)
    # --augment auto probes the validation images (here a fixed finding: shifts cost little).
    found = {"images": 12, "clean": 0.75, "augmented": 0.70, "drop_error": 0.05}
    monkeypatch.setattr(recipe, "PROBE_MIN_IMAGES", 1)
    monkeypatch.setattr(features, "augmentation_probe", lambda *args: found)
    trunk_runs = _TrunkRuns(monkeypatch)
    backbone, _, _ = _user_model_file(tmp_path)
    options = {k: v for k, v in TINY.items() if k not in ("filters", "augment", "baseline")}
    result = train(
        shapes / "train",
        tmp_path / "run",
        backbone=backbone,
        epochs=3,
        fine_tune_epochs=1,
        fine_tune_learning_rate=1e-2,
        patience=10,
        callbacks=[trunk_runs],
        **options,
    )
    assert sum(images) == 72  # every image once: training and validation, model and baseline
    assert trunk_runs.fits[0] == 0  # three frozen epochs on the features alone
    assert trunk_runs.fits[1] > 0  # fine-tuning runs the unfrozen backbone
    assert result["model"].gate_tap == "features"
    config = json.loads((tmp_path / "run" / "config.json").read_text())["options"]
    assert config["augment"] == "none"
    assert result["metrics"]["augmentation_probe"] == {**found, "augment": "none"}
    assert config["head_units"] == HEAD_UNITS  # "auto" resolved and kept for a resume
    assert result["metrics"]["best_epoch_chosen_on"] == {
        "images": 12,
        "monitor": "val_accuracy_smoothed",
    }


@pytest.mark.parametrize(
    ("augmented", "error", "policy"),
    [(0.70, 0.01, "light"), (0.79, 0.001, "none"), (0.77, 0.01, "none")],
)
def test_auto_augmentation_on_a_pretrained_backbone_follows_the_probe(
    shapes, tmp_path, monkeypatch, augmented, error, policy
):
    from condnet.runs import recipe
    from condnet.training import features

    # A drop of 3 points with a standard error of 1 may be 1 point: not sure enough.
    found = {"images": 12, "clean": 0.80, "augmented": augmented, "drop_error": error}
    monkeypatch.setattr(recipe, "PROBE_MIN_IMAGES", 1)
    monkeypatch.setattr(features, "augmentation_probe", lambda *args: found)
    backbone, _, _ = _user_model_file(tmp_path)
    options = TrainingOptions(backbone=backbone, image_size=32, batch_size=16)
    options, (train_data, _), model = recipe._prepare(options, shapes / "train")
    assert options.augment == policy  # a drop surely of 2 points or more turns it on
    layers = [layer.name for layer in model.trunk.layers]
    assert ("augmentation" in " ".join(layers)) == (policy == "light")
    assert train_data.augmentation_probe["augment"] == policy
    line = recipe._probe_line(train_data)
    assert "(a drop of %.1f points" % (100 * (0.80 - augmented)) in line
    assert "12 validation images 80.0% right as they are" in line
    times, probed = recipe.RunTimes(), train_data.augmentation_probe["seconds"]
    times.add("scan and prepare", probed + 2.0)
    recipe._time_probe((options, (train_data, None), model), times)  # the probe's pass
    assert times.seconds == pytest.approx({"scan and prepare": 2.0, "fit frozen features": probed})

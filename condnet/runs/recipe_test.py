import csv
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from condnet.data.demo_data import make_shapes_dataset
from condnet.runs.checkpoint import read_state
from condnet.runs.recipe import train

TINY = dict(image_size=32, filters=(8, 8, 8, 8), batch_size=16, augment=False, verbose=0)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, samples_per_class=12, image_size=32, test_samples_per_class=4)
    return root


def _history_rows(run_dir):
    with open(run_dir / "history.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_train_writes_a_complete_run_directory(shapes, tmp_path):
    run = tmp_path / "run"
    result = train(shapes / "train", run, epochs=2, **TINY)
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


@pytest.mark.slow
def test_staged_strategy_runs_gate_expert_and_joint_phases(shapes, tmp_path):
    run = tmp_path / "run"
    train(shapes / "train", run, epochs=3, strategy="staged", routing="hard", **TINY)
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

    result = train("ignored", run, resume=True, verbose=0)
    assert [row["epoch"] for row in _history_rows(run)] == ["1", "2", "3", "4"]
    final = keras.models.load_model(run / "checkpoints" / read_state(run)["checkpoint"])
    iterations = int(keras.ops.convert_to_numpy(final.optimizer.iterations))
    assert iterations == 4 * steps  # optimizer state carried over, not restarted
    assert result["metrics"]["num_samples"] > 0


def test_refuses_a_run_directory_that_holds_a_run(shapes, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds a run \\(config.json\\).*--overwrite"):
        train(shapes / "train", tmp_path, epochs=1, **TINY)
    assert (tmp_path / "config.json").read_text() == "{}"  # nothing lost


def test_resume_needs_a_run(tmp_path):
    with pytest.raises(ValueError, match="no run to resume"):
        train("data", tmp_path, resume=True)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"routing": "top1"}, "routing='top1'"),
        ({"strategy": "greedy"}, "strategy must be one of"),
        ({"epochs": 0}, "epochs must be an int >= 1"),
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


def _backbone_weights(model):
    from condnet.vision.image_model import backbone_of

    backbone = backbone_of(model)
    return {w.path: keras.ops.convert_to_numpy(w).copy() for w in backbone.weights}


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

    train(
        shapes / "train",
        tmp_path / "tuned",
        epochs=1,
        fine_tune_epochs=1,
        fine_tune_layers=3,
        fine_tune_learning_rate=1e-2,
        **options,
    )
    last = read_state(tmp_path / "tuned")["checkpoint"]  # model.keras is the best epoch
    after = _backbone_weights(keras.models.load_model(tmp_path / "tuned" / "checkpoints" / last))
    changed = [k for k in start if not np.array_equal(start[k], after[k])]
    assert changed, "fine-tuning changed no backbone weight"
    assert not any("batch_norm" in k or "/gamma" in k or "moving" in k for k in changed)


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

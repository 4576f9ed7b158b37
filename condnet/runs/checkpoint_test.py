import json

import keras
import numpy as np
import pytest

from condnet.runs.checkpoint import RunCheckpoint, read_state


def _model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    return model


def _checkpoint(run_dir, model):
    commits = []
    checkpoint = RunCheckpoint(run_dir, phase=0, on_commit=lambda: commits.append(1))
    checkpoint.set_model(model)
    return checkpoint, commits


def test_a_non_finite_loss_is_never_committed(tmp_path):
    model = _model()
    checkpoint, commits = _checkpoint(tmp_path, model)
    checkpoint.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5})
    best = (tmp_path / "model.keras").read_bytes()
    checkpoint.on_epoch_end(1, {"loss": 0.5, "val_loss": float("nan"), "accuracy": 0.9})
    assert checkpoint.refused == (2, "val_loss=nan")
    assert model.stop_training
    assert read_state(tmp_path)["epoch"] == 1 and commits == [1]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch-0001.keras"]
    assert (tmp_path / "model.keras").read_bytes() == best


def test_non_finite_weights_are_never_committed(tmp_path):
    model = _model()
    checkpoint, commits = _checkpoint(tmp_path, model)
    checkpoint.on_epoch_end(0, {"loss": 1.0})
    kernel = model.layers[0].kernel
    kernel.assign(np.full(kernel.shape, np.inf, "float32"))
    checkpoint.on_epoch_end(1, {"loss": 0.5})
    epoch, problem = checkpoint.refused
    assert epoch == 2 and "non-finite values in the weight" in problem and "kernel" in problem
    assert read_state(tmp_path)["epoch"] == 1 and commits == [1]
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert len(history) == 2  # header and epoch 1


@pytest.mark.parametrize("name", ["../model.keras", "/etc/passwd.keras", "sub/epoch.keras", ".."])
def test_state_must_name_a_checkpoint_inside_the_run(tmp_path, name):
    (tmp_path / "state.json").write_text(json.dumps({"checkpoint": name, "epoch": 1}))
    with pytest.raises(ValueError, match="not a file inside .*checkpoints"):
        read_state(tmp_path)


def test_a_damaged_state_names_the_file(tmp_path):
    (tmp_path / "state.json").write_text('{"epoch": 1')
    with pytest.raises(ValueError, match="state.json' is damaged"):
        read_state(tmp_path)


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno

    from condnet.runs import checkpoint

    (tmp_path / "state.json").write_text("old")

    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.write_atomic(tmp_path / "state.json", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert (tmp_path / "state.json").read_text() == "old"

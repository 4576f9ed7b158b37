"""Tests of the recipe's phases: staged and fine-tuning phases, their callbacks, NaN epochs."""

import json

import keras
import numpy as np
import pytest

from condnet.runs.checkpoint import read_state
from condnet.runs.options import TrainingOptions
from condnet.runs.phases import stopping_callbacks
from condnet.runs.recipe import resume, train
from condnet.runs.recipe_test import TINY, history_rows, user_model_file
from condnet.testing import tiny_resnet_backbone


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
    assert [row["phase"] for row in history_rows(run)] == ["0", "1", "2"]
    weights = [(r["gate_loss_weight"], r["expert_loss_weight"]) for r in history_rows(run)]
    assert weights == [("1.0", "0.0"), ("0.0", "1.0"), ("1.0", "1.0")]


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
    assert [row["epoch"] for row in history_rows(run)] == ["1"]

    resume(run, learning_rate=1e-4, verbose=0)  # the change a NaN stop asks for
    assert [row["epoch"] for row in history_rows(run)] == ["1", "2", "3"]
    assert json.loads((run / "config.json").read_text())["options"]["learning_rate"] == 1e-4


@pytest.mark.slow
def test_a_huge_learning_rate_saves_nothing_and_says_what_to_lower(shapes, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(
        RuntimeError, match="No epoch was saved.*lower --learning-rate \\(now 1e\\+30"
    ):
        train(shapes / "train", run, epochs=2, learning_rate=1e30, **TINY)
    assert read_state(run) is None and not (run / "model.keras").exists()


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
    rows = history_rows(run)
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
    assert [float(r["learning_rate"]) for r in history_rows(run)] == pytest.approx([1e-3] * 2)
    with pytest.raises(ValueError, match="must be one of.*Received: lr_schedule='step'"):
        train(shapes / "train", tmp_path / "other", lr_schedule="step", **TINY)
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(("schedule", "epochs_run"), [("cosine", 7), ("plateau", 2)])
def test_early_stopping_waits_for_the_second_half_of_a_cosine_schedule(schedule, epochs_run):
    # A frozen model never improves: with patience 1, a stop that watches from the first
    # epoch ends after 2 epochs; under the cosine it watches from epoch 6 of 10, so 7 run.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.trainable = False
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    options = TrainingOptions(patience=1, lr_schedule=schedule)
    callbacks = stopping_callbacks(options, None, (10, 1e-3, 0), fit_kwargs={"verbose": 0})
    x, y = np.random.default_rng(0).normal(size=(16, 3)), np.arange(16) % 2
    history = model.fit(x, y, epochs=10, callbacks=callbacks, verbose=0)
    assert len(history.history["loss"]) == epochs_run


@pytest.mark.parametrize(
    ("validation", "monitor"), [(120, "val_accuracy_smoothed"), (600, "val_accuracy")]
)
def test_early_stopping_on_a_small_validation_split_watches_the_smoothed_accuracy(
    validation, monitor
):
    class Split:
        num_samples = validation

    callbacks = stopping_callbacks(TrainingOptions(), Split(), (10, 1e-3, 0))
    stopping = next(c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping))
    assert stopping.monitor == monitor
    smoothers = [c for c in callbacks if type(c).__name__ == "SmoothedMetric"]
    assert callbacks.index(stopping) > (callbacks.index(smoothers[0]) if smoothers else -1)


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


def _keras_hub_preset(directory):
    """A keras-hub preset without an image converter: path, options, reloaded."""
    keras_hub = pytest.importorskip("keras_hub")
    tiny_resnet_backbone(keras_hub).save_to_preset(directory / "preset")
    path = str(directory / "preset")
    return path, {"preprocess": "unit"}, keras_hub.models.Backbone.from_preset(path)


@pytest.mark.slow
@pytest.mark.parametrize("make_backbone", [user_model_file, _keras_hub_preset])
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
    from condnet.runs import run_config
    from condnet.training import features
    from condnet.vision.image_model import HEAD_UNITS

    images, run_once = [], features._run_once

    def counted(trunk, folder):
        images.append(folder.num_samples)
        return run_once(trunk, folder)

    monkeypatch.setattr(features, "_run_once", counted)
    # --augment auto probes the validation images (here a fixed finding: shifts cost little).
    found = {"images": 12, "clean": 0.75, "augmented": 0.70, "drop_error": 0.05}
    monkeypatch.setattr(run_config, "PROBE_MIN_IMAGES", 1)
    monkeypatch.setattr(features, "augmentation_probe", lambda *args: found)
    trunk_runs = _TrunkRuns(monkeypatch)
    backbone, _, _ = user_model_file(tmp_path)
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

import dataclasses
import hashlib
import json
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

from condnet.hierarchy import Hierarchy
from condnet.runs.cli import main
from condnet.runs.extend import extend, grow, grown_hierarchy, trunk_trains
from condnet.runs.options import TrainingOptions
from condnet.runs.recipe import resume, train
from condnet.runs.run_dir import calibrate_run, load_run, predict_paths

COLOURS = {
    "blue": (0, 0, 250),
    "green": (0, 250, 0),
    "orange": (250, 150, 0),
    "red": (250, 0, 0),
    "yellow": (250, 250, 0),
    "cyan": (0, 250, 250),
    "magenta": (250, 0, 250),
}
OLD = {"cool": ["blue", "green"], "warm": ["orange", "red"]}
NEW_CLASS = {"warm": ["yellow"]}  # a new class of a known group
NEW_GROUP = {"mixed": ["cyan", "magenta"]}  # a new group
TINY = dict(
    image_size=16,
    filters=(8, 16),
    batch_size=8,
    augment=False,
    verbose=0,
    tensorboard=False,
    baseline=False,
    learning_rate=0.01,
    patience=20,
)


def _colour_folders(root, tree, per_class=10, seed=0):
    """root/<group>/<colour>/<n>.png: one colour each, with a little noise."""
    rng = np.random.default_rng(seed)
    for group, names in tree.items():
        for name in names:
            folder = root / group / name
            folder.mkdir(parents=True)
            for n in range(per_class):
                noise = rng.integers(-20, 21, (16, 16, 3))
                pixels = np.clip(np.array(COLOURS[name]) + noise, 0, 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{n}.png")
    return root


def _digest(folder):
    """Every file under `folder` and its bytes' hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("extend")
    data = _colour_folders(root / "old-data", OLD)
    run = root / "old-run"
    train(data, run, epochs=6, validation_split=0.2, seed=0, **TINY)
    return run


@pytest.fixture(scope="module")
def new_group(tmp_path_factory):
    return _colour_folders(tmp_path_factory.mktemp("group") / "data", NEW_GROUP, seed=1)


@pytest.fixture(scope="module")
def new_class(tmp_path_factory):
    return _colour_folders(tmp_path_factory.mktemp("class") / "data", NEW_CLASS, seed=2)


@pytest.fixture(scope="module")
def grown_group(old_run, new_group, tmp_path_factory):
    """The old run extended with the new group (and a digest of the old run taken before)."""
    before = _digest(old_run)
    out = tmp_path_factory.mktemp("grown") / "run"
    result = extend(old_run, new_group, out, epochs=12, replay=8, verbose=0)
    return out, result, before


def _weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def _same(a, b):
    first, second = _weights(a), _weights(b)
    return len(first) == len(second) and all(np.array_equal(x, y) for x, y in zip(first, second))


# === What changes ===


def test_grown_hierarchy_adds_new_groups_and_classes_after_the_old_ones():
    old = Hierarchy(OLD)
    grown, groups, classes = grown_hierarchy(old, {"warm": ["red", "yellow"], **NEW_GROUP})
    assert grown.to_dict() == {**OLD, "warm": ["orange", "red", "yellow"], **NEW_GROUP}
    assert groups == ["mixed"] and classes == {"warm": ["yellow"]}
    assert grown.classes[:2] == old.classes[:2]  # the old indices of cool stay where they were


def test_grown_hierarchy_refuses_a_moved_class_and_data_with_nothing_new():
    old = Hierarchy(OLD)
    with pytest.raises(ValueError, match=r"cannot move between groups: 'red' \(in 'warm'"):
        grown_hierarchy(old, {"cool": ["red"], **NEW_GROUP})
    with pytest.raises(ValueError, match="DATA_DIR holds no new class: every class in it"):
        grown_hierarchy(old, {"warm": ["red"], "cool": ["blue"]})
    with pytest.raises(ValueError, match="two-level hierarchies"):
        grown_hierarchy(old, {"grey": {"dark": ["black"], "light": ["white"]}})


@pytest.mark.slow
def test_grow_copies_the_old_rows_of_a_growing_head_and_shares_untouched_experts(old_run):
    model, _ = load_run(old_run)
    grown_tree, _, _ = grown_hierarchy(model.hierarchy, {**NEW_CLASS, **NEW_GROUP})
    grown, parts = grow(model, grown_tree)
    assert parts["trained"] == ["gate", "expert warm", "expert mixed"]
    assert parts["frozen"] == ["trunk", "expert cool"]
    assert grown.experts["cool"] is model.experts["cool"] and not grown.experts["cool"].trainable
    assert not grown.trunk.trainable and grown.gate.trainable
    old_kernel, old_bias = _weights(model.experts["warm"])[-2:]
    kernel, bias = _weights(grown.experts["warm"])[-2:]
    assert kernel.shape == (old_kernel.shape[0], 3)  # orange, red, yellow
    np.testing.assert_array_equal(kernel[:, :2], old_kernel)
    np.testing.assert_array_equal(bias[:2], old_bias)
    gate_kernel = _weights(grown.gate)[-2]
    np.testing.assert_array_equal(gate_kernel[:, :2], _weights(model.gate)[-2])
    assert gate_kernel.shape[-1] == 3  # cool, warm, mixed
    body = _weights(grown.experts["mixed"])[:-2]  # a copy of cool's layers, a fresh classifier
    assert all(np.array_equal(a, b) for a, b in zip(body, _weights(model.experts["cool"])))
    images = np.stack([np.full((16, 16, 3), COLOURS[c], "float32") for c in ("orange", "red")])
    features = model.tap_features(images)[model.expert_taps["warm"]]
    before = keras.ops.convert_to_numpy(model.experts["warm"](features))
    after = keras.ops.convert_to_numpy(grown.experts["warm"](features))
    old_part = after[:, :2] / after[:, :2].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(old_part, before, atol=1e-5)  # same odds between old classes


# === A new group, end to end ===


@pytest.mark.slow
def test_extend_keeps_untouched_experts_bit_for_bit_while_the_trunk_trains(old_run, grown_group):
    out, _, _ = grown_group
    old, _ = load_run(old_run)
    new, _ = load_run(out)
    for group in OLD:
        assert _same(old.experts[group], new.experts[group]), group
    assert not _same(old.trunk, new.trunk)  # trained from scratch in the old run: it trains
    assert not _same(old.gate, new.gate)  # the gate trained


@pytest.mark.slow
def test_extend_gives_a_new_group_an_expert_and_the_gate_an_output(grown_group, new_group):
    out, result, _ = grown_group
    model = keras.models.load_model(out / "model.keras", safe_mode=True)
    assert model.hierarchy.to_dict() == {**OLD, **NEW_GROUP}
    assert model.routing == "hard"
    assert model.gate.output.shape[-1] == 3
    assert model.experts["mixed"].output.shape[-1] == 2
    assert all(layer.trainable for layer in model.experts["cool"].layers)  # shipped unfrozen
    rows = predict_paths(out, [new_group], routing="soft")
    assert np.mean([row["class"] == row["path"].split("/")[-2] for row in rows]) >= 0.75
    section = result["metrics"]["extend"]
    assert section["new_groups"] == ["mixed"] and section["frozen"] == [
        "expert cool",
        "expert warm",
    ]
    assert section["trained"] == ["gate", "expert mixed", "trunk"]
    assert section["old_classes"]["num_samples"] == 8  # 20% of the 40 old images
    assert section["old_classes"]["accuracy_before"] is not None
    assert section["new_classes_scores"]["num_samples"] == 4
    balance = section["balance"]  # only the gate gained an output: no class offset
    assert balance["new_class_offset"] == 0.0
    assert balance["balanced_accuracy_with"] >= balance["balanced_accuracy_without"]
    best, error = balance["balanced_accuracy_best"], balance["standard_error"]
    assert best - error - 1e-9 <= balance["balanced_accuracy_with"] <= best
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["extend"] == section
    assert "old classes" in (out / "report.md").read_text()


@pytest.mark.slow
def test_extend_leaves_the_old_run_as_it_was(old_run, grown_group):
    _, _, before = grown_group
    assert _digest(old_run) == before


@pytest.mark.slow
def test_an_extended_run_refuses_resume_and_calibrate(grown_group):
    out, _, _ = grown_group
    with pytest.raises(ValueError, match="written by `condnet extend`"):
        resume(out)
    with pytest.raises(ValueError, match="written by `condnet extend`"):
        calibrate_run(out)
    with pytest.raises(ValueError, match="is itself an extended run"):
        extend(out, out.parent, out.parent / "again")


# === What runs while extend trains ===


def _trunk_calls_in_fit(monkeypatch):
    """Counts the calls of a ConditionalModel's trunk on images (not on cached features)
    made inside `fit`, and the images the frozen trunk's one pass reads."""
    from condnet.models.conditional_model import ConditionalModel
    from condnet.training import features

    seen = {"fitting": False, "trunk_in_fit": 0, "features_of": []}
    fit, tap_features, run_once = (
        ConditionalModel.fit,
        ConditionalModel.tap_features,
        features._run_once,
    )

    def counted_fit(model, *args, **kwargs):
        seen["fitting"] = True
        try:
            return fit(model, *args, **kwargs)
        finally:
            seen["fitting"] = False

    def counted_taps(model, inputs, training=False):
        seen["trunk_in_fit"] += seen["fitting"] and not isinstance(inputs, dict)
        return tap_features(model, inputs, training=training)

    def counted_once(trunk, folder, **kwargs):
        seen["features_of"].append(folder.num_samples)
        return run_once(trunk, folder, **kwargs)

    monkeypatch.setattr(ConditionalModel, "fit", counted_fit)
    monkeypatch.setattr(ConditionalModel, "tap_features", counted_taps)
    monkeypatch.setattr(features, "_run_once", counted_once)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("train_trunk", [False, True])
def test_extend_trains_the_heads_on_features_computed_once_while_the_trunk_is_frozen(
    old_run, new_class, tmp_path, monkeypatch, train_trunk
):
    seen = _trunk_calls_in_fit(monkeypatch)
    out = tmp_path / "grown"
    result = extend(old_run, new_class, out, epochs=3, replay=8, train_trunk=train_trunk, verbose=0)
    if train_trunk:  # the trunk trains: every epoch runs it on the images
        assert seen["trunk_in_fit"] > 0 and seen["features_of"] == []
    else:  # once per image (training and validation), then the heads alone
        assert seen["trunk_in_fit"] == 0
        assert seen["features_of"] == [8 * 4 + 8, 8 + 2]  # replay + new; old + new held out
        old, _ = load_run(old_run)
        assert _same(old.trunk, result["model"].trunk)
        assert _same(old.experts["cool"], result["model"].experts["cool"])
    assert result["model"].hierarchy.classes_of("warm") == ["orange", "red", "yellow"]


@pytest.mark.slow
@pytest.mark.parametrize("train_trunk", [False, "auto"])  # the features path; the images path
def test_extend_with_the_same_seed_trains_the_same_weights(
    old_run, new_class, tmp_path, train_trunk
):
    first, second = (
        extend(
            old_run,
            new_class,
            tmp_path / name,
            epochs=2,
            replay=8,
            seed=3,
            train_trunk=train_trunk,
            verbose=0,
        )["model"]
        for name in ("first", "second")
    )
    parts = ("gate", "trunk")
    pairs = [(getattr(first, p), getattr(second, p)) for p in parts]
    for part, again in [*pairs, (first.experts["warm"], second.experts["warm"])]:
        assert all(
            np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(_weights(part), _weights(again))
        )


@pytest.mark.slow
def test_extend_trains_a_trunk_it_trained_from_scratch_and_keeps_untouched_experts(
    old_run, new_class, tmp_path
):
    old, config = load_run(old_run)
    options = TrainingOptions.from_config(config["options"])
    assert trunk_trains("auto", old, options)  # small_cnn, trained from scratch
    pretrained = dataclasses.replace(options, backbone=str(tmp_path / "user.keras"))
    assert not trunk_trains("auto", old, pretrained)  # a backbone stays frozen
    assert trunk_trains(True, old, pretrained) is True
    assert trunk_trains(False, old, options) is False
    with pytest.raises(ValueError, match="train_trunk is 'auto', True or False.*'yes'"):
        trunk_trains("yes", old, options)
    # Only warm grows: cool's expert is untouched, and the trunk trains all the same.
    result = extend(old_run, new_class, tmp_path / "grown", epochs=2, replay=8, verbose=0)
    section = result["metrics"]["extend"]
    assert section["trained"] == ["gate", "expert warm", "trunk"]
    assert section["frozen"] == ["expert cool"]
    assert not _same(old.trunk, result["model"].trunk)  # it trained
    assert _same(old.experts["cool"], result["model"].experts["cool"])  # bit for bit


# === A new class in a known group, through the CLI ===


@pytest.mark.slow
def test_cli_extend_grows_a_group_s_expert(old_run, new_class, tmp_path, capsys):
    out = tmp_path / "grown"
    args = ["extend", str(old_run), str(new_class), "--out", str(out), "--epochs", "3"]
    assert main([*args, "--quiet", "--json"]) == 0
    section = json.loads(capsys.readouterr().out)
    assert section["new_classes"] == {"warm": ["yellow"]}
    assert section["frozen"] == ["expert cool"] and "trunk" in section["trained"]
    old, _ = load_run(old_run)
    new, _ = load_run(out)
    assert new.hierarchy.classes_of("warm") == ["orange", "red", "yellow"]
    assert _same(old.experts["cool"], new.experts["cool"])
    assert section["balance"]["new_group_offset"] == 0.0  # no new group
    assert main([*args, "--quiet"]) == 2  # the run is there now
    assert "already holds a run" in capsys.readouterr().err
    args[4] = str(tmp_path / "as-trained")
    assert main([*args, "--no-balance", "--freeze-trunk", "--quiet", "--json"]) == 0
    section = json.loads(capsys.readouterr().out)
    assert section["balance"] is None
    assert "trunk" not in section["trained"] and section["frozen"] == ["trunk", "expert cool"]


# === Errors, before anything is written ===


@pytest.mark.parametrize("seed", [-1, "3", True])
def test_extend_refuses_a_bad_seed_with_its_own_message(old_run, new_class, tmp_path, seed):
    with pytest.raises((ValueError, TypeError), match="seed must be an int >= 0"):
        extend(old_run, new_class, tmp_path / "grown", seed=seed, verbose=0)
    assert not (tmp_path / "grown").exists()


def test_cli_extend_takes_one_trunk_flag(capsys):
    from condnet.runs.cli import build_parser

    parser = build_parser()
    base = ["extend", "run", "data", "--out", "grown"]
    assert parser.parse_args(base).train_trunk == "auto"
    assert parser.parse_args([*base, "--train-trunk"]).train_trunk is True
    assert parser.parse_args(["extend", "--freeze-trunk", *base[1:]]).train_trunk is False
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--freeze-trunk", "--train-trunk"])
    assert "not allowed with argument --freeze-trunk" in capsys.readouterr().err


@pytest.mark.slow
def test_extend_refuses_bad_input_before_writing(old_run, new_class, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="does not exist"):
        extend(old_run, tmp_path / "missing", out)
    with pytest.raises(ValueError, match="holds no new class"):
        extend(old_run, _colour_folders(tmp_path / "same", {"warm": ["red"]}), out)
    moved = _colour_folders(tmp_path / "moved", {"cool": ["red", "yellow"]})
    with pytest.raises(ValueError, match="cannot move between groups"):
        extend(old_run, moved, out)
    with pytest.raises(ValueError, match="the run"):
        extend(old_run, new_class, old_run / "inside")
    with pytest.raises(ValueError, match="replay is 'auto' or the number"):
        extend(old_run, new_class, out, replay=0)
    assert not out.exists()


@pytest.mark.slow
def test_extend_says_when_the_old_training_data_is_gone(old_run, new_class, tmp_path):
    copy = shutil.copytree(old_run, tmp_path / "run")
    config = json.loads((copy / "config.json").read_text())
    data = config["options"]["data_dir"]
    config["options"]["data_dir"] = str(tmp_path / "gone")
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="which is gone.*--old-data DIR"):
        extend(copy, new_class, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    result = extend(copy, new_class, tmp_path / "out", old_data=data, epochs=1, verbose=0)
    assert result["metrics"]["extend"]["old_classes"]["num_samples"] == 8

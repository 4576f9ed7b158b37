import json
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from condnet.data.demo_data import make_shapes_dataset
from condnet.runs.cli import main
from condnet.runs.documents_test import make_documents
from condnet.runs.lock import LOCK
from condnet.runs.tune import SPACE as DEFAULT_SPACE
from condnet.runs.tune import (
    TEXT_SPACE,
    best_trials,
    fewest_trial_epochs,
    pareto_front,
    read_space,
    run_trial,
    summarise,
)
from condnet.testing import free_port

pytest.importorskip("keras_tuner")

TINY = ["--epochs", "1", "--image-size", "32", "--batch-size", "16", "--no-baseline", "--quiet"]
TINY += ["--no-tensorboard"]
SPACE = {
    "routing": {"choices": ["soft", "hard"]},
    "filters": {"choices": ["8 8 8", "8 16 16"]},
    "learning_rate": {"min": 0.0005, "max": 0.005, "sampling": "log"},
    "strategy": "joint",
    "expert_placement": "branch",
    "loss_schedule": "none",
    "augment": "none",
}


ONCE = pytest.mark.skipif(
    __import__("keras").backend.backend() != "tensorflow",
    reason="the search logic is the same on every backend (its trials are ordinary runs, "
    "tested on each): run once, on TensorFlow",
)


@pytest.mark.slow
@ONCE
def test_tune_runs_trials_as_runs_summarises_and_resumes(tmp_path, capsys):
    make_shapes_dataset(
        tmp_path / "data", samples_per_class=8, image_size=32, test_samples_per_class=2
    )
    (tmp_path / "space.json").write_text(json.dumps(SPACE))
    args = ["tune", str(tmp_path / "data" / "train"), "--out", str(tmp_path / "search")]
    args += ["--space", str(tmp_path / "space.json"), *TINY]
    assert main([*args, "--trials", "2"]) == 0
    rows = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert len(rows) == 2 and all(r["val_accuracy"] is not None for r in rows)
    assert any(r["pareto"] for r in rows)
    for row in rows:
        options = json.loads(
            (tmp_path / "search" / "trials" / f"trial-{row['trial']}" / "config.json").read_text()
        )["options"]
        assert options["routing"] == row["values"]["routing"]  # the trial's values trained
        assert options["filters"] == [int(f) for f in row["values"]["filters"].split()]
    assert (tmp_path / "search" / "pareto.png").is_file()
    reported = [r for r in rows if (Path(r["run_dir"]) / "report.md").is_file()]
    assert [r["trial"] for r in reported] == [rows[0]["trial"]]  # only the best trial's
    assert (Path(rows[0]["run_dir"]) / "report.html").is_file()
    before = {
        r["trial"]: (tmp_path / "search" / "trials" / f"trial-{r['trial']}" / "metrics.json")
        .stat()
        .st_mtime
        for r in rows
    }
    assert main([*args, "--trials", "3"]) == 0  # resumes: one more trial, the others kept
    rows = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert len(rows) == 3
    for trial, mtime in before.items():
        path = tmp_path / "search" / "trials" / f"trial-{trial}" / "metrics.json"
        assert path.stat().st_mtime == mtime
    assert "Best: trial" in capsys.readouterr().out
    ensemble = ["ensemble", str(tmp_path / "search"), "--top", "2", "--quiet"]
    ensemble += ["--data", str(tmp_path / "data" / "test"), "--out", str(tmp_path / "top2")]
    assert main(ensemble) == 0
    members = json.loads((tmp_path / "top2" / "metrics.json").read_text())["members"]
    best = sorted(rows, key=lambda r: -r["val_accuracy"])[:2]
    assert [m["run"] for m in members] == [r["run_dir"] for r in best]
    _a_trial_killed_midway_continues(tmp_path / "data" / "train", tmp_path / "search", rows[0])


def _a_trial_killed_midway_continues(data, search, row):
    """A search killed during a trial leaves the trial's lock and no metrics.json; the
    search owns its trials' locks, so running the trial again continues it."""
    trial_dir = search / "trials" / f"trial-{row['trial']}"
    (trial_dir / "metrics.json").unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"pid": dead.pid, "host": socket.gethostname(), "time": "T", "command": "tune"}
    (trial_dir / LOCK).write_text(json.dumps(holder))
    trial = SimpleNamespace(trial_id=row["trial"], hyperparameters=SimpleNamespace(values={}))
    trial.hyperparameters.values = row["values"]
    result = run_trial(data, search, {}, trial)
    assert 0 <= result["val_accuracy"] <= 1
    assert (trial_dir / "metrics.json").is_file() and not (trial_dir / LOCK).exists()


SCORES = {"0": 0.5, "1": 0.9, "2": 0.7}  # trial id -> validation accuracy


def _score_trials(monkeypatch):
    """Trials of `condnet tune` write SCORES instead of training; the list of the options
    and values each trial was given."""
    tried = []

    def scored(data_dir, tune_dir, options, trial, verbose=0):
        run = tune_dir / "trials" / f"trial-{trial.trial_id}"
        run.mkdir(parents=True, exist_ok=True)
        metrics = {"accuracy": SCORES[trial.trial_id], "macs_per_image": {"routed": 1e6}}
        (run / "metrics.json").write_text(json.dumps(metrics))
        tried.append({**options, **trial.hyperparameters.values})
        return {"val_accuracy": metrics["accuracy"], "accuracy_per_mmac": metrics["accuracy"]}

    monkeypatch.setattr("condnet.runs.tune.run_trial", scored)
    monkeypatch.setattr("condnet.runs.tune.report_best", lambda rows, verbose=0: None)
    return tried


@pytest.fixture
def scored_trials(tmp_path, monkeypatch):
    """`condnet tune` on a folder of images, whose trials write SCORES; the values tried."""
    (tmp_path / "data" / "round" / "ring").mkdir(parents=True)
    args = ["tune", str(tmp_path / "data"), "--out", str(tmp_path / "search")]
    return args, _score_trials(monkeypatch)


@pytest.fixture
def scored_text_trials(tmp_path, monkeypatch):
    """`condnet tune` on a folder of documents, whose trials write SCORES; the values tried."""
    make_documents(tmp_path / "data", per_class=2)
    args = ["tune", str(tmp_path / "data"), "--out", str(tmp_path / "search")]
    return args, _score_trials(monkeypatch)


def test_tune_numbers_the_trials_as_keras_tuner_shows_them(scored_trials, tmp_path, capsys):
    args, _ = scored_trials
    assert main([*args, "--trials", "3", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "Running Trial #2" in out and "Trial 2 Complete" in out  # KerasTuner's display
    run = tmp_path / "search" / "trials" / "trial-1"
    assert f"Best: trial #2 (val_accuracy 0.9000) -> {run}" in out  # the same trial, the same #
    rows = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert [(r["number"], r["trial"]) for r in rows] == [(2, "1"), (3, "2"), (1, "0")]
    table = (tmp_path / "search" / "summary.md").read_text().splitlines()
    assert table[2].startswith("| #2 | trial-1 | 0.9000 |")


def test_a_search_of_one_epoch_trials_leaves_out_the_staged_strategy(scored_trials, capsys):
    args, tried = scored_trials
    assert main([*args, "--trials", "3", "--epochs", "1"]) == 0
    assert "this search tries the joint strategy only" in capsys.readouterr().out
    assert [t["strategy"] for t in tried] == ["joint"] * 3 and {t["epochs"] for t in tried} == {1}


def test_a_space_asking_for_staged_in_one_epoch_is_refused_before_the_search(
    scored_trials, tmp_path, capsys
):
    args, tried = scored_trials
    (tmp_path / "space.json").write_text(json.dumps({"strategy": "staged"}))
    assert main([*args, "--space", str(tmp_path / "space.json"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "needs 2 epochs or more, and trials of this search may train 1" in err
    assert "Received: strategy={'choices': ['staged']}, 1 epoch(s) per trial" in err
    assert not tried and not (tmp_path / "search").exists()


@pytest.mark.parametrize("epochs", range(1, 31))
def test_the_fewest_trial_epochs_of_hyperband_are_those_keras_tuner_plans(epochs):
    import keras_tuner as kt

    oracle = kt.oracles.HyperbandOracle(objective="val_accuracy", max_epochs=epochs)
    planned = oracle._get_epochs(oracle._get_num_brackets() - 1, 0)
    assert fewest_trial_epochs("hyperband", epochs, DEFAULT_SPACE) == planned
    assert fewest_trial_epochs("random", epochs, DEFAULT_SPACE) == epochs
    assert fewest_trial_epochs("random", epochs, {"epochs": {"choices": [3, 9]}}) == 3


def test_the_default_space_holds_no_trunk_wider_than_small_cnn():
    choices = DEFAULT_SPACE["filters"]["choices"]
    assert max(int(w) for choice in choices for w in choice.split()) <= 128
    assert "32 64 128" in choices  # small_cnn's own widths, and a narrower trunk


def test_pareto_front_keeps_only_undominated_trials():
    rows = [
        {"trial": "a", "val_accuracy": 0.9, "routed_mmacs": 10.0},
        {"trial": "b", "val_accuracy": 0.8, "routed_mmacs": 5.0},
        {"trial": "c", "val_accuracy": 0.7, "routed_mmacs": 8.0},  # b is better and cheaper
        {"trial": "d", "val_accuracy": None, "routed_mmacs": 1.0},  # failed
    ]
    assert pareto_front(rows) == {"a", "b"}


def test_trials_of_equal_accuracy_rank_in_trial_order_however_keras_tuner_lists_them(tmp_path):
    trials = {}
    for trial_id, accuracy in [("10", 0.5), ("2", 0.5), ("0", 0.5), ("1", 0.9)]:
        run = tmp_path / "trials" / f"trial-{trial_id}"
        run.mkdir(parents=True)
        metrics = {"accuracy": accuracy, "macs_per_image": {"routed": 1e6}}
        (run / "metrics.json").write_text(json.dumps(metrics))
        values = SimpleNamespace(values={"routing": "soft"})
        trials[trial_id] = SimpleNamespace(
            trial_id=trial_id, status="COMPLETED", hyperparameters=values
        )
    tuner = SimpleNamespace(oracle=SimpleNamespace(trials=trials))  # reloaded in glob order
    rows = summarise(tmp_path, tuner)
    assert [row["trial"] for row in rows] == ["1", "0", "2", "10"]  # ties: the earliest first
    assert best_trials(tmp_path, 2) == [str(tmp_path / "trials" / f"trial-{t}") for t in "10"]


def test_a_space_file_naming_an_unknown_option_is_refused(tmp_path):
    (tmp_path / "space.json").write_text(json.dumps({"widht": [1, 2]}))
    with pytest.raises(ValueError, match="'widht', which is not a training option"):
        read_space(tmp_path / "space.json")


@pytest.mark.slow
@ONCE
def test_a_chief_and_two_workers_share_the_trials_without_repeating_one(tmp_path):
    import os
    import subprocess
    import sys

    make_shapes_dataset(
        tmp_path / "data", samples_per_class=8, image_size=32, test_samples_per_class=2
    )
    (tmp_path / "space.json").write_text(json.dumps(SPACE))
    address = f"127.0.0.1:{free_port()}"
    base = [sys.executable, "-m", "condnet", "tune", str(tmp_path / "data" / "train")]
    base += ["--out", str(tmp_path / "search"), "--space", str(tmp_path / "space.json")]
    base += ["--trials", "3", *TINY]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    chief = subprocess.Popen([*base, "--chief", address], env=env, stderr=subprocess.PIPE)
    workers = [
        subprocess.Popen([*base, "--worker", address, "--worker-id", name], env=env)
        for name in ("worker-1", "worker-2")
    ]
    try:
        assert all(w.wait(timeout=600) == 0 for w in workers)
        assert chief.wait(timeout=120) == 0, chief.stderr.read().decode()[-2000:]
    finally:
        for process in (chief, *workers):
            if process.poll() is None:
                process.kill()
    records = [
        json.loads(path.read_text())
        for path in sorted((tmp_path / "search" / "trials").glob("trial-*/trial.json"))
    ]
    assert len(records) == 3 and len({r["trial"] for r in records}) == 3
    assert {r["tuner"] for r in records} <= {"worker-1", "worker-2"}  # the chief runs none
    rows = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert sorted(r["trial"] for r in rows) == sorted(r["trial"] for r in records)


# === Documents ===


@pytest.mark.parametrize(
    "modality, reads", [("auto", "text"), ("text", "text"), ("image", "image")]
)
def test_a_search_on_documents_tries_the_space_of_what_its_trials_read(
    scored_text_trials, modality, reads
):
    args, tried = scored_text_trials
    assert main([*args, "--trials", "3", "--epochs", "2", "--modality", modality]) == 0
    assert len(tried) == 3 and {values["modality"] for values in tried} == {reads}
    space = TEXT_SPACE if reads == "text" else DEFAULT_SPACE
    assert all(set(values) >= set(space) for values in tried)
    if reads == "text":  # auto reads the folder's documents, as `condnet train` does
        assert not {"filters", "augment", "expert_placement"} & set().union(*tried)
        assert {values["text_trunk"] for values in tried} <= {"bag", "cnn"}
        assert {values["sequence_length"] for values in tried} <= {128, 256}
        assert all(3e-3 <= values["learning_rate"] <= 3e-2 for values in tried)


def test_a_flag_fixes_its_option_and_leaves_the_default_space(scored_text_trials, tmp_path):
    args, tried = scored_text_trials
    assert main([*args, "--trials", "2", "--epochs", "2", "--text-trunk", "cnn"]) == 0
    assert [values["text_trunk"] for values in tried] == ["cnn", "cnn"]
    rows = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert all("text_trunk" not in row["values"] for row in rows)  # not searched


@pytest.mark.parametrize(
    "entry",
    [
        {"filters": "8 16"},
        {"augment": "none"},
        {"backbone": "MobileNetV3Small"},
        {"image_size": 64},
    ],
)
def test_a_search_on_documents_refuses_an_image_option_in_its_space_file(
    scored_text_trials, tmp_path, capsys, entry
):
    args, tried = scored_text_trials
    (tmp_path / "space.json").write_text(json.dumps(entry))
    assert main([*args, "--space", str(tmp_path / "space.json")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    (name,) = entry
    assert f"names {name!r}, an option of runs on images, and this search reads documents" in line
    assert "Remove the entry, or pass --modality image for a folder of images" in line
    assert not tried and not (tmp_path / "search").exists()


def test_a_search_on_documents_refuses_image_flags_and_a_flag_its_space_file_varies(
    scored_text_trials, tmp_path, capsys
):
    args, tried = scored_text_trials
    assert main([*args, "--filters", "8", "16"]) == 2
    assert "--filters / filters only apply to images, and this run reads documents" in (
        capsys.readouterr().err
    )
    (tmp_path / "space.json").write_text(json.dumps({"text_trunk": {"choices": ["bag", "gru"]}}))
    assert main([*args, "--space", str(tmp_path / "space.json"), "--text-trunk", "cnn"]) == 2
    assert "names 'text_trunk', which --text-trunk also fixes on the command line" in (
        capsys.readouterr().err
    )
    assert not tried and not (tmp_path / "search").exists()


def test_a_search_on_images_refuses_a_text_option_in_its_space_file(
    scored_trials, tmp_path, capsys
):
    args, tried = scored_trials
    (tmp_path / "space.json").write_text(json.dumps({"text_trunk": ["bag", "cnn"]}))
    assert main([*args, "--space", str(tmp_path / "space.json")]) == 2
    error = capsys.readouterr().err
    assert "names 'text_trunk', an option of runs on documents, and this search reads images" in (
        error
    )
    assert not tried and not (tmp_path / "search").exists()


@pytest.mark.slow
def test_tune_on_documents_trains_text_trials_and_ensembles_the_best_two(tmp_path, capsys):
    make_documents(tmp_path / "train", per_class=8)
    make_documents(tmp_path / "test", per_class=3, seed=1)
    search = tmp_path / "search"
    args = ["tune", str(tmp_path / "train"), "--out", str(search), "--trials", "2"]
    args += ["--epochs", "1", "--sequence-length", "32", "--batch-size", "8", "--quiet"]
    assert main([*args, "--no-tensorboard"]) == 0
    rows = json.loads((search / "summary.json").read_text())
    assert len(rows) == 2 and all(row["val_accuracy"] is not None for row in rows)
    for row in rows:
        options = json.loads((Path(row["run_dir"]) / "config.json").read_text())["options"]
        assert (options["modality"], options["sequence_length"]) == ("text", 32)  # as fixed
        for name in ("text_trunk", "vocabulary_size", "routing", "strategy"):
            assert options[name] == row["values"][name]  # the trial's values trained
        assert options["learning_rate"] == pytest.approx(row["values"]["learning_rate"])
        assert "sequence_length" not in row["values"] and "filters" not in row["values"]
    assert (Path(rows[0]["run_dir"]) / "report.md").is_file()  # the best trial's report
    out = tmp_path / "top2"
    words = ["ensemble", str(search), "--top", "2", "--data", str(tmp_path / "test")]
    assert main([*words, "--out", str(out), "--quiet", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [member["run"] for member in metrics["members"]] == [row["run_dir"] for row in rows]
    assert metrics["num_samples"] == 4 * 3 + 1  # the empty and binary files are skipped


@pytest.mark.parametrize("modality", ["image", "text"])
def test_the_default_spaces_take_only_values_the_options_take(tmp_path, modality):
    # The default space passes the check a space file passes: every choice is a value of
    # the option's own vocabulary (condnet.choices, TrainingOptions' checks).
    from condnet.runs.tune import SPACES

    path = tmp_path / "space.json"
    path.write_text(json.dumps(SPACES[modality]))
    assert read_space(path, modality) == SPACES[modality]
    path.write_text(json.dumps({"routing": {"choices": ["soft", "hardd"]}}))
    with pytest.raises(ValueError, match="'hardd' is refused"):
        read_space(path, modality)

import types

import pytest

from condnet.runs import demo
from condnet.runs.cli import main


@pytest.fixture
def fake_run(monkeypatch):
    """A demo whose training takes 100 s and test scoring 3 s on a fake clock, and whose
    timed training steps cost 5 ms per image."""
    clock = [0.0]

    def fake_train(*args, **kwargs):
        clock[0] += 100

    def fake_evaluate(*args, **kwargs):
        clock[0] += 3
        return {"num_samples": 12, "inference_routing": "hard"}

    monkeypatch.setattr(demo, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(demo, "seconds_per_image", lambda routing=None: 0.005)
    monkeypatch.setattr("condnet.runs.recipe.train", fake_train)
    monkeypatch.setattr("condnet.runs.run_dir.evaluate_run", fake_evaluate)
    monkeypatch.setattr(
        "condnet.evaluation.report.summary_table", lambda metrics, title=None: title
    )


def test_demo_says_which_time_is_the_test_scoring_and_which_the_whole_run(
    tmp_path, fake_run, capsys
):
    demo.run_demo(tmp_path / "demo", samples_per_class=2, test_samples_per_class=2)
    assert (tmp_path / "demo" / "data" / "train").is_dir()  # --out may be a new folder
    printed = capsys.readouterr().out
    assert (
        "The test set scored in 3 s (the whole demo, data and training included, took 103 s)."
        in printed
    )


def test_demo_test_table_says_which_routing_it_shows(tmp_path, fake_run, capsys):
    demo.run_demo(tmp_path / "demo", samples_per_class=2, test_samples_per_class=2)
    printed = capsys.readouterr().out
    assert "Test set (12 images), hard-routed (only the chosen expert runs):" in printed


def test_demo_prints_the_time_it_expects_before_it_starts(tmp_path, fake_run, capsys):
    demo.run_demo(tmp_path / "demo", samples_per_class=2, test_samples_per_class=2)
    captured = capsys.readouterr()
    printed = captured.err  # progress lines; the results stay on standard output
    assert "Expected time" not in captured.out and "Drawing" not in captured.out
    # 5 ms x 10 training images x 12 epochs x 2.5, and 24 images drawn at 1.1 ms: 2 s.
    expected = (
        "Expected time on this machine: about 2 s (an estimate from 3 training steps timed "
        "just now, for 12 epochs on 2 images per class, the flat baseline included; early "
        "stopping can make it shorter)."
    )
    assert expected in printed
    assert printed.index(expected) < printed.index("Drawing the shapes data set")


def test_demo_estimate_scales_the_timed_steps_to_the_whole_run(monkeypatch):
    monkeypatch.setattr(demo, "seconds_per_image", lambda routing=None: 0.0033)
    # 1,440 training images x 12 epochs x 3.3 ms x 2.5, and 2,400 images drawn at 1.1 ms.
    assert demo.estimate_seconds(300, 12, 400) == pytest.approx(142.56 + 2.64)
    assert demo.estimate_seconds(300, 12, 0) == pytest.approx(142.56)  # data already drawn
    assert "about 2.4 min" in demo.expected_time_line(145.2, 12, 300)
    assert "about 13 min" in demo.expected_time_line(780, 12, 300)


def test_demo_data_only_draws_the_data_and_trains_nothing(tmp_path, fake_run, capsys):
    assert (
        demo.run_demo(
            tmp_path / "demo", samples_per_class=2, test_samples_per_class=1, data_only=True
        )
        is None
    )
    captured = capsys.readouterr()
    assert "Expected time" not in captured.err and "Test set" not in captured.out
    assert "--data-only: no training" in captured.out
    assert not (tmp_path / "demo" / "run").exists()
    assert len(list((tmp_path / "demo" / "data" / "test").rglob("*.png"))) == 6


def test_cli_demo_data_only_writes_the_sizes_asked(tmp_path, monkeypatch):
    monkeypatch.setattr("condnet.runs.recipe.train", lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "demo"
    flags = ["--samples-per-class", "3", "--test-samples-per-class", "1", "--data-only"]
    assert main(["demo", "--out", str(out), *flags]) == 0
    assert len(list((out / "data" / "train").rglob("*.png"))) == 18
    assert len(list((out / "data" / "test").rglob("*.png"))) == 6


def test_seconds_per_image_times_training_steps_of_the_demo_model(monkeypatch):
    ticks = iter([10.0, 10.96])  # before and after the timed steps
    monkeypatch.setattr(demo, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    # 0.96 s over 3 steps of 32 images.
    assert demo.seconds_per_image(batch_size=32) == pytest.approx(0.01)

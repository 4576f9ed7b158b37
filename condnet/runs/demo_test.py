import types

from condnet.runs import demo


def test_demo_says_which_time_is_the_test_scoring_and_which_the_whole_run(
    tmp_path, monkeypatch, capsys
):
    clock = [0.0]  # a fake clock: training takes 100 s, scoring the test set 3 s

    def fake_train(*args, **kwargs):
        clock[0] += 100

    def fake_evaluate(*args, **kwargs):
        clock[0] += 3
        return {"num_samples": 12}

    monkeypatch.setattr(demo, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr("condnet.runs.recipe.train", fake_train)
    monkeypatch.setattr("condnet.runs.run_dir.evaluate_run", fake_evaluate)
    monkeypatch.setattr("condnet.evaluation.report.summary_table", lambda metrics: "")
    demo.run_demo(tmp_path / "demo", samples_per_class=2, test_samples_per_class=2)
    assert (tmp_path / "demo" / "data" / "train").is_dir()  # --out may be a new folder
    printed = capsys.readouterr().out
    assert (
        "Test set (12 images), scored in 3 s (the whole demo, data and training included, "
        "took 103 s):" in printed
    )

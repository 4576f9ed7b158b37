import os
import signal
import subprocess
import sys
import textwrap

import pytest

from condnet.runs.claim import RunClaim, check_run_dir, clean_temporary_files, restore_replaced
from condnet.runs.files import RUN_FILES
from condnet.runs.outputs import MARKER, mark, read_mark


def _old_run(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.keras", "state.json", "config.json", "report.md"):
        (folder / name).write_text(f"old {name}")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "epoch-0003.keras").write_text("old checkpoint")
    (folder / "notes.txt").write_text("mine")  # not a run file: never moved
    return folder


def _siblings(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


def test_a_committed_run_is_refused_without_overwrite(tmp_path):
    run = _old_run(tmp_path / "run")
    with pytest.raises(ValueError, match="already holds a run \\(config.json, state.json"):
        with RunClaim(run):
            pass
    assert (run / "model.keras").read_text() == "old model.keras"


def test_overwrite_moves_the_old_run_aside_and_deletes_it_on_commit(tmp_path):
    run = _old_run(tmp_path / "run")
    with RunClaim(run, overwrite=True) as claim:
        assert sorted(os.listdir(run)) == [MARKER, "notes.txt"]
        (aside,) = _siblings(run)
        assert aside.startswith(".run.replaced-")
        assert (tmp_path / aside / "model.keras").read_text() == "old model.keras"
        (run / "model.keras").write_text("new")
        claim.commit()
        assert _siblings(run) == []
    assert (run / "model.keras").read_text() == "new"
    assert (run / "notes.txt").read_text() == "mine"


def test_a_failure_before_the_commit_restores_the_old_run(tmp_path):
    run = _old_run(tmp_path / "run")
    with pytest.raises(RuntimeError, match="boom"):
        with RunClaim(run, overwrite=True):
            (run / "model.keras").write_text("half-written new run")
            (run / "history.csv").write_text("new")
            raise RuntimeError("boom")
    assert (run / "model.keras").read_text() == "old model.keras"
    assert (run / "checkpoints" / "epoch-0003.keras").read_text() == "old checkpoint"
    assert not (run / "history.csv").exists()  # the new run's file, gone with it
    assert (run / "notes.txt").read_text() == "mine"
    assert _siblings(run) == []


def test_leftovers_of_a_run_killed_before_its_first_epoch_need_no_overwrite(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    mark(run, "run", RUN_FILES)  # as the claim of the killed run did
    (run / "config.json").write_text("{}")
    (run / "hierarchy.json").write_text("{}")
    with RunClaim(run) as claim:
        assert not (run / "config.json").exists()
        claim.commit()
    assert _siblings(run) == []


def test_temporary_files_of_a_killed_write_are_cleaned(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in (".tmp-model.keras", ".state.json.tmp", "checkpoints/.tmp-epoch-0002.keras"):
        (tmp_path / name).write_text("partial")
    (tmp_path / "notes.tmp").write_text("mine")
    clean_temporary_files(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["notes.tmp"]


@pytest.mark.parametrize(
    "out, relation",
    [("data", "is"), ("data/run", "is inside"), (".", "contains"), ("link/run", "is inside")],
)
def test_a_run_directory_must_stay_clear_of_the_data(tmp_path, out, relation):
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    with pytest.raises(ValueError, match=f"{relation} the image folder DATA_DIR"):
        check_run_dir(tmp_path / out, tmp_path / "data")


def test_a_run_directory_cannot_be_or_lie_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; a run needs a folder"):
        check_run_dir(tmp_path / "file", tmp_path / "data")
    with pytest.raises(ValueError, match="lies under the file .*file"):
        check_run_dir(tmp_path / "file" / "run", tmp_path / "data")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_run_directory_is_refused(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o500)
    with pytest.raises(ValueError, match="is read-only"):
        check_run_dir(tmp_path / "locked" / "run", tmp_path / "data")


RUN_LIKE = ("config.json", "history.csv", "logs/events", "examples/a.png", "evaluation/x.md")


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_condnet_did_not_write_is_never_claimed(tmp_path, overwrite):
    run = tmp_path / "mine"
    for name in RUN_LIKE:  # names a run also writes, but not a run
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(f"user's {name}")
    with pytest.raises(ValueError, match="holds files condnet did not write"):
        check_run_dir(run, tmp_path / "data")
    with pytest.raises(ValueError, match="holds files condnet did not write"):
        with RunClaim(run, overwrite=overwrite):
            pass
    assert all((run / name).read_text() == f"user's {name}" for name in RUN_LIKE)
    assert read_mark(run) is None


def test_a_run_inside_another_run_is_refused(tmp_path):
    outer = _old_run(tmp_path / "outer")
    with pytest.raises(ValueError, match="lies inside the run"):
        check_run_dir(outer / "checkpoints" / "new", tmp_path / "data")


def test_an_overwrite_killed_before_the_commit_is_undone_by_the_next_claim(tmp_path):
    run = _old_run(tmp_path / "run")
    claim = RunClaim(run, overwrite=True).__enter__()  # then kill -9: no __exit__
    (run / "config.json").write_text("new, uncommitted")
    assert _siblings(run)[0].startswith(".run.replaced-")
    assert "Restored the run" in restore_replaced(run)
    assert (run / "model.keras").read_text() == "old model.keras"
    assert (run / "config.json").read_text() == "old config.json"
    assert (run / "checkpoints" / "epoch-0003.keras").read_text() == "old checkpoint"
    assert _siblings(run) == [] and claim.aside is not None


def test_an_overwrite_killed_after_the_commit_finishes_deleting_the_old_run(tmp_path):
    run = _old_run(tmp_path / "run")
    RunClaim(run, overwrite=True).__enter__()
    (run / "state.json").write_text("new, committed")
    assert "Removed the run" in restore_replaced(run)
    assert _siblings(run) == [] and (run / "state.json").read_text() == "new, committed"


def test_sigterm_during_an_overwrite_restores_the_old_run(tmp_path):
    run = _old_run(tmp_path / "run")
    script = textwrap.dedent(
        f"""
        import signal, sys
        from condnet.runs.cli import _terminate_as_interrupt
        from condnet.runs.claim import RunClaim
        with _terminate_as_interrupt():
            try:
                with RunClaim({str(run)!r}, overwrite=True):
                    open({str(run / "config.json")!r}, "w").write("new, uncommitted")
                    print("claimed", flush=True)
                    signal.pause()  # until the test's SIGTERM
            except KeyboardInterrupt:
                sys.exit(130)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "claimed"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    assert (run / "config.json").read_text() == "old config.json"
    assert (run / "checkpoints" / "epoch-0003.keras").read_text() == "old checkpoint"
    assert _siblings(run) == []

import json
import os
import socket
import subprocess

import pytest

from condnet.runs.lock import LOCK, RunLocked, read_holder, run_lock


def _dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _write_lock(folder, pid, host=None):
    holder = {"pid": pid, "host": host or socket.gethostname(), "time": "T", "command": "c"}
    (folder / LOCK).write_text(json.dumps(holder))


def test_run_lock_records_its_holder_and_releases(tmp_path):
    with run_lock(tmp_path, command="condnet train x") as holder:
        found = read_holder(tmp_path / LOCK)
        assert found == holder
        assert found["pid"] == os.getpid() and found["command"] == "condnet train x"
    assert not (tmp_path / LOCK).exists()


def test_a_second_lock_on_the_same_folder_is_refused(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(RunLocked, match=f"locked by pid {os.getpid()} on host .* since"):
            with run_lock(tmp_path):
                pass
        assert (tmp_path / LOCK).exists()  # the refused one did not remove the holder's lock
    assert not (tmp_path / LOCK).exists()


def test_a_live_holder_is_never_broken(tmp_path):
    _write_lock(tmp_path, os.getppid())
    with pytest.raises(RunLocked, match=f"locked by pid {os.getppid()}.*Wait for it"):
        with run_lock(tmp_path, break_lock=True):
            pass
    assert read_holder(tmp_path / LOCK)["pid"] == os.getppid()


def test_a_stale_lock_says_how_to_break_it(tmp_path):
    pid = _dead_pid()
    _write_lock(tmp_path, pid)
    with pytest.raises(RunLocked, match=f"pid {pid} .*no longer running.*--break-lock"):
        with run_lock(tmp_path):
            pass
    with run_lock(tmp_path, break_lock=True):
        assert read_holder(tmp_path / LOCK)["pid"] == os.getpid()
    assert not (tmp_path / LOCK).exists()


def test_an_unreadable_lock_file_is_reported_and_breakable(tmp_path):
    (tmp_path / LOCK).write_text("")
    with pytest.raises(RunLocked, match="unreadable lock file.*--break-lock"):
        with run_lock(tmp_path):
            pass
    with run_lock(tmp_path, break_lock=True):
        assert read_holder(tmp_path / LOCK)["pid"] == os.getpid()


def test_a_lock_from_another_host_needs_break_lock(tmp_path):
    _write_lock(tmp_path, 1, host="elsewhere")
    with pytest.raises(RunLocked, match="on host elsewhere.*if it is gone, pass --break-lock"):
        with run_lock(tmp_path):
            pass
    with run_lock(tmp_path, break_lock=True):
        assert read_holder(tmp_path / LOCK)["host"] == socket.gethostname()


def test_run_lock_needs_an_existing_folder(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        with run_lock(tmp_path / "missing"):
            pass
    assert not (tmp_path / "missing").exists()

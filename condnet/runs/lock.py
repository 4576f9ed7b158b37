"""One writer per run directory: an exclusive lock file naming the process that holds it."""

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK = ".condnet.lock"


class RunLocked(RuntimeError):
    """The run directory is locked by another condnet process (or by a dead one)."""


@contextlib.contextmanager
def run_lock(run_dir, command=None, break_lock=False):
    """Hold `RUN_DIR/.condnet.lock` while the block runs; two writers never share a run.

    The lock file is created with `O_CREAT | O_EXCL`, so exactly one process
    gets it, and holds that process's pid, host, start time and command. A
    lock left by a process that died on this host is *stale*: it is reported
    with how to break it, and `break_lock=True` (`--break-lock`) removes it.
    A lock held by a live process is never broken.

    Args:
        run_dir: str or `Path`. An existing folder.
        command: str. What the holder does, for the message others see.
            Defaults to the command line.
        break_lock: bool. Remove a stale lock (dead process on this host, or
            an unreadable lock file, or a lock from another host) first.
            Defaults to `False`.

    Example:

    ```python
    with run_lock("runs/shapes"):
        ...  # calibrate, write files
    ```
    """
    path = Path(run_dir) / LOCK
    if not path.parent.is_dir():
        raise ValueError(
            f"{str(run_dir)!r} is not a folder, so it holds no run to lock. Check the path. "
            f"Received: run_dir={str(run_dir)!r}"
        )
    holder = _describe(command)
    _acquire(path, holder, break_lock)
    try:
        yield holder
    finally:
        if read_holder(path) == holder:
            path.unlink(missing_ok=True)


def read_holder(path):
    """The holder recorded in a lock file, `{}` for an unreadable one, None when absent."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _describe(command):
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def _acquire(path, holder, break_lock):
    for _ in range(2):  # a second try after breaking a stale lock
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            found = read_holder(path)
            if found is None:
                continue  # released in between
            if not (break_lock and _breakable(found)):
                raise RunLocked(_message(path, found)) from None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(holder))
        return
    raise RunLocked(_message(path, read_holder(path) or {}))


def alive(pid):
    """Whether process `pid` exists on this host (under any user)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a number no pid can be
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _is_stale(found):
    """Whether the holder is known dead: an unreadable file, or a dead pid on this host."""
    if not isinstance(found.get("pid"), int):
        return True
    return found.get("host") == socket.gethostname() and not alive(found["pid"])


def _breakable(found):
    return _is_stale(found) or found.get("host") != socket.gethostname()


def _message(path, found):
    folder = str(path.parent)
    if not isinstance(found.get("pid"), int):
        return (
            f"{folder!r} has an unreadable lock file {LOCK} (a condnet process died while "
            f"taking it). If no condnet process uses it, pass --break-lock (break_lock=True) "
            f"or delete {str(path)!r}."
        )
    who = (
        f"pid {found['pid']} on host {found.get('host')} since {found.get('time')} "
        f"({found.get('command')})"
    )
    if _is_stale(found):
        return (
            f"{folder!r} is locked by {who}, which is no longer running (a stale lock). Pass "
            f"--break-lock (break_lock=True) to remove it, or delete {str(path)!r}."
        )
    if found.get("host") != socket.gethostname():
        return (
            f"{folder!r} is locked by {who}. Wait for it to finish; if it is gone, pass "
            "--break-lock (break_lock=True)."
        )
    return f"{folder!r} is locked by {who}. Wait for it to finish, or use another folder."

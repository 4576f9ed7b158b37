"""Claiming a run directory: check it, move an old run aside, restore it if the new one fails."""

import fnmatch
import os
import shutil
import time
from pathlib import Path

from condnet.runs.files import BEST, CHECKPOINTS, METRICS, RUN_FILES, STATE
from condnet.runs.outputs import (
    BOOKKEEPING,
    MARKER,
    check_output,
    glob_escape,
    is_run,
    mark,
    read_mark,
)

# What a killed write leaves: `save_model_atomic`'s and `write_atomic`'s temporary files.
TEMPORARY_FILES = (".tmp-*.keras", ".*.tmp")
# The files that mean an epoch was committed: a run with none of them has nothing to lose.
COMMITTED = (STATE, BEST, METRICS)


def check_run_dir(run_dir, data_dir, flag="--out", kind="run"):
    """Refuse a run directory that cannot hold a run, before anything is written.

    It must not be, lie inside, or contain `data_dir` (symlinks resolved), nor
    lie inside another run; it must be (or be creatable as) a writable folder,
    and an existing one must be empty or hold a `kind` condnet wrote
    (`check_foreign`).
    """
    run, data = Path(run_dir).resolve(), Path(data_dir).resolve()
    if run == data or data in run.parents or run in data.parents:
        relation = "is" if run == data else "is inside" if data in run.parents else "contains"
        raise ValueError(
            f"{flag} {str(run_dir)!r} {relation} the image folder DATA_DIR {str(data_dir)!r}: "
            "a run written there would mix with (or be read as) the images. Choose an "
            f"{flag} outside DATA_DIR. Received: {flag}={str(run)!r}, DATA_DIR={str(data)!r}"
        )
    check_output(run.parent, flag=flag)  # not inside another run
    if run.is_dir():
        check_foreign(run, kind, flag)
    existing = next(p for p in (run, *run.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == run else f"lies under the file {str(existing)!r}"
        raise ValueError(
            f"{flag} {str(run_dir)!r} {where}; a run needs a folder there. Choose another "
            f"{flag}. Received: {flag}={str(run_dir)!r}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"{flag} {str(run_dir)!r} cannot be written: {str(existing)!r} is read-only for "
            f"this user. Choose another {flag} or change its permissions. "
            f"Received: {flag}={str(run_dir)!r}"
        )


def check_foreign(folder, kind="run", flag="--out"):
    """Refuse a non-empty folder that condnet did not write as a `kind` (a run written
    before markers existed counts as a run): its files are never moved or deleted."""
    folder = Path(folder)
    entries = [n for n in os.listdir(folder) if n not in BOOKKEEPING and not _is_leftover(n)]
    record = read_mark(folder)
    if not entries or (record is not None and record["kind"] == kind):
        return
    if record is None and kind == "run" and is_run(folder):
        return
    what = f"holds {record['kind']!r} output" if record else "holds files condnet did not write"
    shown = ", ".join(sorted(entries)[:5]) + (" ..." if len(entries) > 5 else "")
    raise ValueError(
        f"{flag} {str(folder)!r} {what} ({shown}); condnet writes a {kind} only into a new "
        f"folder, an empty one, or one it wrote as a {kind}, so that nothing there is lost. "
        f"Choose another {flag}. Received: {flag}={str(folder)!r}"
    )


def _is_leftover(name):
    return any(fnmatch.fnmatch(name, pattern) for pattern in TEMPORARY_FILES)


def run_files(run_dir):
    """The names in `RUN_FILES` present in `run_dir`."""
    return [name for name in RUN_FILES if (Path(run_dir) / name).exists()]


def clean_temporary_files(run_dir):
    """Delete the temporary files a killed write left (`.tmp-*.keras`, `.*.tmp`)."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir / CHECKPOINTS):
        for pattern in TEMPORARY_FILES:
            for path in folder.glob(pattern):
                if path.is_file():
                    path.unlink()


class RunClaim:
    """A context that claims `run_dir` for a new run, and gives the old one back on failure.

    On entry, a committed run (`COMMITTED`) is refused unless `overwrite`.
    The files of an earlier run (`RUN_FILES` only; anything else stays) are
    moved to a sibling folder `.NAME.replaced-TIME`, which `commit()` deletes
    once the new run has committed its first epoch. If the block fails
    before that, the new run's files are removed and the old ones moved back.

    Args:
        run_dir: `Path`. An existing folder (held with `run_lock`).
        overwrite: bool. Replace a committed run.
    """

    def __init__(self, run_dir, overwrite=False):
        self.run_dir = Path(run_dir).resolve()
        self.overwrite = overwrite
        self.aside = None
        self.committed = False
        self.marked = False  # whether this claim wrote the folder's marker

    def __enter__(self):
        check_foreign(self.run_dir)
        restore_replaced(self.run_dir)
        existing = run_files(self.run_dir)
        committed = [name for name in existing if name in COMMITTED]
        if committed and not self.overwrite:
            raise ValueError(
                f"The run directory {str(self.run_dir)!r} already holds a run "
                f"({', '.join(existing)}). Pass --overwrite (overwrite=True) to replace it, "
                "--resume (resume()) to continue it, or choose another --out."
            )
        clean_temporary_files(self.run_dir)
        if existing:
            self.aside = _move_aside(self.run_dir, existing)
        self.marked = read_mark(self.run_dir) is None
        mark(self.run_dir, "run", RUN_FILES)
        return self

    def commit(self):
        """The new run committed an epoch: delete the old run's files."""
        if not self.committed:
            self.committed = True
            if self.aside is not None:
                shutil.rmtree(self.aside)

    def __exit__(self, kind, error, traceback):
        if not self.committed and self.aside is not None:
            _remove(self.run_dir, run_files(self.run_dir))
            _move(self.aside, self.run_dir, os.listdir(self.aside))
            self.aside.rmdir()
            if self.marked:  # the old run had no marker: leave it as it was
                (self.run_dir / MARKER).unlink(missing_ok=True)
        return False


def replaced_asides(run_dir):
    """The folders an `--overwrite` moved the old run of `run_dir` into and did not delete."""
    run_dir = Path(run_dir).resolve()
    return sorted(run_dir.parent.glob(f".{glob_escape(run_dir.name)}.replaced-*"))


def restore_replaced(run_dir):
    """Finish an `--overwrite` that was cut short (kill -9, power loss); returns a message.

    If the new run committed no epoch, its files are removed and the old run's
    moved back; if it did, the old run's leftover folder is deleted, as the
    overwrite would have. Call with the run's lock held. Returns what it did,
    or None when there was nothing to do.
    """
    run_dir = Path(run_dir).resolve()
    asides = replaced_asides(run_dir)
    if not asides:
        return None
    committed = any((run_dir / name).exists() for name in COMMITTED)
    if committed:
        for aside in asides:
            shutil.rmtree(aside)
        return f"Removed the run an interrupted --overwrite replaced ({asides[-1].name})."
    _remove(run_dir, run_files(run_dir))
    _move(asides[-1], run_dir, os.listdir(asides[-1]))
    asides[-1].rmdir()
    for aside in asides[:-1]:
        shutil.rmtree(aside)
    return (
        f"Restored the run in {str(run_dir)!r}: an --overwrite was interrupted before the new "
        "run committed an epoch."
    )


def _move_aside(run_dir, names):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = run_dir.parent / f".{run_dir.name}.replaced-{stamp}-{os.getpid()}"
    aside.mkdir()
    try:
        _move(run_dir, aside, names)
    except BaseException:
        _move(aside, run_dir, os.listdir(aside))
        aside.rmdir()
        raise
    return aside


def _move(source, target, names):
    for name in names:
        os.replace(source / name, target / name)


def _remove(folder, names):
    for name in names:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()

"""Claiming a run directory: check it, move an old run aside, restore it if the new one fails."""

import os
import shutil
import time
from pathlib import Path

from condnet.runs import checkpoint as ckpt

CONFIG = "config.json"
# Every file and folder a run writes (recipe, report, evaluate, calibrate, demo); nothing else
# in a run directory is ever moved or deleted.
RUN_FILES = (
    CONFIG,
    "hierarchy.json",
    "hierarchy.discovered.json",
    ckpt.STATE,
    ckpt.BEST,
    ckpt.HISTORY,
    ckpt.METRICS,
    "report.md",
    "report.html",
    "training_curves.png",
    "group_confusion.png",
    "class_confusion.png",
    "routing_matrix.png",
    "examples",
    "baseline.keras",
    "model.calibrated.keras",
    "calibration.json",
    ckpt.CHECKPOINTS,
    "logs",
    "evaluation",
    "test-report",
)
# The files that mean an epoch was committed: a run with none of them has nothing to lose.
COMMITTED = (ckpt.STATE, ckpt.BEST, ckpt.METRICS)


def check_run_dir(run_dir, data_dir, flag="--out"):
    """Refuse a run directory that cannot hold a run, before anything is written.

    It must not be, lie inside, or contain `data_dir` (symlinks resolved),
    and it must be (or be creatable as) a writable folder.
    """
    run, data = Path(run_dir).resolve(), Path(data_dir).resolve()
    if run == data or data in run.parents or run in data.parents:
        relation = "is" if run == data else "is inside" if data in run.parents else "contains"
        raise ValueError(
            f"{flag} {str(run_dir)!r} {relation} the image folder DATA_DIR {str(data_dir)!r}: "
            "a run written there would mix with (or be read as) the images. Choose an "
            f"{flag} outside DATA_DIR. Received: {flag}={str(run)!r}, DATA_DIR={str(data)!r}"
        )
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


def run_files(run_dir):
    """The names in `RUN_FILES` present in `run_dir`."""
    return [name for name in RUN_FILES if (Path(run_dir) / name).exists()]


def clean_temporary_files(run_dir):
    """Delete the temporary files a killed write left (`.tmp-*.keras`, `.*.tmp`)."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir / ckpt.CHECKPOINTS):
        for pattern in (".tmp-*.keras", ".*.tmp"):
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

    def __enter__(self):
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
        return False


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

"""The output guard: where a command may write, what it may replace, and how it writes.

Every command that writes (train, evaluate, predict, explain, export, ensemble, tune,
cv, calibrate, compare) checks its outputs here before it touches the disk:

- An output may not be, contain, or lie inside a data folder the command reads
  (or a run's training data), a run it reads, or any other run. The only places
  inside a run a command may write are the folders condnet keeps for that
  (`OWN_FOLDERS`: `RUN_DIR/evaluation`, `RUN_DIR/export`).
- A folder is replaced only if condnet wrote it: it holds a marker file
  (`MARKER`) that names the kind of output and the names written, and nothing
  else. A folder holding anything else is never replaced, with or without
  `--overwrite`.
- Whole outputs are written to a hidden temporary sibling and moved into place
  only when complete (`staged_folder`, `write_file`); a failure, Ctrl-C or
  SIGTERM removes the temporary copy and leaves the old output as it was.
"""

import contextlib
import json
import os
import shutil
from pathlib import Path

from condnet.runs.files import BEST, CONFIG, METRICS, STATE
from condnet.runs.lock import alive

MARKER = ".condnet-output.json"
# Files of condnet's own bookkeeping, never counted as a user's files.
BOOKKEEPING = (MARKER, ".condnet.lock")
# The folders inside a run that commands other than `train` write to.
OWN_FOLDERS = ("evaluation", "export", "test-report")
# What makes a folder a run, for folders written before markers existed.
_RUN_SIGNATURE = (CONFIG, (BEST, STATE))
RUN_KINDS = ("run", "ensemble")


# === Markers ===


def mark(folder, kind, names=None):
    """Record in `folder` that condnet wrote it as a `kind`, with the names it wrote."""
    from condnet import __version__

    folder = Path(folder)
    if names is None:
        names = sorted(n for n in os.listdir(folder) if n not in BOOKKEEPING)
    record = {"kind": kind, "written_by": f"condnet {__version__}", "names": sorted(names)}
    _write_bytes(folder / MARKER, (json.dumps(record, indent=1) + "\n").encode())


def read_mark(folder):
    """The marker of `folder` as a dict, or None when it has none (or an unreadable one)."""
    try:
        record = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
        return None
    names = record.get("names")
    record["names"] = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    return record


def is_run(folder):
    """Whether `folder` is a run (or an ensemble) that condnet wrote."""
    folder = Path(folder)
    record = read_mark(folder)
    if record is not None:
        return record["kind"] in RUN_KINDS
    config, models = _RUN_SIGNATURE
    return (folder / config).is_file() and any((folder / m).is_file() for m in models)


# === Where an output may go ===


def guard(path, kind, *, flag="--out", data=(), reads=(), overwrite=False):
    """`check_output` then `check_replaceable`: all of an output's checks, before any work."""
    if path is None:
        return
    check_output(path, flag=flag, data=data, reads=reads, kind=kind)
    check_replaceable(path, kind, overwrite, flag)


def training_data(run_dirs):
    """The image folders the runs in `run_dirs` trained on (as their config.json names them)."""
    folders = []
    for run in run_dirs:
        try:
            options = json.loads((Path(run) / CONFIG).read_text())["options"]
            folders.append(Path(options["data_dir"]))
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            continue  # an unreadable config: the command that reads it says so
    return folders


def check_output(path, *, flag="--out", data=(), reads=(), kind=None):
    """Refuse an output that is, contains or lies inside a data folder or a run.

    Args:
        path: the output (file or folder), existing or not.
        flag: how the user named it, for messages.
        data: folders of images the command reads (and the training data of
            the runs it reads).
        reads: run directories the command reads. Their `OWN_FOLDERS` may hold
            the output; nothing else inside them may.
        kind: the kind of output; an existing output of the same kind (e.g.
            an ensemble) is no other run (`check_replaceable` decides).
    """
    target = _resolved(path)
    for folder in data:
        relation = _relation(target, _resolved(folder))
        if relation:
            _refuse(path, flag, f"{relation} the data folder {str(folder)!r}", "the images")
    for run in reads:
        run_path = _resolved(run)
        relation = _relation(target, run_path)
        if relation and not _in_own_folder(target, run_path):
            _refuse(path, flag, f"{relation} the run {str(run)!r} it reads", "the run's files")
    read = [_resolved(r) for r in reads]
    for folder in (target, *target.parents):
        if folder.is_dir() and is_run(folder):
            if folder in read:  # checked above
                continue
            if folder == target and (read_mark(folder) or {}).get("kind") == kind:
                continue
            relation = "is" if folder == target else "lies inside"
            _refuse(path, flag, f"{relation} the run {str(folder)!r}", "the run's files")


def check_replaceable(path, kind, overwrite=False, flag="--out"):
    """Refuse to replace an existing `path` that condnet did not write as a `kind`.

    A missing path or an empty folder is free. A folder is replaced only when
    its marker names `kind` and it holds nothing the marker does not list, and
    then only with `overwrite` (kinds in `REGENERATED` need none). A file output
    (`kind` ending in `file`) replaces a regular file, never a folder.
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if kind.endswith("file"):
        if path.is_symlink() or not path.is_file():
            _refuse(path, flag, "exists and is not a regular file", "it")
        if not overwrite and kind not in REGENERATED:
            raise ValueError(
                f"{flag} {str(path)!r} already exists: pass --overwrite to replace it, or "
                f"choose another {flag}. Received: {flag}={str(path)!r}"
            )
        return
    if path.is_symlink() or not path.is_dir():
        _refuse(path, flag, "is a file, not a folder", "it")
    entries = [n for n in os.listdir(path) if n not in BOOKKEEPING]
    if not entries:
        return
    record = read_mark(path) or _unmarked_report(path, kind, entries)
    foreign = entries if record is None else [n for n in entries if n not in record["names"]]
    if record is None or record["kind"] != kind or foreign:
        what = f"holds files condnet did not write as {_article(kind)} ({_listed(foreign)})"
        if record is not None and record["kind"] != kind:
            what = f"holds {_article(record['kind'])}, not {_article(kind)}"
        _refuse(path, flag, what, "it")
    if not overwrite and kind not in REGENERATED:
        raise ValueError(
            f"{flag} {str(path)!r} already holds {_article(kind)}: pass --overwrite to replace "
            f"it, or choose another {flag}. Received: {flag}={str(path)!r}"
        )


def _unmarked_report(path, kind, entries):
    """A report folder written before markers existed holds only what a report writes."""
    names = (METRICS, "report.md", "report.html", "examples")
    if kind == "evaluation" and all(n in names or n.endswith(".png") for n in entries):
        return {"kind": kind, "names": entries}
    return None


# Outputs rebuilt from a run in seconds, replaced without --overwrite when condnet wrote them.
REGENERATED = ("evaluation", "explanation", "table file", "rows file", "metrics file", "plot file")


# === Writing ===


@contextlib.contextmanager
def staged_folder(path, kind):
    """Yield a hidden sibling folder to write `path` into; on success, mark it and swap it in.

    The old `path` (if any) is moved aside, the new folder renamed into place,
    then the old one deleted. On any failure the partial folder is removed and
    the old one is left as it was.
    """
    path = Path(path)
    recover(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f".{path.name}.partial-{os.getpid()}"
    _delete(partial)
    partial.mkdir()
    try:
        yield partial
        mark(partial, kind)
        _swap_in(partial, path)
    except BaseException:
        _delete(partial)
        raise


def write_file(path, data):
    """Write text or bytes to `path` through a hidden temporary sibling and a rename; the
    temporary file is removed on any failure (a full disk, a signal)."""
    _write_bytes(Path(path), data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def staged_file(path):
    """Yield a temporary path beside `path` (same suffix) to write; rename it in on success."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        _delete(temporary)


def recover(path):
    """Finish a replacement that was cut short (killed between the two renames).

    If `path` is missing and a folder moved aside for it remains, that folder
    is moved back; if `path` is in place, leftovers of the swap are removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    for aside in sorted(path.parent.glob(f".{glob_escape(path.name)}.old-*")):
        if not (path.exists() or path.is_symlink()):
            os.replace(aside, path)
        else:
            _delete(aside)
    for partial in path.parent.glob(f".{glob_escape(path.name)}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and alive(int(pid))):
            _delete(partial)


def glob_escape(name):
    """`name` with glob's special characters escaped."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _swap_in(partial, path):
    aside = path.parent / f".{path.name}.old-{os.getpid()}"
    if path.exists() or path.is_symlink():
        os.replace(path, aside)
    os.replace(partial, path)
    _delete(aside)


def _write_bytes(path, data):
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        _delete(temporary)


def _delete(path):
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()


# === Helpers ===


def _resolved(path):
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def _relation(target, folder):
    if target == folder:
        return "is"
    if folder in target.parents:
        return "lies inside"
    if target in folder.parents:
        return "contains"
    return None


def _in_own_folder(target, run):
    return any(target == run / n or (run / n) in target.parents for n in OWN_FOLDERS)


def _refuse(path, flag, what, kept):
    raise ValueError(
        f"{flag} {str(path)!r} {what}; condnet never writes there, so that {kept} cannot be "
        f"replaced or mixed with its output. Choose another {flag} (a new folder, or one "
        f"condnet wrote). Received: {flag}={str(path)!r}"
    )


def _article(kind):
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _listed(names):
    shown = ", ".join(sorted(names)[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")

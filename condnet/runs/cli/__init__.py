"""The `condnet` command line, one module per subcommand: train, evaluate, predict,
explain, info, demo, cv, calibrate, backoff, unknown, extend, export, serve, compare,
ensemble, tune. `main` parses the command line and turns the errors a user can fix into
one-line messages."""

import argparse
import contextlib
import os
import signal
import sys
import threading

from condnet.runs._backend import check_backend
from condnet.runs.cli import (
    backoff,
    calibrate,
    compare,
    cv,
    demo,
    ensemble,
    evaluate,
    explain,
    export,
    extend,
    info,
    predict,
    serve,
    train,
    tune,
    unknown,
)

# The subcommands, in the order `condnet --help` lists them: one module each.
COMMANDS = (
    *(train, evaluate, predict, explain, info, demo, cv, calibrate, backoff, unknown),
    *(extend, export, serve, compare, ensemble, tune),
)
# What a failure the user can fix raises; anything else is a bug and keeps its traceback.
ERRORS = (ValueError, TypeError, RuntimeError, ImportError, OSError, RecursionError)


def main(argv=None):
    """Entry point of the `condnet` console script.

    Every failure the user can fix exits with status 2 and one or two lines
    naming the file or option and the fix; `--debug` shows the traceback.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["condnet", *[word for word in argv if not word.startswith("-")][:1]])
    if argv[:1] == ["--version"]:  # needs no backend
        from condnet import __version__

        print(f"condnet {__version__}")
        return 0
    if export.needs_tensorflow(argv):
        return export.run_with_tensorflow(argv)
    with _terminate_as_interrupt():
        return _main(argv, command)


def _main(argv, command):
    try:
        check_backend()  # before anything imports Keras
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        if "--debug" not in argv:
            _import_keras_quietly()
        import condnet

        condnet.register_saved_classes()  # deferred by `condnet` (see condnet/__init__.py)
        return args.run(args) or 0
    except _errors() as error:
        if "--debug" in argv:
            raise
        print(f"{command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"{command}: interrupted. The epochs a run completed are kept: "
            "`condnet train DATA_DIR --out RUN_DIR --resume` continues it.",
            file=sys.stderr,
        )
        return 130


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (`kill`, a scheduler's stop) unwinds like Ctrl-C while a command runs: locks
    released, an interrupted --overwrite undone, temporary files removed."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _import_keras_quietly():
    """Import Keras (and with it the backend) with standard error closed: TensorFlow's C++
    start-up lines (absl's pre-init warning, the oneDNN notice, each twice) would open every
    command's output. An import that fails raises after standard error is back."""
    if "keras" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _errors():
    try:
        import yaml
    except ImportError:
        return ERRORS
    return (*ERRORS, yaml.YAMLError)


def _one_line(error):
    """The error's message in at most two lines, with the file an OSError names."""
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.strerror or type(error).__name__}: {str(error.filename)!r}"
    elif isinstance(error, RecursionError):
        text = "the input is nested too deeply to read (maximum recursion depth exceeded)"
    else:
        text = str(error).strip() or type(error).__name__
    lines = text.splitlines()
    if len(lines) > 2:
        lines = [lines[0], "(run again with --debug for the details)"]
    return "\n".join(lines)


def build_parser():
    from condnet import __version__

    parser = argparse.ArgumentParser(
        prog="condnet",
        description="Conditional neural networks for Keras 3: a gate routes each image "
        "to the expert of its group. Backend: KERAS_BACKEND (default tensorflow).",
    )
    parser.add_argument("--version", action="version", version=f"condnet {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error instead of a one-line message",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands, common)
    return parser

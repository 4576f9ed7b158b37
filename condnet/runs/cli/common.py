"""What several subcommands share: flags generated from the typed options, the run
directory argument, progress, and the lines a finished run prints."""

import argparse
import dataclasses
import sys
from pathlib import Path

from condnet.runs.outputs import guard, training_data

# === Flags from TrainingOptions ===


def add_option_flags(p, names=None, exclude=(), defaults=None):
    """One flag per `TrainingOptions` field: `--kebab-case`, its type, help, choices, default.

    Flags left out of the command line are left out of the namespace (their
    default is the dataclass's), so `given_options(args)` is what the user typed.
    """
    from condnet.runs.options import HELP_GROUPS, TrainingOptions

    defaults = defaults or {}
    topic = {name: title for title, names in HELP_GROUPS.items() for name in names}
    groups = {title: group(p, title) for title in HELP_GROUPS}  # listed in this order
    for field in dataclasses.fields(TrainingOptions):
        meta = field.metadata
        if not meta["cli"] or field.name in exclude or (names and field.name not in names):
            continue
        default = defaults.get(field.name, field.default)
        kwargs = dict(meta["argparse"], dest=field.name, default=argparse.SUPPRESS)
        kwargs["help"] = _with_default(meta["help"], default)
        if isinstance(field.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.setdefault("type", type(field.default))
            kwargs.setdefault("metavar", {int: "N", float: "X"}.get(kwargs["type"]))
        topical = groups[topic[field.name]]
        topical.add_argument(_flag(field.name), **kwargs)
        if field.name == "augment":
            topical.add_argument(
                "--no-augment",
                dest="augment",
                action="store_const",
                const="none",
                default=argparse.SUPPRESS,
                help="no augmentation (= --augment none)",
            )


def given_options(args):
    """The `TrainingOptions` fields the command line set."""
    from condnet.runs.options import TrainingOptions

    fields, _ = TrainingOptions.fields_of(vars(args))
    if isinstance(fields.get("filters"), list):
        fields["filters"] = tuple(fields["filters"])
    return fields


def _with_default(text, default):
    """The help text, ending in its default unless the text already says what it is."""
    return text if "(default" in text else f"{text} (default: {_shown(default)})"


def _shown(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return "none" if value is None else value


# === Flags from InferenceOptions ===


def add_inference_flags(p, names, defaults=None, helps=None):
    """The `InferenceOptions` flags of `names`, in that order, with this command's defaults
    (`defaults`) and wording (`helps`) where they differ from the field's.

    A `{default}` in a help text reads the command's default (None: the run's own).
    """
    from condnet.runs.options import SAVED_ROUTING, InferenceOptions

    defaults, helps = defaults or {}, helps or {}
    fields = {field.name: field for field in dataclasses.fields(InferenceOptions)}
    for name in names:
        field = fields[name]
        default = defaults.get(name, field.default)
        text = helps.get(name, field.metadata["help"])
        text = text.format(default=SAVED_ROUTING if default is None else default)
        p.add_argument(
            _flag(name), **field.metadata["argparse"], dest=name, default=default, help=text
        )


def inference_options(args):
    """The `InferenceOptions` of the flags the command has (checked: a bad value raises an
    error that names the flag)."""
    from condnet.runs.options import InferenceOptions

    names = {field.name for field in dataclasses.fields(InferenceOptions)}
    return InferenceOptions(**{k: v for k, v in vars(args).items() if k in names})


def _flag(name):
    return f"--{name.replace('_', '-')}"


# === Arguments and flags of several commands ===


def group(p, title):
    """The argument group of `p` titled `title` (created on first use): `--help` lists
    options by topic."""
    for existing in p._action_groups:
        if existing.title == title:
            return existing
    return p.add_argument_group(title)


def add_run_dir(p):
    """The RUN_DIR a command reads."""
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")


def add_run_flags(p, topic="run directory"):
    """--break-lock, listed under `topic` (None: with the command's other options)."""
    (group(p, topic) if topic else p).add_argument(
        "--break-lock",
        action="store_true",
        help="remove a stale lock left in RUN_DIR by a condnet process that died",
    )


def add_upkeep_flags(p):
    """--quiet and --break-lock of the commands that write into a finished run: calibrate,
    backoff, unknown."""
    add_inference_flags(p, ("quiet",), helps={"quiet": "no progress line on standard error"})
    add_run_flags(p, topic=None)


# What --model means to the commands that read each model of a run (backoff, unknown).
EACH_MODEL_HELP = (
    "only this model file of the run (default: each of model.keras, model.calibrated.keras "
    "and baseline.keras it holds; with --thresholds, model.keras)"
)


def add_stored_threshold_flags(p, metavar, thresholds_help, file):
    """The flags backoff and unknown share: --thresholds given instead of chosen, --model
    (one model file of the run), --json (print `file` as written) and the upkeep flags."""
    p.add_argument("--thresholds", nargs="+", metavar=metavar, help=thresholds_help)
    add_inference_flags(p, ("model",), helps={"model": EACH_MODEL_HELP})
    p.add_argument("--json", action="store_true", help=f"print {file} as one JSON object")
    add_upkeep_flags(p)


def add_verbosity_flags(p):
    loudness = group(p, "progress").add_mutually_exclusive_group()
    loudness.add_argument("--quiet", action="store_true", help="no progress bars")
    loudness.add_argument(
        "--verbose",
        action="store_true",
        help="a progress bar per batch even when the output is not a terminal (default: a "
        "bar in a terminal, one line per epoch in a log)",
    )


def verbosity(args):
    """Keras's `verbose`: 0 with --quiet, a progress bar in a terminal, else one line per
    epoch (progress-bar frames would fill a log file)."""
    if args.quiet:
        return 0
    if getattr(args, "verbose", False):
        return 1
    return "auto" if sys.stdout.isatty() else 2


# === Outputs ===


def check_output(output, suffixes):
    if output is not None and Path(output).suffix.lower() not in suffixes:
        raise ValueError(
            f"--output must end in {' or '.join(suffixes)} (the format follows the name). "
            f"Received: --output {output}"
        )


def guard_file(path, kind, data, runs):
    """An --output file may not go into the data, the run read, or any other run."""
    guard(path, kind, flag="--output", data=[*data, *training_data(runs)], reads=runs)


def inputs_noun(run_dir):
    """What the run reads, as its summary counts them: "documents" or "images"."""
    from condnet.runs.documents import is_text_run
    from condnet.runs.files import CONFIG
    from condnet.runs.run_dir import read_options

    try:
        options = read_options(Path(run_dir) / CONFIG)
    except ValueError:  # the command read the run already; its summary needs no new error
        return "images"
    return "documents" if is_text_run({"options": options}) else "images"


def print_baseline(metrics):
    """The verdict against the run's flat baseline and where the gap is, when it has one."""
    baseline = metrics.get("baseline")
    if baseline:
        print(baseline["verdict"])
        if baseline.get("where"):
            print(baseline["where"])
        if baseline.get("milder_mistakes"):
            print(baseline["milder_mistakes"])

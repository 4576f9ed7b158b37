"""The `condnet` command line: train, evaluate, predict, explain, info, demo, cv, calibrate,
backoff, unknown, extend, export, serve, compare, ensemble, tune."""

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path

from condnet.choices import INFERENCE_ROUTINGS
from condnet.runs._backend import backend_name, check_backend
from condnet.runs.files import BACKOFF, BEST, UNKNOWN
from condnet.runs.outputs import guard, training_data, write_file

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
    if _export_needs_tensorflow(argv):
        return _run_with_tensorflow(argv)
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
    for add in (
        _train_parser,
        _evaluate_parser,
        _predict_parser,
        _explain_parser,
        _info_parser,
        _demo_parser,
        _cv_parser,
        _calibrate_parser,
        _backoff_parser,
        _unknown_parser,
        _extend_parser,
        _export_parser,
        _serve_parser,
        _compare_parser,
        _ensemble_parser,
        _tune_parser,
    ):
        add(commands, common)
    return parser


# === Options from TrainingOptions ===


def add_option_flags(p, names=None, exclude=(), defaults=None):
    """One flag per `TrainingOptions` field: `--kebab-case`, its type, help, choices, default.

    Flags left out of the command line are left out of the namespace (their
    default is the dataclass's), so `given_options(args)` is what the user typed.
    """
    from condnet.runs.options import HELP_GROUPS, TrainingOptions

    defaults = defaults or {}
    topic = {name: title for title, names in HELP_GROUPS.items() for name in names}
    groups = {title: _group(p, title) for title in HELP_GROUPS}  # listed in this order
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
        group = groups[topic[field.name]]
        group.add_argument(f"--{field.name.replace('_', '-')}", **kwargs)
        if field.name == "augment":
            group.add_argument(
                "--no-augment",
                dest="augment",
                action="store_const",
                const="none",
                default=argparse.SUPPRESS,
                help="no augmentation (= --augment none)",
            )


def _group(p, title):
    """The argument group of `p` titled `title` (created on first use): `--help` lists
    options by topic."""
    for group in p._action_groups:
        if group.title == title:
            return group
    return p.add_argument_group(title)


def given_options(args):
    """The `TrainingOptions` fields the command line set."""
    from condnet.runs.options import TrainingOptions

    fields, _ = TrainingOptions.fields_of(vars(args))
    if isinstance(fields.get("filters"), list):
        fields["filters"] = tuple(fields["filters"])
    return fields


def _verbosity(args):
    """Keras's `verbose`: 0 with --quiet, a progress bar in a terminal, else one line per
    epoch (progress-bar frames would fill a log file)."""
    if args.quiet:
        return 0
    if getattr(args, "verbose", False):
        return 1
    return "auto" if sys.stdout.isatty() else 2


def _with_default(text, default):
    """The help text, ending in its default unless the text already says what it is."""
    return text if "(default" in text else f"{text} (default: {_shown(default)})"


def _shown(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return "none" if value is None else value


# === train ===


def _train_parser(commands, common):
    p = commands.add_parser(
        "train",
        parents=[common],
        help="train a conditional model on a folder of images or documents",
        description="Train on DATA_DIR (root/<group>/<class>/* or "
        "root/<class>/* with --hierarchy) and write RUN_DIR.",
    )
    p.add_argument(
        "data_dir",
        metavar="DATA_DIR",
        help="folder of images, or of text documents (see --modality)",
    )
    run = _group(p, "run directory")
    run.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR from its last completed epoch (options given must "
        "agree with the run's, except a larger --epochs, the learning rates, --patience and "
        "--tensorboard)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in RUN_DIR (its files are kept aside until the new run "
        "has committed its first epoch)",
    )
    _add_run_flags(p)
    add_option_flags(p)
    processes = p.add_argument_group(
        "several processes",
        "a data-parallel job over processes or hosts: start the same command on each, with "
        "the same RUN_DIR on a shared disk; process 0 writes the run. JAX: these flags. "
        "TensorFlow: the TF_CONFIG environment variable (MultiWorkerMirroredStrategy), "
        "worker 0 being process 0",
    )
    processes.add_argument(
        "--coordinator", metavar="HOST:PORT", help="where process 0 listens (jax.distributed)"
    )
    processes.add_argument(
        "--num-processes", type=int, default=1, metavar="N", help="processes in the job"
    )
    processes.add_argument(
        "--process-id", type=int, default=0, metavar="I", help="this process, 0..N-1"
    )
    _add_verbosity_flags(p)
    p.set_defaults(run=_train)


def _add_run_flags(p):
    _group(p, "run directory").add_argument(
        "--break-lock",
        action="store_true",
        help="remove a stale lock left in RUN_DIR by a condnet process that died",
    )


def _add_verbosity_flags(p):
    loudness = _group(p, "progress").add_mutually_exclusive_group()
    loudness.add_argument("--quiet", action="store_true", help="no progress bars")
    loudness.add_argument(
        "--verbose",
        action="store_true",
        help="a progress bar per batch even when the output is not a terminal (default: a "
        "bar in a terminal, one line per epoch in a log)",
    )


def _train(args):
    from condnet.evaluation.report import summary_table, summary_title
    from condnet.runs.recipe import resume, train

    verbose = _verbosity(args)
    options = given_options(args)
    if args.resume and args.overwrite:
        raise ValueError(
            "--resume continues the run in RUN_DIR and --overwrite replaces it; pass one. "
            "Received: --resume --overwrite"
        )
    from condnet.training import distribute

    if _join_job(args) and not distribute.is_chief():
        verbose = 0  # process 0 reports
    if args.resume:
        result = resume(
            args.out, args.data_dir, break_lock=args.break_lock, verbose=verbose, **options
        )
    else:
        result = train(
            args.data_dir,
            args.out,
            overwrite=args.overwrite,
            break_lock=args.break_lock,
            verbose=verbose,
            **options,
        )
    if result["metrics"] is None:
        print(f"Process {distribute.process_index()} done; process 0 writes the run to {args.out}.")
        return
    metrics = result["metrics"]
    scored_on = metrics.get("scored_on", "scored").capitalize()
    print(summary_table(metrics, summary_title(metrics, scored_on, _inputs_noun(args.out))))
    _print_baseline(metrics)
    print(f"Run written to {args.out} (model.keras, report.md, history.csv).")


def _inputs_noun(run_dir):
    """What the run reads, as its summary counts them: "documents" or "images"."""
    from condnet.runs.documents import is_text_run
    from condnet.runs.files import CONFIG
    from condnet.runs.run_dir import read_options

    try:
        options = read_options(Path(run_dir) / CONFIG)
    except ValueError:  # the command read the run already; its summary needs no new error
        return "images"
    return "documents" if is_text_run({"options": options}) else "images"


def _print_baseline(metrics):
    """The verdict against the run's flat baseline and where the gap is, when it has one."""
    baseline = metrics.get("baseline")
    if baseline:
        print(baseline["verdict"])
        if baseline.get("where"):
            print(baseline["where"])
        if baseline.get("milder_mistakes"):
            print(baseline["milder_mistakes"])


def _join_job(args):
    """Join a job of several processes when the flags (JAX) or TF_CONFIG (TensorFlow)
    describe one; whether it did."""
    from condnet.training import distribute

    if args.coordinator is not None or args.num_processes != 1:
        distribute.join_processes(args.coordinator, args.num_processes, args.process_id)
        return True
    if backend_name()[0] == "tensorflow" and distribute.tf_config_workers() > 1:
        distribute.join_tf_config()
        return True
    return False


# === evaluate, predict, info ===


def _inference_flags(p, routing_default, output_help):
    p.add_argument(
        "--routing",
        choices=INFERENCE_ROUTINGS,
        default=routing_default,
        help="hard: only the chosen expert runs (what a deployed model does); soft: every "
        f"expert, mixed by the gate (default: {routing_default or 'the model saved in the run'})",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="FILE",
        help=MODEL_HELP,
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument(
        "--quiet", action="store_true", help="no progress lines (they go to standard error)"
    )
    p.add_argument("--output", default=None, metavar="FILE", help=output_help)


def _evaluate_parser(commands, common):
    p = commands.add_parser(
        "evaluate",
        parents=[common],
        help="metrics of a trained run on another folder",
        description="Evaluate RUN_DIR on DATA_DIR (same groups and classes), hard-routed by "
        "default, with the soft mixture and the run's flat baseline beside it.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")
    p.add_argument(
        "data_dir",
        metavar="DATA_DIR",
        help="folder of images (of documents for a text run), e.g. a test split",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument(
        "--report-dir", default=None, help="where to write the report (default RUN_DIR/evaluation)"
    )
    _inference_flags(p, "hard", "also write the metrics to FILE (.json: one object)")
    p.set_defaults(run=_evaluate)


def _evaluate(args):
    from condnet.evaluation.report import summary_table, summary_title
    from condnet.runs.run_dir import evaluate_run

    _check_output(args.output, (".json",))
    _guard_file(args.output, "metrics file", [args.data_dir], [args.run_dir])
    metrics = evaluate_run(
        args.run_dir,
        args.data_dir,
        report_dir=args.report_dir,
        batch_size=args.batch_size,
        routing=args.routing,
        model_file=args.model,
        progress=not args.quiet,
    )
    if args.output:
        write_file(args.output, json.dumps(metrics, indent=1) + "\n")
    if args.json:
        print(json.dumps(metrics))
        return
    noun = _inputs_noun(args.run_dir)
    print(summary_table(metrics, summary_title(metrics, str(args.data_dir), noun)))
    other = metrics.get("mixture") or metrics.get("hard_routed")
    label = "soft mixture" if "mixture" in metrics else "hard routed"
    if other is not None:  # the flat baseline (--model baseline.keras) has no other routing
        print(f"{label} accuracy: {other['accuracy']:.4f}")
    _print_baseline(metrics)
    _print_backoff(metrics.get("backoff") or {})
    from condnet.runs.unknown import flagged_line

    for side in (metrics.get("unknown") or {}).values():
        print(flagged_line(side))


def _print_backoff(section):
    """One line per model with back-off thresholds: coverage and accuracy of its answers at
    each depth."""
    from condnet.runs.backoff import backoff_line

    for side in ("conditional", "flat"):
        if "levels" in (section.get(side) or {}):
            print(backoff_line(section[side]))


def _predict_parser(commands, common):
    p = commands.add_parser(
        "predict", parents=[common], help="predict the group and class of images or documents"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")
    p.add_argument(
        "inputs",
        metavar="PATH",
        nargs="*",
        help="image files or folders; for a text run, document files or folders",
    )
    p.add_argument(
        "--lines",
        metavar="FILE",
        help="text run: FILE holds one document per line (- reads standard input)",
    )
    p.add_argument(
        "--jsonl",
        metavar="FILE",
        help='text run: FILE holds one JSON object per line, the document in "text" (- reads '
        "standard input)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    _inference_flags(
        p,
        None,
        "write the rows to FILE (.jsonl: one JSON object per line; .csv: a table) and print "
        "only a one-line summary; with --json the rows are printed as JSON lines as well",
    )
    _backoff_flags(p)
    _unknown_flag(p)
    p.set_defaults(run=_predict)


PREDICT_COLUMNS = ("path", "group", "class", "expert", "confidence", "error")
ANSWER_COLUMNS = ("answer", "answer_level", "answer_confidence")
UNKNOWN_COLUMNS = ("unknown", "unknown_score")


def _unknown_flag(p):
    p.add_argument(
        "--unknown",
        action="store_true",
        help="also say whether the chosen expert knows none of its classes (unknown: true, "
        "e.g. a dog of a breed it never saw), with the thresholds in RUN_DIR/unknown.json",
    )


def _backoff_flags(p):
    p.add_argument(
        "--back-off",
        action="store_true",
        help="also answer with the deepest node the model is sure of (the class, else the "
        "group, else 'unsure'), with the thresholds in RUN_DIR/backoff.json",
    )
    p.add_argument(
        "--thresholds",
        nargs="+",
        metavar="LEVEL=P",
        help="back off with these thresholds instead, one per level, e.g. group=0.8 "
        "class=0.9 (never: a level that never answers)",
    )


def _predict(args):
    from condnet.runs.run_dir import predict_paths

    _check_output(args.output, (".jsonl", ".csv"))
    if not (args.inputs or args.lines or args.jsonl):
        raise ValueError(
            "condnet predict needs something to predict: image or document files and "
            "folders, or --lines / --jsonl FILE for a text run. Received: no PATH"
        )
    if args.lines == "-" and args.jsonl == "-":
        raise ValueError("Standard input can feed --lines or --jsonl, not both.")
    folders = [i for i in args.inputs if Path(i).is_dir()]
    _guard_file(args.output, "rows file", folders, [args.run_dir])
    rows = predict_paths(
        args.run_dir,
        args.inputs,
        batch_size=args.batch_size,
        routing=args.routing,
        model_file=args.model,
        progress=not args.quiet,
        back_off=args.back_off,
        thresholds=parse_thresholds(args.thresholds),
        unknown=args.unknown,
        lines=args.lines,
        jsonl=args.jsonl,
    )
    failed = sum("error" in row for row in rows)
    if args.output:
        _write_rows(Path(args.output), rows)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    elif args.output:  # the rows are in the file: stdout says where
        print(f"Wrote {len(rows)} rows (one per input) to {args.output}")
    else:
        _print_rows(rows)
    if failed:
        print(
            f"condnet predict: {failed} input(s) could not be read (an image that does not "
            "decode, a document that is empty or binary); their rows say why.",
            file=sys.stderr,
        )
        return 1
    return 0


def _print_rows(rows):
    answers = any("answer" in row for row in rows)
    unknown = any("unknown" in row for row in rows)
    extra = (("answer",) if answers else ()) + (("unknown",) if unknown else ())
    print("\t".join(PREDICT_COLUMNS[:5] + extra))
    for row in rows:
        if "error" in row:
            print(f"{json.dumps(row['path'])}\terror\t{row['error']}")
        else:
            answer = f"\t{row['answer']}" if answers else ""
            answer += f"\t{json.dumps(row['unknown'])}" if unknown else ""
            print(
                f"{json.dumps(row['path'])}\t{row['group']}\t{row['class']}\t{row['expert']}"
                f"\t{row['confidence']:.3f}{answer}"
            )


def _check_output(output, suffixes):
    if output is not None and Path(output).suffix.lower() not in suffixes:
        raise ValueError(
            f"--output must end in {' or '.join(suffixes)} (the format follows the name). "
            f"Received: --output {output}"
        )


def _guard_file(path, kind, data, runs):
    """An --output file may not go into the data, the run read, or any other run."""
    guard(path, kind, flag="--output", data=[*data, *training_data(runs)], reads=runs)


def _write_rows(path, rows):
    import csv
    import io

    if path.suffix.lower() == ".jsonl":
        write_file(path, "".join(json.dumps(row) + "\n" for row in rows))
        return
    buffer = io.StringIO()
    answers = ANSWER_COLUMNS if any("answer" in row for row in rows) else ()
    answers += UNKNOWN_COLUMNS if any("unknown" in row for row in rows) else ()
    writer = csv.DictWriter(buffer, fieldnames=PREDICT_COLUMNS + answers, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_file(path, buffer.getvalue())


def _info_parser(commands, common):
    p = commands.add_parser(
        "info", parents=[common], help="hierarchy, parameters and compute per route of a run"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--model", default=None, metavar="FILE", help=MODEL_HELP)
    p.set_defaults(run=_info)


MODEL_HELP = (
    "model of the run to use: model.keras (default), model.calibrated.keras (after `condnet "
    "calibrate`), baseline.keras (the run's flat baseline) or the path of a .keras file"
)


def _info(args):
    from condnet.runs.run_dir import run_info

    info = run_info(args.run_dir, model_file=args.model)
    if args.json:
        print(json.dumps(info))
        return
    each = _inputs_noun(args.run_dir)[:-1]  # image, or document for a text run
    print("Hierarchy:")
    for group, classes in info["hierarchy"].items():
        print(f"  {group}: {classes}")
    whole = f"none (the flat baseline runs whole on every {each})"
    print(f"Routing: {info['routing'] or whole}")
    print(f"{'part':<24}{'parameters':>14}{f'MACs / {each}':>16}")
    for part, count in info["parameters"].items():
        print(f"{part:<24}{count:>14,}{info['macs'][part]:>16,}")
    if info.get("model") == "baseline":
        return
    print(f"MACs per {each} by route (trunk + gate + one expert):")
    for group, macs in info["macs_per_route"].items():
        print(f"  {group:<22}{macs:>16,}")
    print(f"  {'all experts (soft)':<22}{info['macs_all_experts']:>16,}")
    if info.get("taps"):
        taps = info["taps"]
        print(f"Taps: gate reads {taps['gate']}; experts read {taps['experts']}")
        if taps["available"]:
            print(f"  stage outputs of the backbone: {', '.join(taps['available'])}")


# === explain ===


def _explain_parser(commands, common):
    p = commands.add_parser(
        "explain",
        parents=[common],
        help="where the gate looked for its group and the expert for its class (occlusion maps)",
        description="For each image, slide a grey patch over it and record how much the gate's "
        "probability of its group and the chosen expert's probability of its class drop: "
        "OUT_DIR gets one PNG per image (the image, the gate's map, the expert's map) and "
        "explain.json (group, class, probabilities, the peak of each map).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")
    p.add_argument("inputs", metavar="IMAGE", nargs="+", help="image files or folders of images")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="folder to write")
    p.add_argument(
        "--model",
        metavar="FILE",
        help="model.keras (default), model.calibrated.keras or the path of a .keras file",
    )
    p.add_argument(
        "--patch-size",
        type=int,
        metavar="N",
        help="side of the grey patch in pixels of the model's input (default: a quarter "
        "of the image side)",
    )
    p.add_argument(
        "--stride", type=int, metavar="N", help="step between patches (default: half the patch)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        metavar="N",
        help="covered copies per call of the trunk, the gate or the expert (default 64)",
    )
    p.set_defaults(run=_explain)


def _explain(args):
    from condnet.runs.explain import INDEX, explain_run, failed_images

    record = explain_run(
        args.run_dir,
        args.inputs,
        args.out,
        model_file=args.model,
        patch_size=args.patch_size,
        stride=args.stride,
        batch_size=args.batch_size,
    )
    for entry in record["images"]:
        if "error" not in entry:
            gate, expert = entry["gate_peak"], entry["expert_peak"]
            print(
                f"{json.dumps(entry['path'])}\t{entry['group']} ({entry['group_probability']:.3f})"
                f"\t{entry['class']} ({entry['class_probability']:.3f})\tgate peak at "
                f"({gate['row']}, {gate['column']})\texpert peak at "
                f"({expert['row']}, {expert['column']})"
            )
    failed = failed_images(record)
    print(f"Wrote {len(record['images']) - len(failed)} pictures and {INDEX} to {args.out}.")
    for entry in failed[:5]:
        print(f"condnet explain: {entry['path']!r}: {entry['error']}", file=sys.stderr)
    if failed:
        print(f"condnet explain: {len(failed)} image(s) could not be decoded.", file=sys.stderr)
        return 1
    return 0


# === demo ===


def _demo_parser(commands, common):
    p = commands.add_parser(
        "demo",
        parents=[common],
        help="generate the shapes data set, train, evaluate, report",
        description="The whole workflow on an embedded data set of drawn "
        "shapes (round: circle/ellipse/ring; angular: triangle/square/star).",
    )
    p.add_argument(
        "--out",
        default="condnet-demo",
        metavar="RUN_DIR",
        help="where to write the data and the run (default ./condnet-demo)",
    )
    add_option_flags(p, names=("epochs", "routing"), defaults={"epochs": DEMO_EPOCHS})
    data = _group(p, "data")
    data.add_argument(
        "--samples-per-class",
        type=int,
        default=300,
        metavar="N",
        help="training images per class (default 300)",
    )
    data.add_argument(
        "--test-samples-per-class",
        type=int,
        default=100,
        metavar="N",
        help="test images per class (default 100)",
    )
    data.add_argument(
        "--data-only",
        action="store_true",
        help="only draw the data set into RUN_DIR/data/{train,test} (seconds), for "
        "`condnet train`; no training",
    )
    _add_verbosity_flags(p)
    p.set_defaults(run=_demo)


DEMO_EPOCHS = 12


def _demo(args):
    from condnet.runs.demo import run_demo

    options = {"epochs": DEMO_EPOCHS, **given_options(args)}
    run_demo(
        Path(args.out),
        samples_per_class=args.samples_per_class,
        test_samples_per_class=args.test_samples_per_class,
        data_only=args.data_only,
        verbose=_verbosity(args),
        **options,
    )


# === cv, calibrate ===


def _cv_parser(commands, common):
    p = commands.add_parser(
        "cv",
        parents=[common],
        help="stratified K-fold cross-validation of the training recipe",
        description="Train one run per fold of DATA_DIR (each image validated once) in "
        "OUT_DIR/fold-K/, then write OUT_DIR/cv.json and print mean ± std.",
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of images")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="folder for the fold runs")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    add_option_flags(p, exclude=("validation_split",))
    p.add_argument("--overwrite", action="store_true", help="replace runs already in OUT_DIR")
    _add_run_flags(p)
    _add_verbosity_flags(p)
    p.set_defaults(run=_cv)


def _cv(args):
    from condnet.runs.cross_validation import cross_validate, summary_table

    summary = cross_validate(
        args.data_dir,
        args.out,
        folds=args.folds,
        overwrite=args.overwrite,
        break_lock=args.break_lock,
        verbose=_verbosity(args),
        **given_options(args),
    )
    print(summary_table(summary))
    print(f"Cross-validation written to {args.out}/cv.json (runs in fold-1 ... fold-{args.folds}).")


def _calibrate_parser(commands, common):
    p = commands.add_parser(
        "calibrate",
        parents=[common],
        help="fit gate and expert temperatures on a run's validation split",
        description="Temperature-scale RUN_DIR's model on its validation split (drawn "
        "again from config.json); write model.calibrated.keras and calibration.json.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress line on standard error")
    p.add_argument(
        "--break-lock",
        action="store_true",
        help="remove a stale lock left in RUN_DIR by a condnet process that died",
    )
    p.set_defaults(run=_calibrate)


def _calibrate(args):
    from condnet.runs.run_dir import calibrate_run

    report = calibrate_run(args.run_dir, break_lock=args.break_lock, progress=not args.quiet)
    if args.json:
        print(json.dumps(report))
        return
    temperatures = report["temperatures"]
    print(f"Temperatures: gate {temperatures['gate']:.3f}, experts {temperatures['experts']:.3f}")
    print(f"{'level':<8}{'ECE before':>12}{'ECE after':>12}")
    for level in ("group", "class"):
        before = report["before"]["expected_calibration_error"][level]
        after = report["after"]["expected_calibration_error"][level]
        print(f"{level:<8}{before:>12.4f}{after:>12.4f}")
    print(f"Calibrated model written to {Path(args.run_dir) / report['model']}.")


# === backoff ===


def _backoff_parser(commands, common):
    p = commands.add_parser(
        "backoff",
        parents=[common],
        help="choose a run's back-off thresholds on its validation split (or store given ones)",
        description="Choose, per level, the lowest probability at which RUN_DIR's answers reach "
        "--target-accuracy on its validation split (drawn again from config.json), for "
        "model.keras, model.calibrated.keras and baseline.keras (or --model); or store "
        "--thresholds given directly. Writes RUN_DIR/backoff.json, which `predict --back-off`, "
        "`serve --back-off` and `evaluate` read. `condnet train` chooses them for 0.95.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")
    p.add_argument(
        "--target-accuracy",
        type=float,
        default=0.95,
        metavar="X",
        help="the accuracy the answers given must reach at each level, in (0, 1] (default: 0.95)",
    )
    p.add_argument(
        "--thresholds",
        nargs="+",
        metavar="LEVEL=P",
        help="store these thresholds instead of choosing them, one per level, e.g. group=0.8 "
        "class=0.9 (never: a level that never answers)",
    )
    p.add_argument(
        "--model",
        metavar="FILE",
        help="only this model file of the run (default: each of model.keras, "
        "model.calibrated.keras and baseline.keras it holds; with --thresholds, model.keras)",
    )
    p.add_argument("--json", action="store_true", help="print backoff.json as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress line on standard error")
    p.add_argument(
        "--break-lock",
        action="store_true",
        help="remove a stale lock left in RUN_DIR by a condnet process that died",
    )
    p.set_defaults(run=_backoff)


def _backoff(args):
    from condnet.runs.backoff import backoff_line, backoff_run

    record = backoff_run(
        args.run_dir,
        target_accuracy=args.target_accuracy,
        thresholds=parse_thresholds(args.thresholds),
        model_file=args.model,
        break_lock=args.break_lock,
        progress=not args.quiet,
    )
    if args.json:
        print(json.dumps(record))
        return
    for name, entry in record["models"].items():
        shown = ", ".join(
            f"{level} {'never' if value is None else f'{value:.4f}'}"
            for level, value in entry["thresholds"].items()
        )
        print(f"{name}: thresholds {shown} ({entry.get('chosen_on', 'given')})")
        if "there" in entry:
            print(f"  {backoff_line(entry['there'])}")
    print(f"Thresholds written to {Path(args.run_dir) / BACKOFF}.")


# === unknown ===


def _unknown_parser(commands, common):
    p = commands.add_parser(
        "unknown",
        parents=[common],
        help="choose a run's unknown-class threshold per expert on its validation split "
        "(or store given ones)",
        description="Choose, per expert, the highest threshold on --score that flags at "
        "most --false-alarm-rate of RUN_DIR's validation images routed to it as of no class "
        "it knows (the split is drawn again from config.json), for model.keras, "
        "model.calibrated.keras and baseline.keras (or --model); or store maximum-softmax "
        "--thresholds given directly. Writes RUN_DIR/unknown.json (and, for the mahalanobis "
        "score, its statistics fitted on the training split in unknown.npz), which `predict "
        "--unknown` and `serve --unknown` read. `condnet train` chooses maximum-softmax "
        "thresholds for 0.05.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")
    p.add_argument(
        "--false-alarm-rate",
        type=float,
        default=0.05,
        metavar="X",
        help="the share of known-class images each expert may flag unknown, in [0, 1) "
        "(default: 0.05)",
    )
    p.add_argument(
        "--score",
        choices=("energy", "mahalanobis", "softmax"),
        default=None,
        help="what says an image is of no known class: energy (default: the log-sum-exp "
        "of the chosen expert's logits), mahalanobis (the distance of its features to its "
        "classes, fitted on the training split into unknown.npz) or softmax (its maximum "
        "probability; the score of --thresholds)",
    )
    p.add_argument(
        "--thresholds",
        nargs="+",
        metavar="GROUP=P",
        help="store these thresholds instead of choosing them, one per group, e.g. cat=0.6 "
        "dog=0.5 (never: an expert that flags nothing)",
    )
    p.add_argument(
        "--model",
        metavar="FILE",
        help="only this model file of the run (default: each of model.keras, "
        "model.calibrated.keras and baseline.keras it holds; with --thresholds, model.keras)",
    )
    p.add_argument("--json", action="store_true", help="print unknown.json as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress line on standard error")
    p.add_argument(
        "--break-lock",
        action="store_true",
        help="remove a stale lock left in RUN_DIR by a condnet process that died",
    )
    p.set_defaults(run=_unknown)


def _unknown(args):
    from condnet.runs.unknown import unknown_line, unknown_run

    record = unknown_run(
        args.run_dir,
        false_alarm_rate=args.false_alarm_rate,
        thresholds=parse_thresholds(args.thresholds, "GROUP", "cat=0.6 dog=0.5"),
        model_file=args.model,
        score=args.score,
        break_lock=args.break_lock,
        progress=not args.quiet,
    )
    if args.json:
        print(json.dumps(record))
        return
    for name, entry in record["models"].items():
        print(unknown_line(name, entry))
    print(f"Thresholds written to {Path(args.run_dir) / UNKNOWN}.")


# === extend ===


def _extend_parser(commands, common):
    p = commands.add_parser(
        "extend",
        parents=[common],
        help="grow a trained run with new groups or classes, training only what changed",
        description="Add the groups and classes of DATA_DIR to RUN_DIR's model: a new group "
        "gets a new expert and a gate output, a new class in a known group grows that "
        "group's expert (its old outputs copied). Only the gate and those experts train, on "
        "DATA_DIR and a replay sample of RUN_DIR's own training images; the trunk and every "
        "other expert keep their weights. Writes a complete run in NEW_RUN (RUN_DIR is only "
        "read), with the old classes' accuracy before and after in metrics.json.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")
    p.add_argument(
        "data_dir",
        metavar="DATA_DIR",
        help="folder of the new classes: DATA_DIR/<group>/<class>/* (a known group or a new "
        "one), or DATA_DIR/<class>/* with --hierarchy",
    )
    run = _group(p, "run directory")
    run.add_argument("--out", required=True, metavar="NEW_RUN", help="run directory to write")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in NEW_RUN (its files are kept aside until the new run "
        "has committed its first epoch)",
    )
    run.add_argument(
        "--break-lock",
        action="store_true",
        help="remove a stale lock left in NEW_RUN by a condnet process that died",
    )
    data = _group(p, "data")
    data.add_argument(
        "--hierarchy",
        metavar="FILE",
        help="JSON/YAML file naming the group of each class folder of a flat DATA_DIR",
    )
    data.add_argument(
        "--old-data",
        metavar="DIR",
        help="where RUN_DIR's training images are now, if they moved (default: the folder "
        "its config.json names)",
    )
    data.add_argument(
        "--validation-split",
        type=float,
        metavar="X",
        help="share of each new class held out to score it (default: RUN_DIR's)",
    )
    training = _group(p, "training")
    training.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="epochs of the gate and changed experts (default: RUN_DIR's)",
    )
    training.add_argument(
        "--replay",
        default="auto",
        metavar="N",
        help="old training images per old class to train beside the new ones (default: auto, "
        "half as many as each new class has)",
    )
    training.add_argument(
        "--learning-rate", type=float, metavar="X", help="Adam's rate (default: RUN_DIR's)"
    )
    training.add_argument("--seed", type=int, metavar="N", help="seed (default: RUN_DIR's)")
    training.add_argument(
        "--train-trunk",
        action="store_true",
        help="train the shared trunk too (default: frozen, so untouched experts see the same "
        "features)",
    )
    p.add_argument("--json", action="store_true", help="print metrics.json's extend section")
    _add_verbosity_flags(p)
    p.set_defaults(run=_extend)


def _extend(args):
    from condnet.runs.extend import extend

    replay = args.replay
    if replay != "auto":
        try:
            replay = int(replay)
        except ValueError:
            raise ValueError(
                "--replay takes auto or a number of images per old class. "
                f"Received: --replay {args.replay}"
            ) from None
    result = extend(
        args.run_dir,
        args.data_dir,
        args.out,
        epochs=args.epochs,
        replay=replay,
        seed=args.seed,
        hierarchy=args.hierarchy,
        validation_split=args.validation_split,
        learning_rate=args.learning_rate,
        train_trunk=args.train_trunk,
        old_data=args.old_data,
        overwrite=args.overwrite,
        break_lock=args.break_lock,
        verbose=_verbosity(args),
    )
    section = result["metrics"]["extend"]
    if args.json:
        print(json.dumps(section))
        return
    old, new = section["old_classes"], section["new_classes_scores"]
    print(
        f"old classes: {_rate(old['accuracy_before'])} before, {_rate(old['accuracy_after'])} "
        f"after; new classes: {_rate(new['accuracy'])} ({section['seconds']:.0f} s) -> "
        f"{Path(args.out) / BEST}"
    )


def _rate(value):
    return "n/a" if value is None else f"{value:.4f}"


def parse_thresholds(pairs, key="LEVEL", example="group=0.8 class=0.9"):
    """`--thresholds group=0.8 class=0.9` as `{"group": 0.8, "class": 0.9}` (`never`:
    None), or None when not given. The levels (or the groups, `key="GROUP"`) are checked
    against the run's hierarchy."""
    if pairs is None:
        return None
    thresholds = {}
    for pair in pairs:
        level, equals, value = pair.partition("=")
        number = _probability(value)
        if not equals or not level or level in thresholds or number is False:
            raise ValueError(
                f"--thresholds takes one {key}=P per {key.lower()} of the hierarchy, e.g. "
                f"{example} (P a probability, or never). Received: --thresholds {' '.join(pairs)}"
            )
        thresholds[level] = number
    return thresholds


def _probability(text):
    """A threshold's text as a float, None for `never`, False when it is neither."""
    if text.strip().lower() == "never":
        return None
    try:
        return float(text)
    except ValueError:
        return False


# === export ===


def _export_parser(commands, common):
    from condnet.choices import EXPORT_FORMATS as FORMATS

    p = commands.add_parser(
        "export",
        parents=[common],
        help="write a run's model as ONNX or a TensorFlow SavedModel that routes in the graph",
        description="Export RUN_DIR's model. onnx and tf_saved_model route inside the graph: "
        "each expert runs on its own rows only (a batch of one runs one expert), and the "
        "artifact needs neither Keras nor condnet (ONNX Runtime / TensorFlow). keras copies "
        "the run's model file, which routes only through condnet's predict. The graph is "
        "traced with TensorFlow whatever KERAS_BACKEND says. A text run exports to "
        "tf_saved_model (strings in: its TextVectorization runs in the graph) or keras; "
        "tf2onnx does not convert its string ops, so onnx is refused.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="(default: onnx)")
    p.add_argument(
        "--out",
        metavar="PATH",
        help="file (.onnx, .keras) or folder (SavedModel) to write "
        "(default: RUN_DIR/export/model.onnx, saved_model or model.keras)",
    )
    p.add_argument(
        "--routing",
        choices=INFERENCE_ROUTINGS,
        default="hard",
        help="hard: route in the graph; soft: every expert on every row (default: hard)",
    )
    p.add_argument(
        "--model",
        metavar="FILE",
        help="the run's model file to export: model.keras (default), model.calibrated.keras "
        "or a path",
    )
    p.add_argument("--overwrite", action="store_true", help="replace PATH if it exists")
    p.set_defaults(run=_export)


def _export_needs_tensorflow(argv):
    """Graph exports trace TensorFlow: true for `export` (but --format keras) on another backend."""
    words = [word for word in argv if not word.startswith("-")]
    if words[:1] != ["export"] or _flag_value(argv, "--format") == "keras":
        return False
    return backend_name()[0] != "tensorflow"


def _run_with_tensorflow(argv):
    """Run the same command in a process whose Keras backend is TensorFlow (Keras cannot
    change its backend once imported; the run's .keras file loads on any backend)."""
    import subprocess

    print(
        f"condnet export: tracing with TensorFlow (the backend here is {backend_name()[0]}).",
        file=sys.stderr,
        flush=True,
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    return subprocess.run([sys.executable, "-m", "condnet", *argv], env=env).returncode


def _flag_value(argv, flag):
    for i, word in enumerate(argv):
        if word == flag and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(f"{flag}="):
            return word.split("=", 1)[1]
    return None


def _export(args):
    from condnet.runs.deploy import export_run

    path = export_run(
        args.run_dir,
        out=args.out,
        format=args.format,
        routing=args.routing,
        model_file=args.model,
        overwrite=args.overwrite,
    )
    print(f"Exported {args.format} ({args.routing} routing) to {path}.")


# === serve ===


def _serve_parser(commands, common):
    p = commands.add_parser(
        "serve",
        parents=[common],
        help="serve a run over HTTP (routed micro-batches; POST /predict, GET /health, /model, /)",
        description="An HTTP service for RUN_DIR on FastAPI + uvicorn. POST /predict takes one "
        'image as the body or several as multipart/form-data (a text run: JSON {"text": '
        '"..."} or {"text": ["...", ...]}) and answers one JSON object per image or '
        "document (those of `condnet predict --json`); requests that arrive together are "
        "routed as one batch. GET / is a page to try it in a browser.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1; any other warns when there is no token)",
    )
    p.add_argument("--port", type=int, default=8000, help="0 to 65535 (default: 8000)")
    p.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' on everything but /health and / "
        "(default: $CONDNET_TOKEN, else none; an empty token is refused)",
    )
    p.add_argument(
        "--max-batch", type=int, default=32, help="inputs per model call, 1 to 4096 (default: 32)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to share its batch, 0 to 10000 "
        "(default: 5; 0: none)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=16.0,
        help="largest request body, 0.001 to 1024 (default: 16)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="largest image, width x height, checked before decoding (default: 67,108,864)",
    )
    p.add_argument(
        "--max-documents",
        type=int,
        default=1024,
        help="a text run: most documents in one request, 1 to 100000 (default: 1024)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection has to send a request's headers, else it is closed "
        "(default: 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        help="seconds a request has to send its whole body, else a 408 (default: 60)",
    )
    p.add_argument("--routing", choices=INFERENCE_ROUTINGS, default="hard", help="(default: hard)")
    p.add_argument("--model", metavar="FILE", help="model.keras (default), model.calibrated.keras")
    _backoff_flags(p)
    _unknown_flag(p)
    p.set_defaults(run=_serve)


def _serve(args):
    from condnet.data.decode import MAX_IMAGE_PIXELS
    from condnet.deploy.serve import check_options, check_token, run_server
    from condnet.runs.deploy import serve_app

    limits = {
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "max_pixels": MAX_IMAGE_PIXELS if args.max_pixels is None else args.max_pixels,
        "max_documents": args.max_documents,
        "body_timeout": args.body_timeout,
    }
    server = {"port": args.port, "header_timeout": args.header_timeout}
    # Before loading the model, so that a bad option fails at once.
    check_options(cli=True, max_upload_mb=args.max_upload_mb, **limits, **server)
    token, source = args.token, "--token"
    if token is None:
        token, source = os.environ.get("CONDNET_TOKEN"), "$CONDNET_TOKEN"
    check_token(token, source)
    app = serve_app(
        args.run_dir,
        routing=args.routing,
        model_file=args.model,
        back_off=args.back_off,
        thresholds=parse_thresholds(args.thresholds),
        unknown=args.unknown,
        token=token,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        **limits,
    )
    access = "token required" if token is not None else "no token"
    print(f"Serving {args.run_dir} on http://{args.host}:{args.port}/ ({access}; Ctrl-C stops).")
    run_server(app, host=args.host, **server)


# === compare ===


def _compare_parser(commands, common):
    p = commands.add_parser(
        "compare",
        parents=[common],
        help="finished runs side by side: accuracy, baseline, routed MACs, training time",
        description="A table of RUN_DIRs (or folders of runs), most accurate first, from each "
        "run's metrics.json (validation split, hard-routed), config.json and history.csv.",
    )
    p.add_argument("runs", metavar="RUN_DIR", nargs="+", help="run directories or folders of runs")
    p.add_argument("--output", metavar="FILE", help="also write the table (.md, .csv or .json)")
    p.add_argument("--plot", metavar="FILE", help="accuracy against routed MACs (.png, .svg)")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    p.set_defaults(run=_compare)


def _compare(args):
    from condnet.runs.compare import check_outputs, compare_runs, plot_runs, table, write_table

    check_outputs(args.output, args.plot)
    from condnet.runs.compare import find_runs

    runs = find_runs(args.runs)
    read = dict(reads=runs, data=training_data(runs))
    guard(args.output, "table file", flag="--output", **read)
    guard(args.plot, "plot file", flag="--plot", **read)
    rows = compare_runs(args.runs)
    print(json.dumps(rows) if args.json else table(rows), end="" if not args.json else "\n")
    if args.output:
        write_table(rows, args.output)
    if args.plot:
        plot_runs(rows, args.plot)


# === ensemble ===


def _ensemble_parser(commands, common):
    p = commands.add_parser(
        "ensemble",
        parents=[common],
        help="average finished runs into one model and evaluate it against its members",
        description="Average the class probabilities of RUN_DIRs (same hierarchy; image runs "
        "of one image size, or text runs, each reading documents with its own vectorizer; "
        "each member hard-routed) into one model.keras in OUT_DIR, scored on DATA_DIR "
        "with each member beside it; OUT_DIR is a run directory for evaluate, predict, serve.",
    )
    p.add_argument(
        "runs", metavar="RUN_DIR", nargs="+", help="runs to average (with --top: one TUNE_DIR)"
    )
    p.add_argument(
        "--top",
        type=int,
        metavar="K",
        help="average the K best trials of the search in TUNE_DIR (condnet tune)",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DATA_DIR",
        help="images (documents, for text runs) to score on, laid out as the training folder",
    )
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="where to write the ensemble")
    p.add_argument(
        "--batch-size", type=int, default=64, help="images or documents per batch (default 64)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an ensemble in OUT_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(run=_ensemble)


def _ensemble(args):
    from condnet.runs.ensemble import build_ensemble

    runs = args.runs
    if args.top is not None:
        from condnet.runs.tune import best_trials

        if len(args.runs) != 1:
            raise ValueError(
                f"--top K takes one TUNE_DIR (from `condnet tune`). Received: {args.runs}"
            )
        runs = best_trials(args.runs[0], args.top)
    metrics = build_ensemble(
        runs,
        args.out,
        args.data,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if args.json:
        print(json.dumps(metrics))
        return
    for member in metrics["members"]:
        print(f"member {member['run']}: accuracy {member['accuracy']:.4f}")
    print(
        f"ensemble: accuracy {metrics['accuracy']:.4f} ({metrics['gain_over_best_member']:+.4f} "
        f"over the best member) -> {args.out}/model.keras"
    )


# === tune ===


def _tune_parser(commands, common):
    from condnet.runs.tune import OBJECTIVES, TUNERS

    p = commands.add_parser(
        "tune",
        parents=[common],
        help="hyperparameter search over the recipe (KerasTuner); each trial is a run",
        description="Search routing, strategy, expert placement, widths, learning rate, loss "
        "schedule and augmentation on images; text trunk, sequence length, vocabulary size, "
        "learning rate, routing, strategy and loss schedule on documents (--modality, auto "
        "as train decides it); or the options a --space file names, less those given as "
        "flags, with KerasTuner. Each trial is a run in TUNE_DIR/trials/; an interrupted "
        "search resumes; TUNE_DIR/summary.md, summary.json and pareto.png rank the trials.",
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of images or documents")
    p.add_argument("--out", required=True, metavar="TUNE_DIR", help="folder of the search")
    p.add_argument("--trials", type=int, default=10, help="trials to run (default 10)")
    p.add_argument("--tuner", choices=TUNERS, default="random", help="(default: random)")
    p.add_argument(
        "--objective", choices=OBJECTIVES, default="val_accuracy", help="(default: val_accuracy)"
    )
    p.add_argument("--space", metavar="FILE", help="JSON / YAML: option -> choices or min/max")
    p.add_argument(
        "--chief",
        metavar="HOST:PORT",
        help="run the search's oracle here for workers to connect to (distributed tuning)",
    )
    p.add_argument(
        "--worker",
        metavar="HOST:PORT",
        help="run trials for the chief at HOST:PORT (needs --worker-id)",
    )
    p.add_argument("--worker-id", metavar="NAME", help="a name unique among the workers")
    add_option_flags(p, exclude=("routing", "strategy", "expert_placement", "split"))
    _add_verbosity_flags(p)
    p.set_defaults(run=_tune)


def _tune(args):
    from condnet.runs.tune import make_tuner, read_space, report_best, search_modality, summarise

    if args.trials < 1:
        raise ValueError(f"--trials must be at least 1. Received: --trials {args.trials}")
    _distributed_tuning(args)
    data_dir, options = Path(args.data_dir).resolve(), given_options(args)
    modality = search_modality(data_dir, options)  # images or documents, as train decides
    tuner = make_tuner(
        data_dir,
        Path(args.out),
        {**options, "modality": modality},
        tuner=args.tuner,
        trials=args.trials,
        objective=args.objective,
        space=read_space(args.space, modality, fixed=options),
        verbose=_verbosity(args),
    )
    tuner.search()
    if args.worker:
        return
    rows = summarise(args.out, tuner)
    failed = [t for t in tuner.oracle.trials.values() if str(t.status) in ("FAILED", "INVALID")]
    if failed:
        reason = (failed[-1].message or "").strip().splitlines()[-1:] or ["no message"]
        print(
            f"condnet tune: {len(failed)} of {len(rows)} trials failed; the last: {reason[0]}",
            file=sys.stderr,
        )
        if len(failed) == len(rows):
            raise RuntimeError(f"Every trial failed; the last: {reason[0]}")
    best = rows[0] if rows else None
    report_best(rows, verbose=_verbosity(args))
    print(f"{len(rows)} trials; summary in {args.out}/summary.md, plot {args.out}/pareto.png.")
    if best is not None and best["val_accuracy"] is not None:
        print(  # numbered as KerasTuner's "Running Trial #N"; the folder keeps its id
            f"Best: trial #{best['number']} (val_accuracy {best['val_accuracy']:.4f}) -> "
            f"{best['run_dir']} (its report: report.md; the other trials wrote metrics only)"
        )


def _distributed_tuning(args):
    """--chief / --worker as KerasTuner's environment variables."""
    if args.chief and args.worker:
        raise ValueError("A process is either the chief (--chief) or a worker (--worker).")
    address = args.chief or args.worker
    if not address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Give the oracle as HOST:PORT. Received: {address!r}")
    if args.worker and not args.worker_id:
        raise ValueError("A worker needs --worker-id NAME, unique among the workers.")
    os.environ["KERASTUNER_ORACLE_IP"] = host
    os.environ["KERASTUNER_ORACLE_PORT"] = port
    os.environ["KERASTUNER_TUNER_ID"] = "chief" if args.chief else args.worker_id


if __name__ == "__main__":
    sys.exit(main())

"""`condnet tune`: hyperparameter search over the recipe (KerasTuner); each trial is a run."""

import os
import sys
from pathlib import Path

from condnet.choices import TUNE_OBJECTIVES, TUNERS
from condnet.runs.cli.common import add_option_flags, add_verbosity_flags, given_options, verbosity


def add_parser(commands, common):

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
        "--objective",
        choices=TUNE_OBJECTIVES,
        default="val_accuracy",
        help="(default: val_accuracy)",
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
    add_verbosity_flags(p)
    p.set_defaults(run=_run)


def _run(args):
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
        verbose=verbosity(args),
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
    report_best(rows, verbose=verbosity(args))
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

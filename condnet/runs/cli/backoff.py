"""`condnet backoff`: choose a run's back-off thresholds on its validation split (or store
given ones)."""

import json
from pathlib import Path

from condnet.runs.cli.common import add_run_dir, add_stored_threshold_flags
from condnet.runs.files import BACKOFF
from condnet.runs.options import parse_thresholds


def add_parser(commands, common):
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
    add_run_dir(p)
    p.add_argument(
        "--target-accuracy",
        type=float,
        default=0.95,
        metavar="X",
        help="the accuracy the answers given must reach at each level, in (0, 1] (default: 0.95)",
    )
    add_stored_threshold_flags(
        p,
        "LEVEL=P",
        "store these thresholds instead of choosing them, one per level, e.g. group=0.8 "
        "class=0.9 (never: a level that never answers)",
        BACKOFF,
    )
    p.set_defaults(run=_run)


def _run(args):
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

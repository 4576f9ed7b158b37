"""`condnet unknown`: choose a run's unknown-class threshold per expert on its validation split
(or store given ones)."""

import json
from pathlib import Path

from condnet.choices import UNKNOWN_SCORES
from condnet.runs.cli.common import add_run_dir, add_stored_threshold_flags
from condnet.runs.files import UNKNOWN
from condnet.runs.options import parse_thresholds


def add_parser(commands, common):
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
    add_run_dir(p)
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
        choices=UNKNOWN_SCORES,
        default=None,
        help="what says an image is of no known class: gated_energy (default: the "
        "log-sum-exp of the chosen expert's logits plus the log of the gate's probability of "
        "its group), energy (the log-sum-exp alone), mahalanobis (the distance of its "
        "features to its classes, fitted on the training split into unknown.npz) or softmax "
        "(its maximum probability; the score of --thresholds)",
    )
    add_stored_threshold_flags(
        p,
        "GROUP=P",
        "store these thresholds instead of choosing them, one per group, e.g. cat=0.6 "
        "dog=0.5 (never: an expert that flags nothing)",
        UNKNOWN,
    )
    p.set_defaults(run=_run)


def _run(args):
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

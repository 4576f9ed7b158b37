"""`condnet calibrate`: fit gate and expert temperatures on a run's validation split."""

import json
from pathlib import Path

from condnet.runs.cli.common import add_run_dir, add_upkeep_flags


def add_parser(commands, common):
    p = commands.add_parser(
        "calibrate",
        parents=[common],
        help="fit gate and expert temperatures on a run's validation split",
        description="Temperature-scale RUN_DIR's model on its validation split (drawn "
        "again from config.json); write model.calibrated.keras and calibration.json.",
    )
    add_run_dir(p)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_upkeep_flags(p)
    p.set_defaults(run=_run)


def _run(args):
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

"""`condnet evaluate`: metrics of a trained run on another folder."""

import json

from condnet.runs.cli.common import (
    add_inference_flags,
    add_run_dir,
    check_output,
    guard_file,
    inference_options,
    inputs_noun,
    print_baseline,
)
from condnet.runs.outputs import write_file


def add_parser(commands, common):
    p = commands.add_parser(
        "evaluate",
        parents=[common],
        help="metrics of a trained run on another folder",
        description="Evaluate RUN_DIR on DATA_DIR (same groups and classes), hard-routed by "
        "default, with the soft mixture and the run's flat baseline beside it.",
    )
    add_run_dir(p)
    p.add_argument(
        "data_dir",
        metavar="DATA_DIR",
        help="folder of images (of documents for a text run), e.g. a test split",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument(
        "--report-dir", default=None, help="where to write the report (default RUN_DIR/evaluation)"
    )
    add_inference_flags(
        p,
        ("routing", "model", "batch_size", "quiet", "output"),
        defaults={"routing": "hard"},
        helps={"output": "also write the metrics to FILE (.json: one object)"},
    )
    p.set_defaults(run=_run)


def _run(args):
    from condnet.evaluation.report import summary_table, summary_title
    from condnet.runs.run_dir import evaluate_run

    options = inference_options(args)
    check_output(options.output, (".json",))
    guard_file(options.output, "metrics file", [args.data_dir], [args.run_dir])
    metrics = evaluate_run(
        args.run_dir,
        args.data_dir,
        report_dir=args.report_dir,
        batch_size=options.batch_size,
        routing=options.routing,
        model_file=options.model,
        progress=not options.quiet,
    )
    if options.output:
        write_file(options.output, json.dumps(metrics, indent=1) + "\n")
    if args.json:
        print(json.dumps(metrics))
        return
    noun = inputs_noun(args.run_dir)
    print(summary_table(metrics, summary_title(metrics, str(args.data_dir), noun)))
    other = metrics.get("mixture") or metrics.get("hard_routed")
    label = "soft mixture" if "mixture" in metrics else "hard routed"
    if other is not None:  # the flat baseline (--model baseline.keras) has no other routing
        print(f"{label} accuracy: {other['accuracy']:.4f}")
    print_baseline(metrics)
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

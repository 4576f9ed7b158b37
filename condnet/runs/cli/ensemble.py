"""`condnet ensemble`: average finished runs into one model and evaluate it against its members."""

import json
from pathlib import Path

from condnet.runs.cli.common import add_inference_flags, inference_options
from condnet.runs.files import BEST


def add_parser(commands, common):
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
    add_inference_flags(
        p,
        ("batch_size",),
        helps={"batch_size": "images or documents per batch (default {default})"},
    )
    p.add_argument("--overwrite", action="store_true", help="replace an ensemble in OUT_DIR")
    add_inference_flags(p, ("quiet",), helps={"quiet": "no progress lines"})
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(run=_run)


def _run(args):
    from condnet.runs.ensemble import build_ensemble

    options = inference_options(args)
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
        batch_size=options.batch_size,
        overwrite=args.overwrite,
        progress=not options.quiet,
    )
    if args.json:
        print(json.dumps(metrics))
        return
    for member in metrics["members"]:
        print(f"member {member['run']}: accuracy {member['accuracy']:.4f}")
    print(
        f"ensemble: accuracy {metrics['accuracy']:.4f} ({metrics['gain_over_best_member']:+.4f} "
        f"over the best member) -> {Path(args.out) / BEST}"
    )

"""`condnet cv`: stratified K-fold cross-validation of the training recipe."""

from condnet.runs.cli.common import (
    add_option_flags,
    add_run_flags,
    add_verbosity_flags,
    given_options,
    verbosity,
)


def add_parser(commands, common):
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
    add_run_flags(p)
    add_verbosity_flags(p)
    p.set_defaults(run=_run)


def _run(args):
    from condnet.runs.cross_validation import cross_validate, summary_table

    summary = cross_validate(
        args.data_dir,
        args.out,
        folds=args.folds,
        overwrite=args.overwrite,
        break_lock=args.break_lock,
        verbose=verbosity(args),
        **given_options(args),
    )
    print(summary_table(summary))
    print(f"Cross-validation written to {args.out}/cv.json (runs in fold-1 ... fold-{args.folds}).")

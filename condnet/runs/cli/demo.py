"""`condnet demo`: generate the shapes data set, train, evaluate, report."""

from pathlib import Path

from condnet.runs.cli.common import (
    add_option_flags,
    add_verbosity_flags,
    given_options,
    group,
    verbosity,
)


def add_parser(commands, common):
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
    data = group(p, "data")
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
    add_verbosity_flags(p)
    p.set_defaults(run=_run)


DEMO_EPOCHS = 12


def _run(args):
    from condnet.runs.demo import run_demo

    options = {"epochs": DEMO_EPOCHS, **given_options(args)}
    run_demo(
        Path(args.out),
        samples_per_class=args.samples_per_class,
        test_samples_per_class=args.test_samples_per_class,
        data_only=args.data_only,
        verbose=verbosity(args),
        **options,
    )

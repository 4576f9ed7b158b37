"""`condnet compare`: finished runs side by side: accuracy, baseline, routed MACs, training time."""

import json

from condnet.runs.outputs import guard, training_data


def add_parser(commands, common):
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
    p.set_defaults(run=_run)


def _run(args):
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

"""`condnet predict`: predict the group and class of images or documents."""

import json
import sys
from pathlib import Path

from condnet.runs.cli.common import (
    add_inference_flags,
    add_run_dir,
    check_output,
    guard_file,
    inference_options,
)
from condnet.runs.outputs import write_file


def add_parser(commands, common):
    p = commands.add_parser(
        "predict", parents=[common], help="predict the group and class of images or documents"
    )
    add_run_dir(p)
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
    add_inference_flags(
        p,
        ("routing", "model", "batch_size", "quiet", "output", "back_off", "thresholds", "unknown"),
        helps={"output": OUTPUT_HELP},
    )
    p.set_defaults(run=_run)


OUTPUT_HELP = (
    "write the rows to FILE (.jsonl: one JSON object per line; .csv: a table) and print "
    "only a one-line summary; with --json the rows are printed as JSON lines as well"
)
PREDICT_COLUMNS = ("path", "group", "class", "expert", "confidence", "error")
ANSWER_COLUMNS = ("answer", "answer_level", "answer_confidence")
UNKNOWN_COLUMNS = ("unknown", "unknown_score")


def _run(args):
    from condnet.runs.run_dir import predict_paths

    options = inference_options(args)
    check_output(options.output, (".jsonl", ".csv"))
    _check_inputs(args)
    folders = [i for i in args.inputs if Path(i).is_dir()]
    guard_file(options.output, "rows file", folders, [args.run_dir])
    rows = predict_paths(
        args.run_dir,
        args.inputs,
        batch_size=options.batch_size,
        routing=options.routing,
        model_file=options.model,
        progress=not options.quiet,
        back_off=options.back_off,
        thresholds=options.thresholds,
        unknown=options.unknown,
        lines=args.lines,
        jsonl=args.jsonl,
    )
    _show_rows(rows, options.output, args.json)
    failed = sum("error" in row for row in rows)
    if failed:
        print(
            f"condnet predict: {failed} input(s) could not be read (an image that does not "
            "decode, a document that is empty or binary); their rows say why.",
            file=sys.stderr,
        )
        return 1
    return 0


def _check_inputs(args):
    if not (args.inputs or args.lines or args.jsonl):
        raise ValueError(
            "condnet predict needs something to predict: image or document files and "
            "folders, or --lines / --jsonl FILE for a text run. Received: no PATH"
        )
    if args.lines == "-" and args.jsonl == "-":
        raise ValueError("Standard input can feed --lines or --jsonl, not both.")


def _show_rows(rows, output, as_json):
    """The rows into `output` (if given) and on stdout: as JSON lines, a table, or, when
    they went to a file, where."""
    if output:
        _write_rows(Path(output), rows)
    if as_json:
        for row in rows:
            print(json.dumps(row))
    elif output:  # the rows are in the file: stdout says where
        print(f"Wrote {len(rows)} rows (one per input) to {output}")
    else:
        _print_rows(rows)


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

"""`condnet train`: train a conditional model on a folder of images or documents."""

from condnet.runs._backend import backend_name
from condnet.runs.cli.common import (
    add_option_flags,
    add_run_flags,
    add_verbosity_flags,
    given_options,
    group,
    inputs_noun,
    print_baseline,
    verbosity,
)


def add_parser(commands, common):
    p = commands.add_parser(
        "train",
        parents=[common],
        help="train a conditional model on a folder of images or documents",
        description="Train on DATA_DIR (root/<group>/<class>/* or "
        "root/<class>/* with --hierarchy) and write RUN_DIR.",
    )
    p.add_argument(
        "data_dir",
        metavar="DATA_DIR",
        help="folder of images, or of text documents (see --modality)",
    )
    run = group(p, "run directory")
    run.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR from its last completed epoch (options given must "
        "agree with the run's, except a larger --epochs, the learning rates, --patience and "
        "--tensorboard)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in RUN_DIR (its files are kept aside until the new run "
        "has committed its first epoch)",
    )
    add_run_flags(p)
    add_option_flags(p)
    processes = p.add_argument_group(
        "several processes",
        "a data-parallel job over processes or hosts: start the same command on each, with "
        "the same RUN_DIR on a shared disk; process 0 writes the run. JAX: these flags. "
        "TensorFlow: the TF_CONFIG environment variable (MultiWorkerMirroredStrategy), "
        "worker 0 being process 0",
    )
    processes.add_argument(
        "--coordinator", metavar="HOST:PORT", help="where process 0 listens (jax.distributed)"
    )
    processes.add_argument(
        "--num-processes", type=int, default=1, metavar="N", help="processes in the job"
    )
    processes.add_argument(
        "--process-id", type=int, default=0, metavar="I", help="this process, 0..N-1"
    )
    add_verbosity_flags(p)
    p.set_defaults(run=_run)


def _run(args):
    from condnet.runs.recipe import resume, train

    verbose = verbosity(args)
    options = given_options(args)
    if args.resume and args.overwrite:
        raise ValueError(
            "--resume continues the run in RUN_DIR and --overwrite replaces it; pass one. "
            "Received: --resume --overwrite"
        )
    from condnet.training import distribute

    if _join_job(args) and not distribute.is_chief():
        verbose = 0  # process 0 reports
    if args.resume:
        result = resume(
            args.out, args.data_dir, break_lock=args.break_lock, verbose=verbose, **options
        )
    else:
        result = train(
            args.data_dir,
            args.out,
            overwrite=args.overwrite,
            break_lock=args.break_lock,
            verbose=verbose,
            **options,
        )
    if result["metrics"] is None:
        print(f"Process {distribute.process_index()} done; process 0 writes the run to {args.out}.")
        return
    _print_summary(result["metrics"], args.out)


def _print_summary(metrics, run_dir):
    from condnet.evaluation.report import summary_table, summary_title

    scored_on = metrics.get("scored_on", "scored").capitalize()
    print(summary_table(metrics, summary_title(metrics, scored_on, inputs_noun(run_dir))))
    print_baseline(metrics)
    print(f"Run written to {run_dir} (model.keras, report.md, history.csv).")


def _join_job(args):
    """Join a job of several processes when the flags (JAX) or TF_CONFIG (TensorFlow)
    describe one; whether it did."""
    from condnet.training import distribute

    if args.coordinator is not None or args.num_processes != 1:
        distribute.join_processes(args.coordinator, args.num_processes, args.process_id)
        return True
    if backend_name()[0] == "tensorflow" and distribute.tf_config_workers() > 1:
        distribute.join_tf_config()
        return True
    return False

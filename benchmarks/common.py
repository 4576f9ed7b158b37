"""Helpers shared by the benchmark scripts: backend choice, timing, machine, results files.

Nothing here imports Keras, so a script can pick the backend with
`choose_backend()` before Keras is imported.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

BACKENDS = ("tensorflow", "jax", "torch")
BENCHMARKS = Path(__file__).resolve().parent
REPOSITORY = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
CIFAR = REPOSITORY.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
_HEADER = """# {benchmark}: detailed results

Written by `benchmarks/{benchmark}.py`; each run replaces its own section. The
current figures are summarised in [../RESULTS.md](../RESULTS.md). Absolute
images/s depend on the machine and on what else it runs; compare the ratios,
which are measured side by side in one process.
"""


# === Command line ===


def parse_args(description, argv=None, more=None, known=False):
    """The options every benchmark takes; `more(parser)` adds a script's own. `known=True`
    ignores options it does not know (to read the backend before the script's own)."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, default=_default_backend())
    parser.add_argument(
        "--all-backends",
        action="store_true",
        help="run this script once per backend, one after the other",
    )
    parser.add_argument("--quick", action="store_true", help="a small subset, fewer repeats")
    parser.add_argument("--data", type=Path, default=CIFAR, help="CIFAR-10 JPEG tarball")
    parser.add_argument(
        "--results",
        type=Path,
        default=details(Path(sys.argv[0]).stem),
        help="markdown file to update (default: benchmarks/results/<script>.md)",
    )
    if more is not None:
        more(parser)
    return parser.parse_known_args(argv)[0] if known else parser.parse_args(argv)


def option_values(pairs):
    """`{name: value}` of `NAME=VALUE` strings (each value read as JSON, else kept as text):
    the TrainingOptions fields a benchmark's `--condnet-option` flags pass to a run."""
    options = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            options[name] = json.loads(value)
        except ValueError:
            options[name] = value
    return options


def choose_backend():
    """The backend to set in KERAS_BACKEND, read from the command line.

    With `--all-backends`, rerun the calling script once per backend (never
    two at once) and exit.
    """
    args = parse_args(sys.argv[0], sys.argv[1:], known=True)
    if not args.all_backends:
        return args.backend
    rest = [a for a in sys.argv[1:] if a != "--all-backends"]
    rest = [a for i, a in enumerate(rest) if a != "--backend" and rest[i - 1 : i] != ["--backend"]]
    rest = [a for a in rest if not a.startswith("--backend=")]
    for backend in BACKENDS:
        command = [sys.executable, sys.argv[0], "--backend", backend, *rest]
        print(f"\n$ {shlex.join(command)}", flush=True)
        subprocess.run(command, check=True)
    sys.exit(0)


def _default_backend():
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    return backend if backend in BACKENDS else "tensorflow"


def command_line():
    """The command that ran this script, as typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    if script.is_relative_to(REPOSITORY):
        script = script.relative_to(REPOSITORY)
    return shlex.join(["python", str(script), *sys.argv[1:]])


# === Timing ===


def time_side_by_side(functions, repeats, warmup=1):
    """Seconds per call of each function, measured in interleaved rounds.

    Each function is first called `warmup` times (tracing, compilation,
    caches). Then `repeats` rounds call every function once in turn, so a
    slow spell of a shared machine hits all of them alike.

    Args:
        functions: dict of name -> callable taking no arguments.
        repeats: int. Timed rounds.
        warmup: int. Untimed calls per function before the rounds.

    Returns:
        dict of name -> `{"median": seconds, "first": seconds of the first
        warm-up call, "runs": [seconds, ...]}`.
    """
    first = {}
    for name, function in functions.items():
        first[name] = _seconds(function)
        for _ in range(warmup - 1):
            function()
    runs = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            runs[name].append(_seconds(function))
    return {
        name: {"median": statistics.median(runs[name]), "first": first[name], "runs": runs[name]}
        for name in functions
    }


def _seconds(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


# === Machine ===


def machine(backend):
    """Lines describing where and how the benchmark ran."""
    packages = ["keras", *_PACKAGES[backend], "numpy"]
    versions = ", ".join(f"{p} {_version(p)}" for p in packages if _version(p))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- machine: {_cpu_model()}, {cores} cores usable ({os.cpu_count()} online), "
        f"Python {platform.python_version()}, {platform.system()}",
        f"- backend: {backend} ({versions})",
        "- load average at the end (1, 5, 15 min): "
        + ", ".join(f"{load:.2f}" for load in os.getloadavg())
        + " (other processes share the cores: compare ratios, not images/s)",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `{command_line()}`",
    ]


_PACKAGES = {
    "tensorflow": ["tensorflow", "tensorflow-cpu"],
    "jax": ["jax", "jaxlib"],
    "torch": ["torch"],
}


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# === Results file ===


def markdown_table(headers, rows):
    """A markdown table; numbers right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    numeric = [all(_is_number(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _is_number(text):
    try:
        float(text.rstrip("x%"))
        return True
    except ValueError:
        return False


def details(benchmark):
    """`results/<benchmark>.md`: the benchmark's detailed sections, one per variant."""
    return RESULTS / f"{benchmark}.md"


def results_file(benchmark, backend=None):
    """`results/<benchmark>-<backend>.json`: one file per benchmark and backend (the
    backend in `KERAS_BACKEND` by default), one key per variant of its arguments."""
    backend = backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    return RESULTS / f"{benchmark}-{backend}.json"


def read_results(benchmark, backend=None):
    """`{variant: {"args": ..., "results": ..., ...}}` of the benchmark's results file
    (empty when it has none yet)."""
    path = results_file(benchmark, backend)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_section(heading, body, path):
    """Put `## heading` + body in the markdown file `path`, replacing a section of
    that heading."""
    path = Path(path)
    text = path.read_text() if path.exists() else _HEADER.format(benchmark=path.stem)
    lines = text.rstrip("\n").split("\n")
    title = f"## {heading}"
    section = [title, "", *body.strip("\n").split("\n")]
    if title in lines:
        start = lines.index(title)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines[start:end] = section + [""]
    else:
        lines += ["", *section]
    path.write_text("\n".join(lines).rstrip("\n") + "\n")
    return path


def write_results(benchmark, variant, document, heading, body, markdown=None, backend=None):
    """Store `document` (JSON-able) under the key `variant` of
    `results/<benchmark>-<backend>.json`, and `body` as the section `heading` of the
    markdown file `markdown` (`results/<benchmark>.md` by default).

    Returns the markdown file's path.
    """
    stored = read_results(benchmark, backend)
    stored[variant] = document
    path = results_file(benchmark, backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=1) + "\n")
    return write_section(heading, body, markdown or details(benchmark))


def arguments(args):
    """The parsed arguments as JSON-able `{name: value}` (paths as text)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}

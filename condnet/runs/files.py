"""The names of the files in a run directory, in one place.

Every module and benchmark that reads or writes a run's files imports their
names from here; `condnet/architecture_test.py` fails on a literal one
elsewhere.
"""

# === What `condnet train` writes ===

CONFIG = "config.json"  # the run's options and hierarchy
HIERARCHY = "hierarchy.json"  # a copy of config.json's tree
DISCOVERED = "hierarchy.discovered.json"  # what --hierarchy auto found, to edit and reuse
STATE = "state.json"  # the last committed epoch, for --resume
CHECKPOINTS = "checkpoints"  # the last epochs' models, for --resume
BEST = "model.keras"  # the model a user ships: the best epoch, hard-routed
BASELINE = "baseline.keras"  # the flat model of the same cost, trained after BEST
METRICS = "metrics.json"
HISTORY = "history.csv"
SPLIT = "split.json"  # which files the run trained and validated on
TIMING = "timing.json"

# === What later commands add ===

CALIBRATED = "model.calibrated.keras"  # `condnet calibrate`
CALIBRATION_REPORT = "calibration.json"
BACKOFF = "backoff.json"  # `condnet backoff` (and train)
UNKNOWN = "unknown.json"  # `condnet unknown` (and train)
UNKNOWN_STATISTICS = "unknown.npz"

# Every file and folder a run writes (recipe, report, evaluate, calibrate, backoff, demo);
# nothing else in a run directory is ever moved or deleted.
RUN_FILES = (
    CONFIG,
    HIERARCHY,
    DISCOVERED,
    STATE,
    BEST,
    HISTORY,
    METRICS,
    "report.md",
    "report.html",
    "training_curves.png",
    "group_confusion.png",
    "class_confusion.png",
    "routing_matrix.png",
    "examples",
    BASELINE,
    CALIBRATED,
    CALIBRATION_REPORT,
    BACKOFF,
    UNKNOWN,
    CHECKPOINTS,
    "logs",
    "evaluation",
    "test-report",
    "export",
    SPLIT,
    TIMING,
)

# Not a run file: the member every `.keras` archive holds (`model.save` writes it).
KERAS_ARCHIVE_CONFIG = "config.json"

"""Progress of a pass over batches, on standard error (standard output may be JSON).

Everywhere in condnet, `progress` is a bool: `True` writes progress lines on standard
error, `False` writes none. Results (tables, JSON, file names) go to standard output.
"""

import sys
import time


class Progress:
    """`label: done/total batches` on standard error.

    In a terminal the line is redrawn after each batch; otherwise (a log file,
    a pipe) only the finished line is printed, so logs hold one line per pass.
    `enabled=False` prints nothing.
    """

    def __init__(self, label, total, enabled=True, stream=None):
        self.label, self.total, self.enabled = label, total, enabled
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.live = enabled and getattr(self.stream, "isatty", lambda: False)()

    def update(self, done):
        if self.live:
            self.stream.write(f"\r{self.label}: {done}/{self.total} batches")
            self.stream.flush()

    def close(self, note=""):
        if not self.enabled:
            return
        seconds = time.perf_counter() - self.start
        line = f"{self.label}: {self.total}/{self.total} batches, {seconds:.1f} s{note}"
        self.stream.write(("\r" if self.live else "") + line + "\n")
        self.stream.flush()


def check_progress(progress):
    """Refuse a `progress` that is not a bool (a label belongs in `progress_label`)."""
    if not isinstance(progress, bool):
        raise TypeError(
            "progress must be True (progress lines on standard error) or False (none); "
            "name the line with progress_label=. "
            f"Received: progress={progress!r} of type {type(progress).__name__}"
        )

"""Send a rule script's log messages, warnings and tracebacks to the rule's log file."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path


def log_to_file(path: str | Path, level: int = logging.INFO) -> logging.Logger:
    """Route logging, stdout and stderr of this process to ``path`` and return the "echoflow" logger.

    An uncaught exception is written to the log with its traceback, and its message alone is also printed on
    the original stderr, so the Snakemake console shows why a job failed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    console = sys.__stderr__
    stream = open(path, "w", encoding="utf-8", buffering=1)
    sys.stdout = stream
    sys.stderr = stream
    logging.basicConfig(stream=stream, level=level, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)

    def report(kind, error, trace):
        traceback.print_exception(kind, error, trace, file=stream)
        if console is not None:
            console.write(f"ERROR: {error}\n(full traceback in {path})\n")
            console.flush()

    sys.excepthook = report
    return logging.getLogger("echoflow")

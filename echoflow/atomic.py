"""Write files so that an interrupted job never leaves one that looks finished."""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` and rename it to ``target`` when the block succeeds.

    The temporary file is removed if the block raises. Renaming within one folder is atomic on POSIX file
    systems, so readers see either the old file, no file, or the complete new one. Temporary files of the same
    target left by killed processes are deleted first. This is safe because Snakemake runs at most one job per
    output at a time, and its lock stops a second run in the same working folder.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial-{os.getpid()}")
    for stale in target.parent.glob(f".{glob.escape(target.name)}.partial-*"):
        stale.unlink(missing_ok=True)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text(target: str | Path, text: str) -> None:
    """Write text to ``target`` atomically."""
    with atomic_output(target) as temporary:
        temporary.write_text(text, encoding="utf-8")

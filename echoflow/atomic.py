"""Write files so that an interrupted job never leaves one that looks finished."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` and rename it to ``target`` when the block succeeds.

    The temporary file is removed if the block raises. Renaming within one folder is atomic on POSIX file
    systems, so readers see either the old file, no file, or the complete new one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial-{os.getpid()}")
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

"""Label each stored frame as 4CV (1) or background (0) from the intervals of a VIA annotation.

A frame is 4CV when ``start_s * 1000 <= timestamp_ms < end_s * 1000`` for a merged annotation interval, with
``timestamp_ms`` the frame's presentation time from the frame store.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from echoflow.atomic import atomic_output
from echoflow.frames import read_timestamps
from echoflow.via import read_project

log = logging.getLogger(__name__)

LABEL_COLUMNS = ["frame", "timestamp_ms", "label"]
INTERVAL_COLUMNS = ["interval", "start_s", "end_s", "start_frame", "end_frame", "status", "note"]


def frame_spacing_ms(timestamps_ms: np.ndarray, fps: float) -> float:
    """Return the typical time between stored frames: the median gap, or 1/fps for a single frame."""
    if len(timestamps_ms) >= 2:
        return float(np.median(np.diff(timestamps_ms)))
    return 1000.0 / fps if fps and np.isfinite(fps) else 0.0


def label_frames(timestamps_ms: np.ndarray, intervals: list[tuple[float, float]],
                 spacing_ms: float) -> tuple[np.ndarray, list[dict]]:
    """Return per-frame labels and one row per interval describing how it maps onto the frames.

    Args:
        timestamps_ms: increasing presentation times of the stored frames.
        intervals: (start_s, end_s) 4CV intervals, sorted and merged.
        spacing_ms: time between frames; the video is taken to end one spacing after its last frame.

    Returns:
        uint8 labels [N], and rows with ``start_frame``/``end_frame`` (the labelled frames are
        start_frame <= frame < end_frame) and ``status`` kept, clipped (part of the interval lies outside the
        frames, which is stated in ``note``) or excluded (no frame inside the interval).
    """
    labels = np.zeros(len(timestamps_ms), np.uint8)
    rows = []
    if len(timestamps_ms):
        first_ms = float(timestamps_ms[0])
        end_ms = float(timestamps_ms[-1]) + spacing_ms
    for number, (start_s, end_s) in enumerate(intervals):
        start_frame = int(np.searchsorted(timestamps_ms, start_s * 1000, side="left"))
        end_frame = int(np.searchsorted(timestamps_ms, end_s * 1000, side="left"))
        row = {"interval": f"4CV-{number}", "start_s": start_s, "end_s": end_s, "start_frame": start_frame,
               "end_frame": end_frame, "status": "kept", "note": ""}
        rows.append(row)
        if not len(timestamps_ms):
            row.update(status="excluded", note="the frame store has no frames")
            continue
        if end_s * 1000 <= first_ms or start_s * 1000 >= end_ms:
            row.update(status="excluded", note=(
                f"entirely outside the video, whose frames span {first_ms / 1000:.3f}-{end_ms / 1000:.3f} s"))
            continue
        if end_frame == start_frame:
            row.update(status="excluded", note=(
                f"contains no frame time; the interval is shorter than the frame spacing of {spacing_ms:.1f} ms"))
            continue
        labels[start_frame:end_frame] = 1
        # Half a frame of slack keeps an interval that ends at the reported video end from counting as clipped.
        slack_ms = spacing_ms / 2
        notes = []
        if start_s * 1000 < first_ms - slack_ms:
            notes.append(f"starts {first_ms / 1000 - start_s:.3f} s before the first frame")
        if end_s * 1000 > end_ms + slack_ms:
            notes.append(f"ends {end_s - end_ms / 1000:.3f} s after the video end at {end_ms / 1000:.3f} s")
        if notes:
            row.update(status="clipped", note="; ".join(notes) + f"; labelled frames {start_frame}-{end_frame - 1}")
    return labels, rows


def build_labels(annotation: str | Path, store: str | Path, labels_path: str | Path, intervals_path: str | Path,
                 positive_values: list[str] | tuple[str, ...] = (), empty_project: str = "exclude") -> dict:
    """Write the per-frame label table and the interval table of one video; return counts for the log.

    Raises:
        ValueError: the project has no segments and ``empty_project`` is "exclude" (such a video should have been
            excluded by the manifest), or the store's timestamps do not increase.
        echoflow.via.AnnotationError: the annotation is not a valid VIA 3 project.
    """
    project = read_project(annotation, positive_values)
    if not project.segments and empty_project != "background":
        raise ValueError(
            f"{annotation}: the project has no segments and annotations.empty_project is {empty_project!r}. "
            "Set annotations.empty_project to 'background' to label every frame as background, or annotate it.")
    timestamps_ms, attrs = read_timestamps(store)
    if len(timestamps_ms) > 1 and not np.all(np.diff(timestamps_ms) > 0):
        raise ValueError(f"{store}: timestamps_ms do not increase; rebuild the frame store.")
    spacing_ms = frame_spacing_ms(timestamps_ms, float(attrs.get("fps", float("nan"))))
    labels, rows = label_frames(timestamps_ms, project.intervals, spacing_ms)
    if attrs.get("status") == "excluded":
        for row in rows:
            row.update(status="excluded", note=f"video excluded: {attrs.get('reason', '')}")

    frame_table = pd.DataFrame({"frame": np.arange(len(labels)), "timestamp_ms": timestamps_ms, "label": labels},
                               columns=LABEL_COLUMNS)
    interval_table = pd.DataFrame(rows, columns=INTERVAL_COLUMNS)
    with atomic_output(intervals_path) as temporary:
        interval_table.to_csv(temporary, sep="\t", index=False)
    with atomic_output(labels_path) as temporary:
        frame_table.to_csv(temporary, sep="\t", index=False)
    counts = interval_table["status"].value_counts().to_dict()
    for row in rows:
        if row["status"] != "kept":
            log.warning("%s: interval %s (%.3f-%.3f s) %s: %s", annotation, row["interval"], row["start_s"],
                        row["end_s"], row["status"], row["note"])
    return {"frames": len(labels), "frames_4cv": int(labels.sum()), "intervals": counts}

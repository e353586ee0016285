"""Turn per-frame 4CV probabilities of whole videos into predicted intervals and score them against annotations."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pandas as pd

from echoflow import via
from echoflow.metrics import softmax_positive

log = logging.getLogger("echoflow.timeline")

Interval = tuple[float, float]
# Interval statuses in labels/{video_id}.intervals.tsv that are part of the ground truth.
ANNOTATED_STATUSES = ("kept", "clipped")


@dataclass
class TimelineSettings:
    """Smoothing, threshold and matching settings of evaluation.timeline."""

    smooth_s: float = 1.0
    threshold: float = 0.5
    min_interval_s: float = 1.0
    min_iou: float = 0.3

    @classmethod
    def from_config(cls, section: dict) -> "TimelineSettings":
        return cls(**{key: section[key] for key in ("smooth_s", "threshold", "min_interval_s", "min_iou")
                      if key in section})


@dataclass
class VideoTimeline:
    """Per-frame trace and intervals of one video."""

    video_id: str
    time_s: np.ndarray
    probability: np.ndarray
    smoothed: np.ndarray
    labels: np.ndarray | None
    predicted: list[Interval]
    annotated: list[Interval]
    scores: dict = field(default_factory=dict)


def window_indices(frame: int, frames_per_clip: int, stride: int) -> np.ndarray:
    """Return the K stored-frame indices of the window that ends at ``frame``, clamped at the first frame."""
    offsets = (np.arange(frames_per_clip) - (frames_per_clip - 1)) * stride
    return np.maximum(frame + offsets, 0)


def sliding_probabilities(forward: Callable[[np.ndarray], np.ndarray], frames: h5py.Dataset | np.ndarray,
                          frames_per_clip: int, stride: int, batch_size: int = 16) -> np.ndarray:
    """Return the 4CV probability of every stored frame, from the window of K frames ending at that frame.

    Windows at the start of a video repeat the first frame, so every frame gets a probability.

    Args:
        forward: maps float32 clips [B, 1, K, H, W] in [0, 1] to logits [B, 2].
        frames: uint8 frames [N, H, W].
    """
    count = len(frames)
    probabilities = np.empty(count, dtype=np.float64)
    reach = (frames_per_clip - 1) * stride
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        # Read the frames this batch needs once, including the history of its first window.
        first = max(0, start - reach)
        block = np.asarray(frames[first:stop])
        indices = np.stack([window_indices(frame, frames_per_clip, stride) for frame in range(start, stop)]) - first
        clips = block[indices].astype(np.float32)[:, None] / 255.0
        probabilities[start:stop] = softmax_positive(np.asarray(forward(clips), dtype=np.float64))
    return probabilities


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Return the centred moving average over ``window`` samples; the edges average the samples available."""
    if window <= 1 or values.size == 0:
        return values.astype(np.float64)
    kernel = np.ones(window)
    sums = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones_like(values, dtype=np.float64), kernel, mode="same")
    return sums / counts


def frame_duration_s(time_s: np.ndarray, fallback_fps: float | None = None) -> float:
    """Return the typical time between stored frames in seconds."""
    if time_s.size >= 2:
        return float(np.median(np.diff(time_s)))
    if fallback_fps:
        return 1.0 / fallback_fps
    return 0.0


def threshold_intervals(smoothed: np.ndarray, time_s: np.ndarray, threshold: float, min_interval_s: float,
                        frame_s: float) -> list[Interval]:
    """Return the runs of frames with ``smoothed >= threshold`` as (start_s, end_s), dropping short ones.

    A run of frames a..b spans from the timestamp of frame a to the timestamp of frame b plus one frame
    duration, so one frame alone lasts one frame duration.
    """
    above = np.concatenate([[False], smoothed >= threshold, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    intervals = []
    for first, after_last in zip(edges[0::2], edges[1::2]):
        start = float(time_s[first])
        end = float(time_s[after_last - 1]) + frame_s
        if end - start >= min_interval_s:
            intervals.append((start, end))
    return intervals


def _total_length(intervals: list[Interval]) -> float:
    return sum(end - start for start, end in via.merge_intervals(intervals))


def _overlap(first: Interval, second: Interval) -> float:
    return max(0.0, min(first[1], second[1]) - max(first[0], second[0]))


def interval_iou(first: Interval, second: Interval) -> float:
    """Return intersection over union of two intervals."""
    intersection = _overlap(first, second)
    union = (first[1] - first[0]) + (second[1] - second[0]) - intersection
    return intersection / union if union > 0 else 0.0


def match_intervals(predicted: list[Interval], annotated: list[Interval], min_iou: float) -> list[tuple[int, int, float]]:
    """Pair predicted with annotated intervals one to one, highest IoU first, keeping pairs with IoU >= min_iou.

    Returns:
        (predicted index, annotated index, IoU) per pair.
    """
    candidates = [(interval_iou(p, a), i, j) for i, p in enumerate(predicted) for j, a in enumerate(annotated)]
    candidates.sort(key=lambda item: (-item[0], item[1], item[2]))
    used_predicted: set[int] = set()
    used_annotated: set[int] = set()
    pairs = []
    for iou, i, j in candidates:
        if iou < min_iou or iou <= 0:
            break
        if i in used_predicted or j in used_annotated:
            continue
        used_predicted.add(i)
        used_annotated.add(j)
        pairs.append((i, j, iou))
    return pairs


def score_intervals(predicted: list[Interval], annotated: list[Interval], min_iou: float) -> dict:
    """Compare predicted with annotated intervals of one video.

    Returns:
        ``iou``: time in both over time in either (None when both are empty); ``detection_precision`` and
        ``detection_recall``: matched share of predicted and of annotated intervals (None without any);
        ``onset_delay_s``: median of predicted start minus annotated start over matched pairs (None without
        pairs), with every delay in ``onset_delays_s``.
    """
    predicted = via.merge_intervals(predicted)
    annotated = via.merge_intervals(annotated)
    intersection = sum(_overlap(p, a) for p in predicted for a in annotated)
    union = _total_length(predicted) + _total_length(annotated) - intersection
    pairs = match_intervals(predicted, annotated, min_iou)
    delays = [predicted[i][0] - annotated[j][0] for i, j, _ in pairs]
    return {
        "iou": intersection / union if union > 0 else None,
        "n_predicted": len(predicted),
        "n_annotated": len(annotated),
        "n_matched": len(pairs),
        "detection_precision": len(pairs) / len(predicted) if predicted else None,
        "detection_recall": len(pairs) / len(annotated) if annotated else None,
        "onset_delay_s": float(np.median(delays)) if delays else None,
        "onset_delays_s": [float(delay) for delay in delays],
    }


def read_annotated_intervals(path: str | Path) -> list[Interval]:
    """Read the ground-truth 4CV intervals (status kept or clipped) of labels/{video_id}.intervals.tsv."""
    table = pd.read_csv(path, sep="\t")
    missing = {"start_s", "end_s", "status"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected the intervals table "
                         "written by the labels rule. Rerun the labels rule for this video.")
    kept = table[table["status"].isin(ANNOTATED_STATUSES)]
    return via.merge_intervals([(float(row.start_s), float(row.end_s)) for row in kept.itertuples()])


def read_frame_labels(path: str | Path, count: int) -> np.ndarray:
    """Read the per-frame labels of labels/{video_id}.tsv and check they cover ``count`` stored frames."""
    table = pd.read_csv(path, sep="\t")
    if len(table) != count:
        raise ValueError(f"{path}: {len(table)} label rows for a frame store of {count} frames; the labels are "
                         "stale. Rerun the labels rule for this video.")
    return table["label"].to_numpy(dtype=np.int8)


def video_timeline(forward: Callable[[np.ndarray], np.ndarray], video_id: str, frames_path: str | Path,
                   intervals_path: str | Path, labels_path: str | Path | None, frames_per_clip: int, stride: int,
                   settings: TimelineSettings) -> VideoTimeline:
    """Compute, smooth, threshold and score the per-frame 4CV probability of one video."""
    with h5py.File(frames_path, "r") as store:
        time_s = store["timestamps_ms"][()] / 1000.0
        started = time.perf_counter()
        probability = sliding_probabilities(forward, store["frames"], frames_per_clip, stride)
        seconds = time.perf_counter() - started
        fps = float(store.attrs.get("fps", 0) or 0)
    frame_s = frame_duration_s(time_s, fps)
    window = max(1, int(round(settings.smooth_s / frame_s))) if frame_s > 0 else 1
    smoothed = moving_average(probability, window)
    predicted = threshold_intervals(smoothed, time_s, settings.threshold, settings.min_interval_s, frame_s)
    annotated = read_annotated_intervals(intervals_path)
    labels = read_frame_labels(labels_path, len(probability)) if labels_path else None
    scores = score_intervals(predicted, annotated, settings.min_iou)
    scores.update({
        "frames": int(len(probability)),
        "duration_s": float(len(probability) * frame_s),
        "stored_fps": 1.0 / frame_s if frame_s > 0 else None,
        "smooth_frames": window,
        "inference_s": seconds,
        "frames_per_s": len(probability) / seconds if seconds > 0 else None,
    })
    if labels is not None and len(labels):
        scores["frame_accuracy"] = float(((smoothed >= settings.threshold) == (labels == 1)).mean())
    return VideoTimeline(video_id, time_s, probability, smoothed, labels, predicted, annotated, scores)


def split_videos(manifest_path: str | Path, splits_path: str | Path, split: str = "test") -> pd.DataFrame:
    """Return the manifest rows of usable videos whose participant is in ``split``."""
    manifest = pd.read_csv(manifest_path, sep="\t", dtype=str, keep_default_na=False)
    splits = pd.read_csv(splits_path, sep="\t", dtype=str, keep_default_na=False)
    participants = set(splits.loc[splits["split"] == split, "participant"])
    chosen = manifest[(manifest["status"] == "ok") & manifest["participant"].isin(participants)]
    return chosen.reset_index(drop=True)


def _replace_directory(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``, replacing an older ``target`` as late as possible."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        source.rename(target)
        shutil.rmtree(old)
    else:
        source.rename(target)


def write_timelines(forward: Callable[[np.ndarray], np.ndarray], experiment: str, videos: pd.DataFrame,
                    frames_dir: str | Path, labels_dir: str | Path, frames_per_clip: int, stride: int,
                    settings: TimelineSettings, table_path: str | Path, arrays_path: str | Path,
                    via_dir: str | Path) -> pd.DataFrame:
    """Compute the timeline of every video in ``videos`` and write the table, the traces and VIA projects.

    Args:
        videos: manifest rows (video_id, participant, video, ...) of the videos to process.
        via_dir: folder that receives one VIA 3 project {video_id}.json per video, naming the original
            video file so VIA opens the predictions beside it.
    """
    from echoflow.atomic import atomic_output

    rows = []
    arrays: dict[str, np.ndarray] = {}
    via_dir = Path(via_dir)
    via_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{via_dir.name}.partial-", dir=via_dir.parent))
    try:
        for video in videos.itertuples():
            frames_path = Path(frames_dir) / f"{video.video_id}.h5"
            with h5py.File(frames_path, "r") as store:
                status = store.attrs.get("status", "ok")
                count = store["frames"].shape[0]
            if status != "ok" or count == 0:
                log.info("%s: frame store status %s with %d frames; no timeline", video.video_id, status, count)
                continue
            timeline = video_timeline(forward, video.video_id, frames_path,
                                      Path(labels_dir) / f"{video.video_id}.intervals.tsv",
                                      Path(labels_dir) / f"{video.video_id}.tsv", frames_per_clip, stride, settings)
            video_name = os.path.basename(str(video.video))
            via.write_project(staging / f"{video.video_id}.json", video_name, timeline.predicted,
                              project_name=f"echoflow {experiment}")
            scores = timeline.scores
            log.info("%s: %d predicted, %d annotated intervals, IoU %s, %.0f frames/s", video.video_id,
                     scores["n_predicted"], scores["n_annotated"], scores["iou"], scores["frames_per_s"] or math.nan)
            rows.append({"experiment": experiment, "video_id": video.video_id, "participant": video.participant,
                         "video": video_name, "threshold": settings.threshold,
                         **{key: value for key, value in scores.items() if key != "onset_delays_s"},
                         "onset_delays_s": ",".join(f"{delay:.3f}" for delay in scores["onset_delays_s"]),
                         "predicted_intervals": _format_intervals(timeline.predicted),
                         "annotated_intervals": _format_intervals(timeline.annotated)})
            prefix = f"{video.video_id}/"
            arrays[prefix + "time_s"] = timeline.time_s
            arrays[prefix + "probability"] = timeline.probability.astype(np.float32)
            arrays[prefix + "smoothed"] = timeline.smoothed.astype(np.float32)
            if timeline.labels is not None:
                arrays[prefix + "label"] = timeline.labels
            arrays[prefix + "predicted"] = np.asarray(timeline.predicted, dtype=np.float64).reshape(-1, 2)
            arrays[prefix + "annotated"] = np.asarray(timeline.annotated, dtype=np.float64).reshape(-1, 2)
        table = pd.DataFrame(rows, columns=TIMELINE_COLUMNS)
        with atomic_output(arrays_path) as temporary:
            with open(temporary, "wb") as handle:
                np.savez_compressed(handle, **arrays)
        with atomic_output(table_path) as temporary:
            table.to_csv(temporary, sep="\t", index=False)
        _replace_directory(staging, via_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return table


TIMELINE_COLUMNS = ["experiment", "video_id", "participant", "video", "threshold", "iou", "n_predicted",
                    "n_annotated", "n_matched", "detection_precision", "detection_recall", "onset_delay_s",
                    "frames", "duration_s", "stored_fps", "smooth_frames", "inference_s", "frames_per_s",
                    "frame_accuracy", "onset_delays_s", "predicted_intervals", "annotated_intervals"]


def _format_intervals(intervals: list[Interval]) -> str:
    return ";".join(f"{start:.3f}-{end:.3f}" for start, end in intervals)


def read_traces(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Read timelines.npz into {video_id: {"time_s", "probability", "smoothed", "label", "predicted", "annotated"}}."""
    traces: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as archive:
        for key in archive.files:
            video_id, _, name = key.rpartition("/")
            traces.setdefault(video_id, {})[name] = archive[key]
    return traces

"""Sample fixed-length clips of 4CV and background frames from the frame stores into one HDF5 file per split.

A clip is ``frames_per_clip`` (K) frames taken every ``stride`` frames from a frame store, so it spans
``(K - 1) * stride + 1`` stored frames. 4CV clips come from runs of 4CV frames (the annotated intervals);
background clips come from the runs between and around them (the gaps). Each gap longer than
``max_background_s`` contributes only its central ``max_background_s``. Every clip lies entirely inside one
interval or gap, so a background clip never spans a 4CV frame.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from echoflow import __version__
from echoflow.atomic import atomic_output

CLASS_NAMES = ("background", "4CV")
SUMMARY_COLUMNS = ["split", "background", "4CV", "clips", "participants", "videos"]
BLOCK_FRAMES = 1024  # Stored frames read at once when cutting clips; bounds memory for long videos.
COMPRESSION_LEVEL = 1  # gzip level of the clips: demo sets are 3.5 times smaller than uncompressed, and decode fast.

log = logging.getLogger(__name__)


class SegmentError(ValueError):
    """A frame store or label table cannot be sampled."""


@dataclass(frozen=True)
class Sampling:
    """One named way to sample clips, as configured under ``sampling.<name>``."""

    frames_per_clip: int
    seed: int = 0
    stride: int = 1
    max_background_s: float = 6.0
    clips_per_interval: int = 3
    min_clip_frames: int | None = None
    short_intervals: str = "pad"
    balance: str = "downsample"
    sliding_window: int | None = None

    @classmethod
    def from_config(cls, settings: dict) -> "Sampling":
        """Build from a config block; a missing min_clip_frames becomes frames_per_clip."""
        sampling = cls(**settings)
        if sampling.min_clip_frames is None:
            sampling = cls(**{**settings, "min_clip_frames": sampling.frames_per_clip})
        return sampling

    @property
    def span(self) -> int:
        """Number of stored frames from a clip's first frame to its last, both included."""
        return (self.frames_per_clip - 1) * self.stride + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Clip:
    """Provenance of one clip.

    ``valid_frames`` is the number of frames read from the store. A clip cut from an interval shorter than
    its span has ``valid_frames < frames_per_clip``, and its remaining frames repeat the last valid one.
    """

    video_id: str
    participant: str
    start_frame: int
    label: int
    interval: str
    valid_frames: int


@dataclass(frozen=True)
class VideoInput:
    """A video's frame store, per-frame label table and interval table."""

    video_id: str
    participant: str
    frames_path: Path
    labels_path: Path
    intervals_path: Path | None = None


def stable_seed(*parts: str | int) -> int:
    """Return a 64-bit integer derived from ``parts`` that is the same in every Python process."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def label_runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Split per-frame labels into runs of equal value.

    Returns:
        (start_frame, end_frame, label) per run, end exclusive, in frame order.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return []
    changes = np.flatnonzero(np.diff(labels)) + 1
    bounds = [0, *changes.tolist(), int(labels.size)]
    return [(bounds[i], bounds[i + 1], int(labels[bounds[i]])) for i in range(len(bounds) - 1)]


def central_part(start: int, end: int, max_frames: int) -> tuple[int, int]:
    """Return the central ``max_frames`` frames of [start, end), or the whole range when it is shorter."""
    length = end - start
    if length <= max_frames:
        return start, end
    offset = (length - max_frames) // 2
    return start + offset, start + offset + max_frames


def window_starts(start: int, end: int, sampling: Sampling, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Choose clip windows inside [start, end).

    Returns:
        (start_frame, valid_frames) per window, sorted by start_frame. Empty when the range is shorter than
        min_clip_frames and short_intervals is "drop".
    """
    length = end - start
    if length <= 0:
        return []
    if length < sampling.min_clip_frames and sampling.short_intervals == "drop":
        return []
    if length < sampling.span:
        valid = min(sampling.frames_per_clip, len(range(start, end, sampling.stride)))
        return [(start, valid)]
    positions = length - sampling.span + 1
    if sampling.sliding_window:
        offsets = range(0, positions, sampling.sliding_window)
    else:
        count = min(sampling.clips_per_interval, positions)
        offsets = sorted(rng.choice(positions, size=count, replace=False).tolist())
    return [(start + offset, sampling.frames_per_clip) for offset in offsets]


def annotated_name(start: int, end: int, annotated: list[tuple[int, int, str]] | None, number: int) -> str:
    """Name the 4CV run [start, end) after the first annotated interval that overlaps it.

    Args:
        annotated: (start_frame, end_frame, name) of the labelled intervals, or None to name runs "4CV-<number>".
    """
    if annotated is None:
        return f"4CV-{number}"
    for first, last, name in annotated:
        if first < end and last > start:
            return name
    raise SegmentError(f"4CV frames {start}-{end - 1} lie in no kept or clipped interval of the interval table. "
                       "Rebuild the labels with the labels rule.")


def plan_video(video_id: str, participant: str, labels: np.ndarray, frame_interval_ms: float,
               sampling: Sampling, annotated: list[tuple[int, int, str]] | None = None) -> list[Clip]:
    """List the clips of one video, 4CV and background, in frame order.

    Args:
        labels: per stored frame, 1 for 4CV and 0 for background.
        frame_interval_ms: time between stored frames, which converts max_background_s to frames.
        annotated: (start_frame, end_frame exclusive, name) of the annotated intervals, which name the 4CV
            clips; None names them by the order of the 4CV runs.
    """
    rng = np.random.default_rng([sampling.seed, stable_seed(video_id)])
    max_gap_frames = max(1, int(round(sampling.max_background_s * 1000.0 / frame_interval_ms)))
    clips: list[Clip] = []
    counters = {0: 0, 1: 0}
    for start, end, label in label_runs(labels):
        if label == 1:
            name = annotated_name(start, end, annotated, counters[1])
        else:
            name = f"bg-{counters[0]}"
        counters[label] += 1
        if label == 0:
            start, end = central_part(start, end, max_gap_frames)
        for clip_start, valid in window_starts(start, end, sampling, rng):
            clips.append(Clip(video_id, participant, clip_start, label, name, valid))
    return sorted(clips, key=lambda clip: clip.start_frame)


def balance_clips(clips: list[Clip], sampling: Sampling, split: str) -> list[Clip]:
    """Apply sampling.balance: "downsample" keeps a random subset of background clips as large as the 4CV set.

    "weights" and "none" keep every clip. The order of the kept clips is unchanged.
    """
    if sampling.balance != "downsample":
        return list(clips)
    background = [i for i, clip in enumerate(clips) if clip.label == 0]
    n_4cv = len(clips) - len(background)
    if n_4cv == 0:
        log.warning("split %s has no 4CV clips, so its %d background clips are kept without downsampling",
                    split, len(background))
        return list(clips)
    if len(background) <= n_4cv:
        return list(clips)
    rng = np.random.default_rng([sampling.seed, stable_seed("balance", split)])
    kept = set(rng.choice(background, size=n_4cv, replace=False).tolist())
    return [clip for i, clip in enumerate(clips) if clip.label == 1 or i in kept]


def read_labels(path: Path, n_frames: int, frames_path: Path) -> np.ndarray:
    """Read the per-frame labels of one video and check they match its frame store."""
    table = pd.read_csv(path, sep="\t")
    if "label" not in table.columns:
        raise SegmentError(f"{path}: expected a 'label' column, found columns {list(table.columns)}. "
                           "Rebuild the labels with the labels rule.")
    labels = table["label"].to_numpy()
    if len(labels) != n_frames:
        raise SegmentError(f"{path} has {len(labels)} rows, but the frame store {frames_path} has {n_frames} "
                           "frames. Rebuild both with the frames and labels rules.")
    unknown = sorted(set(np.unique(labels).tolist()) - {0, 1})
    if unknown:
        raise SegmentError(f"{path}: labels must be 0 (background) or 1 (4CV), found {unknown}.")
    return labels.astype(np.uint8)


def read_annotated(path: Path | None) -> list[tuple[int, int, str]] | None:
    """Read (start_frame, end_frame, interval) of the kept and clipped rows of an interval table."""
    if path is None:
        return None
    table = pd.read_csv(path, sep="\t", dtype={"interval": str, "status": str}, keep_default_na=False)
    missing = {"interval", "start_frame", "end_frame", "status"} - set(table.columns)
    if missing:
        raise SegmentError(f"{path}: missing columns {sorted(missing)}. Rebuild the labels with the labels rule.")
    used = table[table["status"].isin(["kept", "clipped"])]
    return [(int(row.start_frame), int(row.end_frame), str(row.interval)) for row in used.itertuples()]


def frame_interval_ms(store: h5py.File) -> float:
    """Return the median time between stored frames, from timestamps_ms or else the fps attribute."""
    timestamps = store["timestamps_ms"][:] if "timestamps_ms" in store else np.empty(0)
    if timestamps.size >= 2:
        interval = float(np.median(np.diff(timestamps)))
        if interval > 0:
            return interval
    fps = float(store.attrs.get("fps", 0) or 0)
    if fps <= 0:
        raise SegmentError(f"{store.filename}: cannot determine the frame rate, because timestamps_ms has fewer "
                           "than two increasing values and the fps attribute is missing. Rebuild the store.")
    return 1000.0 / fps


def plan_split(videos: list[VideoInput], sampling: Sampling, split: str) -> tuple[list[Clip], tuple[int, int]]:
    """Plan the clips of every video in ``videos`` and balance them.

    Returns:
        (clips, (height, width) of the stored frames). Stores with status "excluded" are skipped.
    """
    clips: list[Clip] = []
    frame_shape: tuple[int, int] | None = None
    for video in sorted(videos, key=lambda video: video.video_id):
        with h5py.File(video.frames_path, "r") as store:
            if store.attrs.get("status", "ok") == "excluded":
                log.info("skipped %s: frame store is excluded (%s)", video.video_id, store.attrs.get("reason", ""))
                continue
            frames = store["frames"]
            shape = tuple(frames.shape[1:])
            if frame_shape is not None and shape != frame_shape:
                raise SegmentError(f"{video.frames_path}: frames are {shape[1]}x{shape[0]}, but earlier stores "
                                   f"are {frame_shape[1]}x{frame_shape[0]}. Rebuild all frame stores.")
            frame_shape = shape
            labels = read_labels(video.labels_path, frames.shape[0], video.frames_path)
            planned = plan_video(video.video_id, video.participant, labels, frame_interval_ms(store), sampling,
                                 read_annotated(video.intervals_path))
        log.info("%s: %d 4CV and %d background clips", video.video_id,
                 sum(clip.label for clip in planned), sum(1 - clip.label for clip in planned))
        clips += planned
    return balance_clips(clips, sampling, split), frame_shape


def cut_clips(frames: h5py.Dataset, clips: list[Clip], sampling: Sampling):
    """Yield (position in ``clips``, clip array [K, H, W]) for clips of one store, sorted by start_frame."""
    order = sorted(range(len(clips)), key=lambda i: clips[i].start_frame)
    steps = np.arange(sampling.frames_per_clip) * sampling.stride
    i = 0
    while i < len(order):
        low = clips[order[i]].start_frame
        group = [order[i]]
        i += 1
        while i < len(order) and clips[order[i]].start_frame + sampling.span <= low + BLOCK_FRAMES:
            group.append(order[i])
            i += 1
        high = min(frames.shape[0], max(clips[j].start_frame for j in group) + sampling.span)
        block = frames[low:high]
        for j in group:
            clip = clips[j]
            indices = clip.start_frame - low + steps[: clip.valid_frames]
            data = block[indices]
            if clip.valid_frames < sampling.frames_per_clip:
                padding = np.repeat(data[-1:], sampling.frames_per_clip - clip.valid_frames, axis=0)
                data = np.concatenate([data, padding])
            yield j, data


def write_segment_set(path: str | Path, clips: list[Clip], videos: list[VideoInput], frame_shape: tuple[int, int],
                      sampling: Sampling, sampling_name: str, split: str) -> None:
    """Write the clips and their provenance to an HDF5 file; the same inputs give the same bytes."""
    n = len(clips)
    k = sampling.frames_per_clip
    height, width = frame_shape
    frames_paths = {video.video_id: video.frames_path for video in videos}
    counts = np.bincount([clip.label for clip in clips], minlength=2).astype(np.int64)
    text = h5py.string_dtype("utf-8")
    with atomic_output(path) as temporary, h5py.File(temporary, "w", track_order=True) as output:
        output.attrs["sampling"] = sampling.to_json()
        output.attrs["sampling_name"] = sampling_name
        output.attrs["split"] = split
        output.attrs["balance"] = sampling.balance
        output.attrs["frames_per_clip"] = k
        output.attrs["stride"] = sampling.stride
        output.attrs["class_names"] = json.dumps(CLASS_NAMES)
        output.attrs["class_counts"] = counts
        output.attrs["echoflow_version"] = __version__
        storage = {"chunks": (1, k, height, width), "compression": "gzip",
                   "compression_opts": COMPRESSION_LEVEL} if n else {}
        data = output.create_dataset("clips", shape=(n, k, height, width), dtype=np.uint8, track_times=False,
                                     **storage)
        columns = {
            "labels": (np.array([clip.label for clip in clips], dtype=np.uint8), None),
            "video_id": (np.array([clip.video_id for clip in clips], dtype=object), text),
            "participant": (np.array([clip.participant for clip in clips], dtype=object), text),
            "start_frame": (np.array([clip.start_frame for clip in clips], dtype=np.int64), None),
            "interval": (np.array([clip.interval for clip in clips], dtype=object), text),
            "valid_frames": (np.array([clip.valid_frames for clip in clips], dtype=np.int64), None),
        }
        for name, (values, dtype) in columns.items():
            output.create_dataset(name, data=values, dtype=dtype or values.dtype, track_times=False)

        by_video: dict[str, list[int]] = {}
        for position, clip in enumerate(clips):
            by_video.setdefault(clip.video_id, []).append(position)
        for video_id, positions in by_video.items():
            with h5py.File(frames_paths[video_id], "r") as store:
                video_clips = [clips[p] for p in positions]
                for index, array in cut_clips(store["frames"], video_clips, sampling):
                    data[positions[index]] = array


def build_segment_set(videos: list[VideoInput], split_participants: set[str], sampling: Sampling,
                      sampling_name: str, split: str, output: str | Path,
                      frame_shape: tuple[int, int] | None = None) -> dict[str, int]:
    """Sample and write the clips of the videos whose participant is in ``split_participants``.

    Args:
        frame_shape: (height, width) of the clips when no chosen store has frames, as in an empty split.

    Returns:
        Counts of "background" and "4CV" clips.
    """
    chosen = [video for video in videos if video.participant in split_participants]
    clips, store_shape = plan_split(chosen, sampling, split)
    frame_shape = store_shape or frame_shape
    if frame_shape is None:
        raise SegmentError(f"cannot write {output}: split {split} has no frame store with frames, and no frame "
                           "size was given. Pass the preprocess.size of the frame stores as frame_shape.")
    write_segment_set(output, clips, chosen, tuple(frame_shape), sampling, sampling_name, split)
    n_4cv = sum(clip.label for clip in clips)
    return {"background": len(clips) - n_4cv, "4CV": n_4cv}


def summarize(paths: dict[str, str | Path]) -> pd.DataFrame:
    """Count clips per class, participants and videos in each segment set.

    Args:
        paths: split name -> segment set file.

    Returns:
        Table with SUMMARY_COLUMNS, one row per split in the order of ``paths``.
    """
    rows = []
    for split, path in paths.items():
        with h5py.File(path, "r") as segment_set:
            labels = segment_set["labels"][:]
            participants = set(segment_set["participant"].asstr()[:])
            video_ids = set(segment_set["video_id"].asstr()[:])
        rows.append({"split": split, "background": int((labels == 0).sum()), "4CV": int((labels == 1).sum()),
                     "clips": int(labels.size), "participants": len(participants), "videos": len(video_ids)})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)

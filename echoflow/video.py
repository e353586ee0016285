"""Decode the luma (grayscale) plane of a video with PyAV, with presentation times and clear errors."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

# Pixel formats whose first plane is 8-bit luma, so it is the grayscale picture without any conversion.
LUMA_PLANE_FORMATS = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv411p",
                      "yuv440p", "yuvj440p", "nv12", "nv21", "gray"}
FULL_RANGE_FORMATS = {"yuvj420p", "yuvj422p", "yuvj444p", "yuvj440p", "gray"}
JPEG_COLOR_RANGE = 2  # AVCOL_RANGE_JPEG: luma uses 0-255 instead of 16-235.

# A header frame count may exceed the decoded count by a frame or two because of edit lists or dropped leading
# B-frames. More missing frames than this mean that the stream ended early.
MISSING_FRAMES_TOLERANCE = 2
MISSING_FRAMES_FRACTION = 0.01

BAD_VIDEO_HINT = ("Re-copy or re-export the video, or set preprocess.on_bad_video: exclude to record it as "
                  "excluded and go on.")


class VideoError(ValueError):
    """A video that cannot be used: unreadable, truncated, without frames or frame rate, or too small."""

    def __init__(self, message: str, info: "VideoInfo | None" = None, frames_decoded: int = 0):
        super().__init__(message)
        self.info = info
        self.frames_decoded = frames_decoded


@dataclass
class VideoInfo:
    """Container metadata of a video, read before decoding."""

    path: str
    source_size: int
    source_mtime: float
    container_format: str = ""
    codec: str = ""
    fps: float = float("nan")
    width: int = 0
    height: int = 0
    frame_count_header: int = 0
    duration_s: float = float("nan")
    start_time_s: float = float("nan")

    def as_attrs(self) -> dict:
        """Return the fields as HDF5 attribute values."""
        return asdict(self)


@dataclass
class DecodeStats:
    """Counts from one decoding pass; ``frames_decoded`` includes frames skipped by a stride."""

    info: VideoInfo | None = None  # Set when the video has been opened.
    frames_decoded: int = 0
    corrupt_frames: int = 0
    pixel_formats: set[str] = field(default_factory=set)


def _file_info(path: Path) -> VideoInfo:
    try:
        stat = os.stat(path)
    except OSError as error:
        raise VideoError(f"{path}: cannot read the video ({error.strerror}). Check that the file exists.") from None
    return VideoInfo(path=str(path), source_size=stat.st_size, source_mtime=stat.st_mtime)


def open_video(path: str | Path, threads: int = 1):
    """Open ``path`` and return ``(container, stream, info)`` for its first video stream.

    Raises:
        VideoError: the file is not a readable video, has no video stream, or the container gives no frame rate.
    """
    path = Path(path)
    info = _file_info(path)
    if info.source_size == 0:
        raise VideoError(f"{path}: the file is empty (0 bytes). {BAD_VIDEO_HINT}", info)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise VideoError(
            f"{path}: not a readable video ({error}); found {info.source_size} bytes that FFmpeg cannot parse. "
            f"An MP4 copied only in part loses its index (moov atom) and cannot be opened. {BAD_VIDEO_HINT}",
            info) from None
    info.container_format = container.format.name
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream (found {len(container.streams)} other streams). "
                         f"{BAD_VIDEO_HINT}", info)
    stream = container.streams.video[0]
    info.codec = stream.codec_context.name
    info.width = stream.codec_context.width
    info.height = stream.codec_context.height
    info.frame_count_header = int(stream.frames or 0)
    if stream.duration is not None and stream.time_base is not None:
        info.duration_s = float(stream.duration * stream.time_base)
    if stream.start_time is not None and stream.time_base is not None:
        info.start_time_s = float(stream.start_time * stream.time_base)
    if not stream.average_rate:
        # Read the stream before closing: PyAV 18 crashes on stream attributes of a closed container.
        guessed_rate = stream.guessed_rate
        container.close()
        raise VideoError(
            f"{path}: the container gives no frame rate (average rate missing; the guessed rate would be "
            f"{guessed_rate}). Remux the video into MP4, which records the frame rate, for "
            f"example with 'ffmpeg -i IN -c copy OUT.mp4'. {BAD_VIDEO_HINT}", info)
    info.fps = float(stream.average_rate)
    stream.thread_type = "AUTO"
    stream.thread_count = max(1, int(threads))
    return container, stream, info


def luma(frame: av.VideoFrame) -> tuple[np.ndarray, bool]:
    """Return the frame's grayscale picture and whether it uses the full 0-255 range.

    For planar YUV and gray formats this is a view of the first plane (no copy); other formats are converted.
    """
    name = frame.format.name
    if name in LUMA_PLANE_FORMATS:
        plane = frame.planes[0]
        # Rows are padded to line_size bytes; the view drops the padding.
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        full_range = name in FULL_RANGE_FORMATS or frame.color_range == JPEG_COLOR_RANGE
        return rows[:, :plane.width], full_range
    return frame.to_ndarray(format="gray"), True


def _describe_position(path: Path, stats: DecodeStats, last_time_s: float | None) -> str:
    if stats.frames_decoded == 0:
        return f"{path}: decoding failed before the first frame"
    return (f"{path}: decoding failed after {stats.frames_decoded} frames "
            f"(last frame decoded at {last_time_s:.3f} s)")


def iter_frames(path: str | Path, threads: int = 1,
                stats: DecodeStats | None = None) -> Iterator[tuple[int, float, av.VideoFrame]]:
    """Decode every frame of ``path`` and yield ``(index, timestamp_ms, frame)``.

    ``timestamp_ms`` is the presentation time, pts * time_base, in milliseconds. ``stats`` is filled in as
    decoding goes on.

    Raises:
        VideoError: unreadable file, decoding error (truncated or corrupt stream), no frame decoded, fewer frames
            than the header announces, a frame without a presentation time, or times that do not increase.
    """
    path = Path(path)
    stats = stats if stats is not None else DecodeStats()
    container, stream, info = open_video(path, threads)
    stats.info = info
    last_ms: float | None = None
    with container:
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    raise VideoError(
                        f"{path}: frame {stats.frames_decoded} has no presentation time; the stream is probably a "
                        f"raw H.264 file. Remux it into MP4. {BAD_VIDEO_HINT}", info, stats.frames_decoded)
                timestamp_ms = float(frame.pts * Fraction(frame.time_base) * 1000)
                if last_ms is not None and timestamp_ms <= last_ms:
                    raise VideoError(
                        f"{path}: presentation times do not increase at frame {stats.frames_decoded} "
                        f"({timestamp_ms:.3f} ms after {last_ms:.3f} ms). Remux the video with "
                        f"'ffmpeg -i IN -c copy OUT.mp4'. {BAD_VIDEO_HINT}", info, stats.frames_decoded)
                stats.corrupt_frames += int(frame.is_corrupt)
                stats.pixel_formats.add(frame.format.name)
                yield stats.frames_decoded, timestamp_ms, frame
                stats.frames_decoded += 1
                last_ms = timestamp_ms
        except av.error.FFmpegError as error:
            last_s = None if last_ms is None else last_ms / 1000
            raise VideoError(
                f"{_describe_position(path, stats, last_s)}: {error}. The file is probably truncated or corrupt; "
                f"the header announces {info.frame_count_header} frames. {BAD_VIDEO_HINT}",
                info, stats.frames_decoded) from None
    _check_complete(path, info, stats, last_ms)


def _check_complete(path: Path, info: VideoInfo, stats: DecodeStats, last_ms: float | None) -> None:
    if stats.frames_decoded == 0:
        raise VideoError(
            f"{path}: no frame could be decoded (the header announces {info.frame_count_header} frames, "
            f"{info.width}x{info.height} {info.codec}). The stream may lack its keyframes. {BAD_VIDEO_HINT}", info)
    expected = info.frame_count_header
    missing = expected - stats.frames_decoded
    if expected and missing > max(MISSING_FRAMES_TOLERANCE, MISSING_FRAMES_FRACTION * expected):
        raise VideoError(
            f"{path}: the stream ended after {stats.frames_decoded} of the {expected} frames the header announces "
            f"(last frame decoded at {last_ms / 1000:.3f} s); the file is probably truncated. {BAD_VIDEO_HINT}",
            info, stats.frames_decoded)


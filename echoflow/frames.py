"""Build per-video HDF5 frame stores: grayscale, cropped to the ultrasound box, resized and masked.

A store ``results/frames/{video_id}.h5`` contains

- ``frames`` uint8 [N, H, W]: the kept frames (every ``stride``-th decoded frame), pixels outside the
  sector mask set to 0;
- ``timestamps_ms`` float64 [N]: the decoder's presentation time of each kept frame;
- ``mask`` uint8 [H, W]: 1 inside the sector, at the stored size;

and attributes that describe the source video, the settings and the outcome (``status``, ``reason``).
"""

from __future__ import annotations

import json
import logging
import queue
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import cv2
import h5py
import numpy as np
from isal import isal_zlib

import echoflow
from echoflow.atomic import atomic_output
from echoflow.video import DecodeStats, VideoError, VideoInfo, iter_frames, luma

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Frames use HDF5's standard deflate (gzip) filter, so any HDF5 tool reads them. ISA-L compresses the chunks,
# which are then written directly. On the benchmark's 128x128 frames ISA-L level 1 took 0.033 ms per frame
# for 0.238 of the raw size, and zlib level 1 took 0.130 ms for 0.259.
COMPRESSION = "gzip"
COMPRESSION_LEVEL = 1
FRAMES_PER_CHUNK = 1  # One frame per chunk, so reading a clip decompresses only the frames it needs.
WRITE_BATCH = 64  # Frames collected before one write to HDF5.

# Auto crop and auto mask: a pixel belongs to the ultrasound picture when its value spans more than this many
# grey levels (of 255) over the video. Compression noise on static screen content stays below it.
CHANGE_THRESHOLD = 12
# Auto crop looks at every CROP_SCAN_STEP-th pixel in each direction, which keeps the first pass cheap.
CROP_SCAN_STEP = 4

# Expand limited-range luma (16-235) to 0-255, so stored values match a full-range grayscale conversion.
LIMITED_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255.0 / 219.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Settings:
    """The ``preprocess`` configuration, with defaults filled in."""

    crop: dict | str = "auto"
    size: tuple[int, int] = (128, 128)
    mask: str | list = "auto"
    stride: int = 1
    on_bad_video: str = "fail"

    @classmethod
    def from_config(cls, preprocess: dict) -> "Settings":
        """Read the ``preprocess`` section of the configuration."""
        size = preprocess.get("size", [128, 128])
        return cls(crop=preprocess.get("crop", "auto"), size=(int(size[0]), int(size[1])),
                   mask=preprocess.get("mask", "auto"), stride=int(preprocess.get("stride", 1)),
                   on_bad_video=preprocess.get("on_bad_video", "fail"))

    def as_json(self) -> str:
        """Return the settings as the JSON string stored in the ``preprocess`` attribute."""
        return json.dumps({"crop": self.crop, "size": list(self.size), "mask": self.mask, "stride": self.stride,
                           "on_bad_video": self.on_bad_video}, sort_keys=True)


@dataclass(frozen=True)
class Box:
    """A crop box in source pixels."""

    x: int
    y: int
    width: int
    height: int

    def fits(self, width: int, height: int) -> bool:
        """Return whether the box lies inside a width x height picture."""
        return self.x + self.width <= width and self.y + self.height <= height


# Crop box and mask.

def find_crop_box(path: str | Path, threads: int = 1, stats: DecodeStats | None = None) -> Box:
    """Return the bounding box of the largest region of pixels that change over the video.

    Decodes the whole video once and follows the minimum and maximum of every CROP_SCAN_STEP-th pixel.
    """
    low = high = None
    for _, _, frame in iter_frames(path, threads, stats):
        picture, _ = luma(frame)
        sample = picture[::CROP_SCAN_STEP, ::CROP_SCAN_STEP]
        if low is None:
            low, high = sample.copy(), sample.copy()
        else:
            np.minimum(low, sample, out=low)
            np.maximum(high, sample, out=high)
    region = largest_region(high.astype(np.int16) - low > CHANGE_THRESHOLD)
    if not region.any():
        raise VideoError(f"{path}: preprocess.crop is 'auto' but no pixel changes over the video, so there is no "
                         "ultrasound picture to find. Set preprocess.crop to {x, y, width, height}.")
    rows = np.flatnonzero(region.any(axis=1))
    columns = np.flatnonzero(region.any(axis=0))
    height, width = picture.shape
    x0 = max(0, columns[0] * CROP_SCAN_STEP - CROP_SCAN_STEP)
    y0 = max(0, rows[0] * CROP_SCAN_STEP - CROP_SCAN_STEP)
    x1 = min(width, (columns[-1] + 2) * CROP_SCAN_STEP)
    y1 = min(height, (rows[-1] + 2) * CROP_SCAN_STEP)
    return Box(int(x0), int(y0), int(x1 - x0), int(y1 - y0))


def largest_region(binary: np.ndarray) -> np.ndarray:
    """Return the largest 8-connected region of a bool image after removing specks (morphological opening)."""
    opened = cv2.morphologyEx(binary.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if count <= 1:
        return np.zeros(binary.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def mask_from_change(change: np.ndarray) -> np.ndarray:
    """Return the sector mask: the convex hull of the largest region whose value range exceeds CHANGE_THRESHOLD.

    The hull fills dark parts of the sector that stay still and drops changing text outside the sector. When
    nothing changes, every pixel is kept.
    """
    region = largest_region(change > CHANGE_THRESHOLD)
    if not region.any():
        log.warning("no pixel changes inside the crop box; the mask keeps every pixel")
        return np.ones(change.shape, np.uint8)
    points = cv2.findNonZero(region.astype(np.uint8))
    mask = np.zeros(change.shape, np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(points), 1)
    return mask


def polygon_mask(polygon: list, box: Box, size: tuple[int, int]) -> np.ndarray:
    """Rasterise a polygon given in source pixels at the stored size of a frame cropped to ``box``.

    The polygon is drawn at the crop box's resolution and reduced with area averaging. A stored pixel is inside
    when at least half of it is.
    """
    vertices = np.array(polygon, np.float64) - (box.x, box.y)
    shift = 4  # fillPoly takes fixed-point vertices with this many fractional bits.
    canvas = np.zeros((box.height, box.width), np.uint8)
    cv2.fillPoly(canvas, [np.round(vertices * (1 << shift)).astype(np.int32)], 255, cv2.LINE_8, shift)
    reduced = cv2.resize(canvas, size, interpolation=cv2.INTER_AREA)
    return (reduced >= 128).astype(np.uint8)


# Decoding into small frames.

def halvings(box: Box, size: tuple[int, int]) -> int:
    """Return how often a crop can be halved while staying at least twice ``size`` in both directions."""
    count = 0
    while box.width >> (count + 1) >= 2 * size[0] and box.height >> (count + 1) >= 2 * size[1]:
        count += 1
    return count


def effective_box(box: Box, size: tuple[int, int]) -> Box:
    """Return ``box`` trimmed at the right and bottom so that it can be halved exactly :func:`halvings` times.

    The trim removes at most 2**halvings - 1 pixels per side (none for the default 1130 x 810 crop).
    """
    multiple = 1 << halvings(box, size)
    return Box(box.x, box.y, box.width - box.width % multiple, box.height - box.height % multiple)


def reduce_frame(picture: np.ndarray, full_range: bool, box: Box, size: tuple[int, int]) -> np.ndarray:
    """Crop a grayscale picture to ``box``, resize it to ``size`` (width, height) and expand it to 0-255.

    The crop is halved by area averaging while it stays at least twice ``size``, resized bilinearly to twice
    ``size`` and halved once more. On 1130 x 810 crops reduced to 128 x 128 this took 0.21 ms per frame, against
    1.8 ms for one area resize, and differed from that by 0.25 grey levels on average (99th percentile 3).
    ``box`` must be an :func:`effective_box`, so that each halving is exact.
    """
    reduced = picture[box.y:box.y + box.height, box.x:box.x + box.width]
    for _ in range(halvings(box, size)):
        reduced = cv2.resize(reduced, (reduced.shape[1] // 2, reduced.shape[0] // 2), interpolation=cv2.INTER_AREA)
    width, height = size
    double = cv2.resize(reduced, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(double, size, interpolation=cv2.INTER_AREA)
    return small if full_range else cv2.LUT(small, LIMITED_TO_FULL)


def _check_box(path: Path, box: Box, width: int, height: int, settings: Settings) -> None:
    if not box.fits(width, height):
        raise VideoError(
            f"{path}: frame size {width}x{height} is smaller than the crop box x={box.x}, y={box.y}, "
            f"width={box.width}, height={box.height} (preprocess.crop {settings.crop}). Set preprocess.crop to a "
            "box inside the frame or to 'auto', or set preprocess.on_bad_video: exclude to skip this video.")


def _produce(items: Iterator, sink: queue.Queue, stop: threading.Event) -> threading.Thread:
    """Start a thread that puts each item of ``items`` into ``sink``, then DONE.

    An exception is put into the sink in place of an item. Once ``stop`` is set, the thread ends within 0.1 s.
    """
    def put(item) -> bool:
        while not stop.is_set():
            try:
                sink.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(DONE)
        except BaseException as error:  # Handed to the consumer, which raises it.
            put(error)

    thread = threading.Thread(target=run, name="decode", daemon=True)
    thread.start()
    return thread


DONE = object()
# Frames handed from the decoding thread to the writer at a time. In benchmark runs, handing over single frames
# cost about 3 % of the stage's speed in thread switches. With batches of 16, the queue keeps at most 64 frames.
HANDOVER_BATCH = 16


def reduced_frames(path: Path, box: Box, settings: Settings, threads: int, stats: DecodeStats,
                   mask: np.ndarray | None = None) -> Iterator[tuple[float, np.ndarray, bytes | None]]:
    """Yield ``(timestamp_ms, small frame, chunk)`` for every kept frame, cropped to ``box`` as trimmed by
    :func:`effective_box`.

    ``chunk`` is the masked frame compressed for the store, or None while the mask is unknown (``mask`` None).
    A separate thread decodes, crops, resizes, masks and compresses, while the caller writes. Decoding itself
    runs in FFmpeg's frame threads, which go on with the next frames while this thread reduces one.
    """
    checked_shapes: set[tuple[int, int]] = set()
    effective = effective_box(box, settings.size)

    def reduce(timestamp_ms: float, frame) -> tuple[float, np.ndarray, bytes | None]:
        picture, full_range = luma(frame)
        if picture.shape not in checked_shapes:
            _check_box(path, box, picture.shape[1], picture.shape[0], settings)
            checked_shapes.add(picture.shape)
        small = reduce_frame(picture, full_range, effective, settings.size)
        return timestamp_ms, small, None if mask is None else compress_frame(small * mask)

    def batches() -> Iterator[list]:
        batch = []
        for index, timestamp_ms, frame in iter_frames(path, threads, stats):
            if index % settings.stride:
                continue
            batch.append(reduce(timestamp_ms, frame))
            if len(batch) == HANDOVER_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    stop = threading.Event()
    reduced: queue.Queue = queue.Queue(maxsize=4)
    worker = _produce(batches(), reduced, stop)
    try:
        while (item := reduced.get()) is not DONE:
            if isinstance(item, BaseException):
                raise item
            yield from item
    finally:
        # Stop the worker if the consumer stops early; its puts time out and check the event.
        stop.set()
        worker.join()


# Writing the store.

def _create_datasets(store: h5py.File, size: tuple[int, int]) -> tuple[h5py.Dataset, h5py.Dataset]:
    width, height = size
    frames = store.create_dataset("frames", shape=(0, height, width), maxshape=(None, height, width),
                                  dtype=np.uint8, chunks=(FRAMES_PER_CHUNK, height, width),
                                  compression=COMPRESSION, compression_opts=COMPRESSION_LEVEL, shuffle=False)
    timestamps = store.create_dataset("timestamps_ms", shape=(0,), maxshape=(None,), dtype=np.float64,
                                      chunks=(4096,))
    return frames, timestamps


def compress_frame(frame: np.ndarray) -> bytes:
    """Return one frame as a chunk of the ``frames`` dataset: a zlib stream, as HDF5's deflate filter reads it."""
    return isal_zlib.compress(np.ascontiguousarray(frame), COMPRESSION_LEVEL)


class _ChunkWriter:
    """Writer that appends compressed one-frame chunks to the ``frames`` dataset, WRITE_BATCH at a time."""

    def __init__(self, dataset: h5py.Dataset):
        self.dataset = dataset
        self.pending: list[bytes] = []

    def add(self, chunk: bytes) -> None:
        self.pending.append(chunk)
        if len(self.pending) == WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        start = self.dataset.shape[0]
        self.dataset.resize(start + len(self.pending), axis=0)
        for index, chunk in enumerate(self.pending, start):
            self.dataset.id.write_direct_chunk((index, 0, 0), chunk)
        self.pending.clear()


class _Spill:
    """Unmasked frames kept in a temporary file until the auto mask is known."""

    def __init__(self, folder: Path, size: tuple[int, int]):
        self.file = tempfile.TemporaryFile(dir=folder, prefix=".frames-spill-")
        self.frame_bytes = size[0] * size[1]
        self.shape = (size[1], size[0])
        self.count = 0

    def write(self, block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block).tobytes())
        self.count += len(block)

    def blocks(self, frames_per_block: int) -> Iterator[np.ndarray]:
        self.file.seek(0)
        for start in range(0, self.count, frames_per_block):
            count = min(frames_per_block, self.count - start)
            data = self.file.read(count * self.frame_bytes)
            yield np.frombuffer(data, np.uint8).reshape(count, *self.shape)

    def close(self) -> None:
        self.file.close()


def write_frames(store: h5py.File, path: Path, settings: Settings, threads: int) -> dict:
    """Decode ``path`` into the datasets of an open store and return attributes describing the result."""
    started = time.perf_counter()
    stats = DecodeStats()
    if settings.crop == "auto":
        crop_pass = DecodeStats()
        try:
            requested = find_crop_box(path, threads, crop_pass)
        except VideoError as error:
            error.info = error.info or crop_pass.info
            raise
        log.info("auto crop box: %s", requested)
    else:
        requested = Box(**{key: int(settings.crop[key]) for key in ("x", "y", "width", "height")})
    box = effective_box(requested, settings.size)

    width, height = settings.size
    if settings.mask == "none":
        mask = np.ones((height, width), np.uint8)
    elif settings.mask == "auto":
        mask = None
    else:
        mask = polygon_mask(settings.mask, box, settings.size)
    frames, timestamps = _create_datasets(store, settings.size)
    writer = _ChunkWriter(frames)
    spill = _Spill(Path(store.filename).parent, settings.size) if mask is None else None
    low = np.full((height, width), 255, np.uint8)
    high = np.zeros((height, width), np.uint8)
    batch: list[np.ndarray] = []
    times: list[float] = []
    try:
        for timestamp_ms, small, chunk in reduced_frames(path, requested, settings, threads, stats, mask):
            times.append(timestamp_ms)
            if chunk is not None:
                writer.add(chunk)
                continue
            batch.append(small)
            if len(batch) == WRITE_BATCH:
                _spill_batch(batch, spill, low, high)
        if spill is not None:
            _spill_batch(batch, spill, low, high)
            mask = mask_from_change(high.astype(np.int16) - low)
            # Decoding has ended, so all the job's threads compress, because ISA-L releases the GIL.
            with ThreadPoolExecutor(max(1, threads)) as pool:
                for chunks in pool.map(lambda block: [compress_frame(frame) for frame in block * mask],
                                       spill.blocks(WRITE_BATCH)):
                    for chunk in chunks:
                        writer.add(chunk)
        writer.flush()
    except VideoError as error:
        error.info = error.info or stats.info
        error.frames_decoded = error.frames_decoded or stats.frames_decoded
        raise
    finally:
        if spill is not None:
            spill.close()
    timestamps.resize(len(times), axis=0)
    timestamps[:] = np.asarray(times, np.float64)
    store.create_dataset("mask", data=mask)
    seconds = time.perf_counter() - started
    log.info("%s: %d frames decoded, %d kept, %.1f s (%.0f frames/s)", path, stats.frames_decoded, len(times),
             seconds, stats.frames_decoded / max(seconds, 1e-9))
    attrs = stats.info.as_attrs()
    attrs.update(frame_count_decoded=stats.frames_decoded, corrupt_frames=stats.corrupt_frames,
                 pixel_formats=",".join(sorted(stats.pixel_formats)),
                 crop_box=[box.x, box.y, box.width, box.height], decode_seconds=seconds)
    return attrs


def _spill_batch(batch: list, spill: _Spill, low: np.ndarray, high: np.ndarray) -> None:
    """Write the batched unmasked frames to the spill file and update each pixel's value range."""
    if not batch:
        return
    block = np.stack(batch)
    batch.clear()
    np.minimum(low, block.min(axis=0), out=low)
    np.maximum(high, block.max(axis=0), out=high)
    spill.write(block)


def _write_excluded(store: h5py.File, video: Path, settings: Settings, error: VideoError) -> dict:
    _create_datasets(store, settings.size)
    width, height = settings.size
    store.create_dataset("mask", data=np.zeros((height, width), np.uint8))
    if error.info is not None:
        attrs = error.info.as_attrs()
    else:
        attrs = VideoInfo(path=str(video), source_size=-1, source_mtime=float("nan")).as_attrs()
    attrs.update(frame_count_decoded=error.frames_decoded, crop_box=[-1, -1, -1, -1])
    return attrs


def build_store(video: str | Path, output: str | Path, preprocess: dict, threads: int = 1,
                video_id: str = "") -> dict:
    """Decode ``video`` into the frame store ``output`` and return the store's attributes.

    Raises:
        VideoError: the video cannot be used and ``preprocess.on_bad_video`` is "fail". With "exclude" an
            excluded store (no frames, status "excluded", the error as reason) is written instead.
    """
    video = Path(video)
    settings = Settings.from_config(preprocess)
    # One OpenCV thread, because the decoder's threads already use the cores. On two cores, cropping and resizing
    # with two OpenCV threads took 0.53 ms of CPU per frame against 0.33 ms with one.
    cv2.setNumThreads(1)
    with atomic_output(output) as temporary:
        try:
            with h5py.File(temporary, "w") as store:
                attrs = write_frames(store, video, settings, threads)
                attrs.update(status="ok", reason="")
                _set_attrs(store, attrs, settings, video_id)
        except VideoError as error:
            if settings.on_bad_video != "exclude":
                raise
            log.warning("excluded %s: %s", video, error)
            with h5py.File(temporary, "w") as store:
                attrs = _write_excluded(store, video, settings, error)
                attrs.update(status="excluded", reason=str(error))
                _set_attrs(store, attrs, settings, video_id)
    return attrs


def _set_attrs(store: h5py.File, attrs: dict, settings: Settings, video_id: str) -> None:
    attrs = dict(attrs)
    attrs["source_path"] = attrs.pop("path", "")
    attrs.update(video_id=video_id, preprocess=settings.as_json(), echoflow_version=echoflow.__version__)
    for key, value in attrs.items():
        store.attrs[key] = value


def open_store(path: str | Path) -> h5py.File:
    """Open a frame store read-only.

    File locking is off because stores never change after the rename that publishes them; HDF5's locks fail
    on some cluster file systems (see docs/frames.md).
    """
    return h5py.File(path, "r", locking=False)


def read_timestamps(path: str | Path) -> tuple[np.ndarray, dict]:
    """Return a store's ``timestamps_ms`` and its attributes, without reading the frames."""
    with open_store(path) as store:
        return store["timestamps_ms"][:], dict(store.attrs)


# Decoding QC over all stores.

QC_COLUMNS = ["video_id", "status", "reason", "stage", "frames_decoded", "frames_stored", "duration_s", "fps",
              "width", "height", "frame_count_header", "corrupt_frames", "crop_box", "video"]


def store_summary(path: str | Path) -> dict:
    """Return one QC row describing a frame store."""
    with open_store(path) as store:
        attrs = store.attrs
        timestamps = store["timestamps_ms"][:]
        fps = float(attrs.get("fps", float("nan")))
        if len(timestamps):
            # The last frame lasts one frame period, so it counts towards the duration.
            duration_s = (timestamps[-1] - timestamps[0]) / 1000 + (1 / fps if fps > 0 else 0.0)
        else:
            duration_s = float("nan")
        return {"status": str(attrs.get("status", "")), "reason": str(attrs.get("reason", "")), "stage": "frames",
                "frames_decoded": int(attrs.get("frame_count_decoded", 0)), "frames_stored": len(timestamps),
                "duration_s": round(float(duration_s), 3), "fps": round(fps, 3),
                "width": int(attrs.get("width", 0)), "height": int(attrs.get("height", 0)),
                "frame_count_header": int(attrs.get("frame_count_header", 0)),
                "corrupt_frames": int(attrs.get("corrupt_frames", 0)),
                "crop_box": " ".join(str(int(v)) for v in attrs.get("crop_box", []))}


def video_qc_table(manifest: str | Path, stores: list[str | Path]) -> pd.DataFrame:
    """Return one row per manifest video: its status after discovery and, for ok videos, after decoding.

    A store is matched to its video by file name (``{video_id}.h5``). Videos excluded by the manifest have
    stage "manifest" and no decoding figures.
    """
    # Imported here because importing pandas adds about 0.7 s to the start of every frames job.
    import pandas as pd

    table = pd.read_csv(manifest, sep="\t", dtype=str, keep_default_na=False)
    by_id = {Path(path).stem: path for path in stores}
    rows = []
    for entry in table.itertuples(index=False):
        row = {"video_id": entry.video_id, "video": entry.video}
        if entry.status != "ok":
            row.update(status=entry.status, reason=entry.reason, stage="manifest")
        elif entry.video_id in by_id:
            row.update(store_summary(by_id[entry.video_id]))
        else:
            row.update(status="missing", reason="no frame store was given for this ok video", stage="frames")
        rows.append(row)
    table = pd.DataFrame(rows, columns=QC_COLUMNS)
    # Nullable integers, so videos without decoding figures leave empty cells instead of turning counts to floats.
    for column in ("frames_decoded", "frames_stored", "width", "height", "frame_count_header", "corrupt_frames"):
        table[column] = table[column].astype("Int64")
    return table

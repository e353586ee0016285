"""Make small real H.264 test videos whose frames encode their own index.

Each picture is a black screen capture with a static caption and border, and an ultrasound-like sector
(fan shape) inside ``Layout.sector``. The sector contains moving speckle and a band of vertical bars that
spell the frame index in binary, so a test can read the index back from a decoded, cropped and resized frame
with :func:`read_index`. Videos are encoded with libx264 through PyAV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import av
import cv2
import numpy as np

CODE_BITS = 12
"""Bits of the frame index drawn in each picture; indices repeat after 2**CODE_BITS frames."""

# The code band, as fractions of the sector box: rows and columns where every bar lies inside the fan.
CODE_ROWS = (0.50, 0.75)
CODE_COLUMNS = (0.22, 0.78)
SECTOR_HALF_ANGLE_DEG = 38.0
BRIGHT = 230
DARK = 25


@dataclass(frozen=True)
class Layout:
    """Picture size and the box (x, y, width, height, source pixels) that contains the sector."""

    width: int = 320
    height: int = 240
    sector: tuple[int, int, int, int] = (60, 30, 200, 180)

    @property
    def crop(self) -> dict:
        """The sector box as a ``preprocess.crop`` mapping."""
        x, y, width, height = self.sector
        return {"x": x, "y": y, "width": width, "height": height}


def sector_mask(layout: Layout) -> np.ndarray:
    """Return a bool [height, width] image that is True inside the fan-shaped sector."""
    x0, y0, box_width, box_height = layout.sector
    rows, columns = np.mgrid[0:layout.height, 0:layout.width].astype(np.float64)
    apex_x = x0 + box_width / 2.0
    dx = columns + 0.5 - apex_x
    dy = rows + 0.5 - y0
    radius = np.hypot(dx, dy)
    angle = np.degrees(np.arctan2(np.abs(dx), np.maximum(dy, 1e-9)))
    inside_box = (columns >= x0) & (columns < x0 + box_width) & (rows >= y0) & (rows < y0 + box_height)
    return inside_box & (dy > 0) & (radius <= box_height) & (angle <= SECTOR_HALF_ANGLE_DEG)


def _code_bar_bounds(box: Sequence[float]) -> tuple[int, int, list[tuple[float, float]]]:
    """Return the code band's first and last row and the column span of each bar, in the box's image."""
    x0, y0, box_width, box_height = box
    top = y0 + CODE_ROWS[0] * box_height
    bottom = y0 + CODE_ROWS[1] * box_height
    left = x0 + CODE_COLUMNS[0] * box_width
    bar_width = (CODE_COLUMNS[1] - CODE_COLUMNS[0]) * box_width / CODE_BITS
    bars = [(left + bit * bar_width, left + (bit + 1) * bar_width) for bit in range(CODE_BITS)]
    return int(round(top)), int(round(bottom)), bars


class Painter:
    """Draw the pictures of one synthetic video: static screen, moving speckle and the index code."""

    def __init__(self, layout: Layout, seed: int = 0, caption: str = "ECHO 2D  HR 72"):
        self.layout = layout
        self.mask = sector_mask(layout)
        rng = np.random.default_rng(seed)
        x0, y0, box_width, box_height = layout.sector
        # Speckle: blurred noise twice the box size, so a moving window never runs out of texture.
        noise = rng.rayleigh(1.0, size=(2 * box_height, 2 * box_width)).astype(np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=1.2)
        self.texture = np.clip(noise * 60, 0, 255).astype(np.uint8)
        self.screen = np.zeros((layout.height, layout.width), np.uint8)
        cv2.rectangle(self.screen, (2, 2), (layout.width - 3, layout.height - 3), 90, 1)
        scale = max(layout.height / 600.0, 0.3)
        cv2.putText(self.screen, caption, (8, max(int(24 * scale * 2), 12)), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, 200, max(1, int(2 * scale)), cv2.LINE_AA)
        self.box_slices = (slice(y0, y0 + box_height), slice(x0, x0 + box_width))

    def picture(self, index: int) -> np.ndarray:
        """Return the grayscale uint8 [height, width] picture of frame ``index``."""
        x0, y0, box_width, box_height = self.layout.sector
        image = self.screen.copy()
        # Heart-beat-like motion: the speckle window moves on a circle, one turn per 30 frames.
        phase = 2 * math.pi * index / 30.0
        dx = int(box_width / 2 + box_width / 8 * math.cos(phase))
        dy = int(box_height / 2 + box_height / 8 * math.sin(phase))
        window = self.texture[dy:dy + box_height, dx:dx + box_width]
        box = image[self.box_slices]
        box_mask = self.mask[self.box_slices]
        box[box_mask] = window[box_mask]
        top, bottom, bars = _code_bar_bounds(self.layout.sector)
        for bit, (left, right) in enumerate(bars):
            value = BRIGHT if (index >> (CODE_BITS - 1 - bit)) & 1 else DARK
            image[top:bottom, int(round(left)):int(round(right))] = value
        return image


def gray_to_yuv420p(gray: np.ndarray) -> np.ndarray:
    """Return the planar yuv420p array (limited range, neutral chroma) of a grayscale uint8 picture."""
    height, width = gray.shape
    luma = (16 + gray.astype(np.uint16) * 219 // 255).astype(np.uint8)
    chroma = np.full((height // 2, width), 128, np.uint8)
    return np.concatenate([luma, chroma])


def write_video(path: str | Path, frames: int | Iterable[np.ndarray], layout: Layout = Layout(),
                fps: float | Fraction = Fraction(30000, 1001), timestamps_s: Sequence[float] | None = None,
                seed: int = 0, preset: str = "veryfast", crf: int = 20, faststart: bool = True,
                threads: int = 0) -> Path:
    """Encode an H.264 MP4 of synthetic pictures and return its path.

    Args:
        frames: a frame count, drawn with :class:`Painter` so that picture i encodes index i, or an iterable of
            grayscale uint8 [height, width] pictures.
        fps: nominal frame rate; frame i is presented at i / fps unless ``timestamps_s`` is given.
        timestamps_s: presentation time in seconds of each frame, increasing, for variable frame rate.
        faststart: put the index (moov atom) before the media data, so that a truncated copy still opens.
        threads: encoder threads; 0 lets libx264 choose.
    """
    path = Path(path)
    fps = Fraction(fps).limit_denominator(1001)
    pictures = Painter(layout, seed).picture if isinstance(frames, int) else None
    count = frames if isinstance(frames, int) else None
    source = (pictures(i) for i in range(count)) if pictures is not None else iter(frames)
    time_base = Fraction(1, 90000) if timestamps_s is not None else 1 / fps
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = layout.width, layout.height, "yuv420p"
        stream.codec_context.time_base = time_base
        stream.codec_context.thread_count = threads
        stream.options = {"preset": preset, "crf": str(crf)}
        for index, gray in enumerate(source):
            frame = av.VideoFrame.from_ndarray(gray_to_yuv420p(gray), format="yuv420p")
            if timestamps_s is not None:
                frame.pts = int(round(timestamps_s[index] / time_base))
            else:
                frame.pts = index
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_times_s(path: str | Path) -> list[float]:
    """Return the presentation time in seconds of every frame that PyAV decodes from ``path``."""
    with av.open(str(path)) as container:
        return [float(frame.time) for frame in container.decode(video=0)]


def map_box(box: Sequence[float], crop: dict, size: Sequence[int]) -> tuple[float, float, float, float]:
    """Map a box in source pixels to the pixels of a frame cropped to ``crop`` and resized to ``size``."""
    scale_x = size[0] / crop["width"]
    scale_y = size[1] / crop["height"]
    x, y, width, height = box
    return ((x - crop["x"]) * scale_x, (y - crop["y"]) * scale_y, width * scale_x, height * scale_y)


def read_index(image: np.ndarray, box: Sequence[float]) -> int:
    """Return the frame index spelled by the code bars of a picture whose sector box is ``box``.

    ``box`` is in the pixels of ``image``; for a stored frame use :func:`map_box`. Each bar is read at its
    centre, so the code survives H.264 compression and downscaling to about 2 pixels per bar.
    """
    top, bottom, bars = _code_bar_bounds(box)
    middle_rows = slice(top + (bottom - top) // 4, bottom - (bottom - top) // 4 + 1)
    index = 0
    for left, right in bars:
        column = int((left + right) / 2)
        value = float(np.mean(image[middle_rows, column]))
        index = (index << 1) | int(value > (BRIGHT + DARK) / 2)
    return index


# Broken files for the error paths of video readers.

def truncate(source: str | Path, target: str | Path, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of the bytes of ``source`` to ``target``, as an interrupted copy would."""
    data = Path(source).read_bytes()
    Path(target).write_bytes(data[:int(len(data) * fraction)])
    return Path(target)


def truncate_at_packet(source: str | Path, target: str | Path, packet_index: int) -> Path:
    """Copy ``source`` up to the start of its video packet ``packet_index``, so the stream ends cleanly early."""
    with av.open(str(source)) as container:
        positions = [packet.pos for packet in container.demux(video=0) if packet.dts is not None]
    data = Path(source).read_bytes()
    Path(target).write_bytes(data[:positions[packet_index]])
    return Path(target)


def remux(source: str | Path, target: str | Path, container_format: str | None = None,
          keep=lambda packet: True) -> Path:
    """Copy the packets of the video stream of ``source`` for which ``keep(packet)`` is true into ``target``.

    ``container_format`` is an FFmpeg muxer name such as "mpegts"; None picks one from the file name.
    """
    with av.open(str(source)) as reader, av.open(str(target), "w", format=container_format) as writer:
        stream = reader.streams.video[0]
        output = writer.add_stream_from_template(stream)
        for packet in reader.demux(stream):
            if packet.dts is None or not keep(packet):
                continue
            packet.stream = output
            writer.mux(packet)
    return Path(target)


def without_keyframes(source: str | Path, target: str | Path) -> Path:
    """Write a copy of ``source`` without its keyframes: the stream exists but no frame can be decoded."""
    return remux(source, target, keep=lambda packet: not packet.is_keyframe)

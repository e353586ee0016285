"""Generate the built-in demo tree: screen-capture videos of real ultrasound frames with VIA 3 annotations.

The tree mimics the real raw data: ``<participant>/<T1|T2|T3>/`` folders with one 1920x1080 H.264 capture and
one VIA 3 project each, in every file-naming variant of the real tree. It also has files that discovery must
ignore, empty session folders, a video without annotation and a project without segments. Each capture shows a
static scanner screen around a fan-shaped sector inside the default ``preprocess.crop`` box. The sector plays a
real apical four-chamber cine (pydicom-data ``color3d_jpeg_baseline.dcm``) exactly during the annotated intervals,
and otherwise real non-cardiac ultrasound, an M-mode-like strip, frozen frames or a blank sector.

Every random choice is drawn from ``demo.seed``, so the same settings and the same PyAV/libx264 build give a
byte-identical tree.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import shutil
import string
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from echoflow.atomic import atomic_output
from echoflow.via import write_project

log = logging.getLogger(__name__)

DEFAULTS = {"seed": 20221230, "participants": 6, "duration_s": [20, 32], "fps": 29.97}
MIN_PARTICIPANTS = 6
MIN_DURATION_S = 12.0

SCREEN_WIDTH, SCREEN_HEIGHT = 1920, 1080
# Ultrasound box (x, y, width, height) in screen pixels, equal to the default preprocess.crop.
BOX = (480, 120, 1130, 810)
# Sector geometry inside the box: apex (x, y), radius and half opening angle. The cine's own sector has nearly
# the same shape (half angle about 46 degrees), so the cine fills the fan with little distortion.
SECTOR_APEX = (565, 20)
SECTOR_RADIUS = 770
SECTOR_HALF_ANGLE_DEG = 45.0
DEPTH_CM = 16

# Source of the 4CV frames and the rectangle (x, y, width, height) around its sector, in source pixels.
CINE_FILE = "color3d_jpeg_baseline.dcm"
CINE_CROP = (84, 45, 512, 357)
# Non-cardiac ultrasound images and the rectangle (x, y, width, height) that contains the image without the
# scanner's text: a lymph node, a pelvis, an obstetric probe in air, a vessel with colour Doppler.
BACKGROUND_FILES = {
    "US1_UNCR.dcm": (30, 130, 580, 210),
    "gdcm-US-ALOKA-16.dcm": (30, 50, 580, 350),
    "OBXXXX1A.dcm": (250, 40, 350, 320),
    "color-pl.dcm": (0, 0, 256, 120),
}
DRIFT_MARGIN = 32  # Pixels around a background image that its slow drift may reveal.

# ultrafast encodes a 1080p frame in about 4 ms of CPU time (docs/demo.md). One thread per encoder keeps the
# output byte-identical, so videos are encoded in parallel processes instead.
X264_OPTIONS = {"preset": "ultrafast", "crf": "30", "threads": "1"}
# Project name and creation time of the annotators' VIA template, which every real project kept.
VIA_PROJECT_NAME = "echo_4CV_template_VIA Project"
VIA_CREATED_MS = 1634093189898

BACKGROUND_KINDS = ("scan", "mmode", "frozen", "blank")


# ----------------------------------------------------------------------------------------------------------
# Tree plan: which folders and files exist and how each video and annotation looks.


@dataclass(frozen=True)
class AnnotationPlan:
    """File name and real-project quirks of one VIA project."""

    name: str
    video_name: str  # file.fname inside the project, which may differ slightly from the name on disk
    guidance: bool = False  # add the unused "guidance_4CV" attribute of the annotators' template
    value: str = "4CV"  # "_DEFAULT" when the annotator left the value unset
    shuffled: bool = False  # store segments out of time order
    empty: bool = False  # no segments: the video was never annotated


@dataclass(frozen=True)
class VideoPlan:
    """One capture video in a session folder, with its annotation (None when it has none)."""

    participant: str
    session: str
    name: str
    seed: int
    annotation: AnnotationPlan | None

    @property
    def folder(self) -> Path:
        """Session folder relative to the tree root."""
        return Path(self.participant, self.session)


@dataclass
class TreePlan:
    """Every folder and file of a demo tree, before any file is written."""

    videos: list[VideoPlan] = field(default_factory=list)
    ignored_files: list[Path] = field(default_factory=list)  # tiny files that discovery must ignore
    empty_folders: list[Path] = field(default_factory=list)


def settings(demo: dict | None) -> dict:
    """Return the demo settings with defaults filled in, after checking them.

    Raises:
        ValueError: naming the key, its value and the allowed range.
    """
    resolved = {**DEFAULTS, **(demo or {})}
    if int(resolved["participants"]) < MIN_PARTICIPANTS:
        raise ValueError(f"demo.participants is {resolved['participants']}; expected at least {MIN_PARTICIPANTS} "
                         "so that every naming variant and exclusion case of the real tree is present.")
    low, high = (float(v) for v in resolved["duration_s"])
    if not MIN_DURATION_S <= low <= high:
        raise ValueError(f"demo.duration_s is {resolved['duration_s']}; expected [low, high] with "
                         f"{MIN_DURATION_S:g} <= low <= high seconds.")
    if float(resolved["fps"]) <= 0:
        raise ValueError(f"demo.fps is {resolved['fps']}; expected a positive frame rate.")
    return resolved


def frame_rate(fps: float) -> Fraction:
    """Return the exact frame rate, reading 23.976, 29.97 and 59.94 as the NTSC rates n * 1000/1001."""
    ntsc = Fraction(round(fps * 1.001) * 1000, 1001)
    if fps != round(fps) and abs(float(ntsc) - fps) < 0.001:
        return ntsc
    return Fraction(fps).limit_denominator(1001)


def _video_name(participant: str, number: int, style: str) -> str:
    if style == "space":
        return f"{participant}-{number} echo.mp4"
    if style == "dash":
        return f"{participant}-{number}-echo.mp4"
    if style == "cont":
        return f"{participant}-{number}-echo-cont.mp4"
    raise ValueError(f"unknown video name style {style!r}")


def _annotation_name(participant: str, number: int, style: str) -> str:
    if style == "4CV":
        return f"{participant}-{number}-4CV.json"
    if style == "lower":
        return f"{participant}-{number}-4cv.json"
    if style == "underscore":
        return f"{participant.replace('-', '_')}_T{number}_4CV.json"
    raise ValueError(f"unknown annotation name style {style!r}")


# Six participant layouts that together contain every case of the real tree. Each session maps to
# (video name style, annotation name style or None, annotation quirks), or to None for an empty folder.
# _ignored_files lists the set-aside files of each layout.
_LAYOUTS = (
    {"T1": ("space", "4CV", {}), "T2": ("space", "4CV", {"guidance": True, "shuffled": True}), "T3": None},
    {"T1": ("dash", "underscore", {"guidance": True}), "T2": ("cont", "underscore", {})},
    {"T1": ("space", "lower", {}), "T2": ("space", "4CV", {"value": "_DEFAULT"})},
    {"T1": ("space", "4CV", {"empty": True, "guidance": True}), "T2": ("space", "4CV", {"shuffled": True}),
     "T3": ("space", None, {})},
    {"T1": ("space", "4CV", {"guidance": True}), "T2": ("dash", "4CV", {}), "T3": None},
    {"T1": ("space", "4CV", {}), "T2": ("space", "4CV", {"guidance": True, "shuffled": True})},
)


def _ignored_files(layout_index: int, participant: str) -> list[Path]:
    """Return the files set aside in the real tree (renamed to *_mp4_ or moved into extras/)."""
    if layout_index == 2:
        return [Path(participant, "T2", f"{participant}-2 echo cont_mp4_")]
    if layout_index == 4:
        return [Path(participant, "T1", "extras", f"{participant}-1 echo_mp4_")]
    if layout_index == 5:
        return [Path(participant, "extras", f"{participant}-3 echo_mp4_"),
                Path(participant, "T2", f"{participant}-2 echo_mp4_")]
    return []


def _random_layout(rng: np.random.Generator) -> dict:
    """Return a layout for participants beyond the six fixed ones: 1 to 3 plainly named sessions."""
    layout = {}
    for number in range(1, int(rng.integers(1, 4)) + 1):
        layout[f"T{number}"] = ("space", "4CV", {"guidance": bool(rng.random() < 0.5)})
    return layout


def plan_tree(demo: dict | None) -> TreePlan:
    """Decide the participants, folders, file names and per-video seeds of the demo tree."""
    config = settings(demo)
    rng = np.random.default_rng(int(config["seed"]))
    count = int(config["participants"])
    numbers = np.sort(rng.choice(np.arange(40, 100), size=count, replace=False))
    participants = [f"01NVb-003-{number:03d}" for number in numbers]
    layouts = [dict(layout) for layout in _LAYOUTS] + [_random_layout(rng) for _ in range(count - len(_LAYOUTS))]
    order = rng.permutation(count)
    plan = TreePlan()
    for participant, layout_index in zip(participants, order):
        layout = layouts[layout_index]
        for session, entry in layout.items():
            if entry is None:
                plan.empty_folders.append(Path(participant, session))
                continue
            video_style, annotation_style, quirks = entry
            number = int(session[1:])
            annotation = None
            if annotation_style is not None:
                # Real projects name the video as "<participant>-<n> echo.mp4" whatever its name on disk.
                annotation = AnnotationPlan(name=_annotation_name(participant, number, annotation_style),
                                            video_name=f"{participant}-{number} echo.mp4", **quirks)
            plan.videos.append(VideoPlan(participant, session, _video_name(participant, number, video_style),
                                         seed=int(rng.integers(2**31)), annotation=annotation))
        if layout_index < len(_LAYOUTS):
            plan.ignored_files.extend(_ignored_files(int(layout_index), participant))
    return plan


# ----------------------------------------------------------------------------------------------------------
# Timeline of one video: which content the sector shows in each frame.


@dataclass(frozen=True)
class Stretch:
    """Consecutive frames [first, stop) showing one kind of content, with that content's random settings."""

    kind: str  # "cine" (4CV), "scan", "mmode", "frozen" or "blank"
    first: int
    stop: int
    seed: int


@dataclass(frozen=True)
class Timeline:
    """Frame count, the stretches that cover every frame, and the 4CV intervals as frame ranges [start, stop)."""

    frame_count: int
    rate: Fraction
    stretches: tuple[Stretch, ...]
    cine_frames: tuple[tuple[int, int], ...]

    def intervals_s(self) -> list[tuple[float, float]]:
        """Return the 4CV intervals in seconds, each bound half a frame before its frame range's bounds.

        Frame i is shown at i / rate seconds, so the 4CV frames are exactly those whose timestamp lies inside
        an interval, whether the interval is read as closed or half-open and after rounding to 5 decimals.
        """
        return [((start - 0.5) / self.rate, (stop - 0.5) / self.rate) for start, stop in self.cine_frames]


def _split_frames(total: int, parts: int, minimum: int, rng: np.random.Generator) -> list[int]:
    """Split ``total`` frames into ``parts`` random lengths of at least ``minimum`` frames each."""
    spare = total - parts * minimum
    shares = np.floor(rng.dirichlet(np.ones(parts)) * spare).astype(int)
    lengths = [minimum + int(share) for share in shares]
    lengths[-1] += total - sum(lengths)
    return lengths


def plan_timeline(seed: int, duration_s: tuple[float, float], rate: Fraction) -> Timeline:
    """Lay out 2 or 3 4CV intervals of 2.1-10 s between background stretches of at least 1 s each.

    Lengths are rounded to whole frames, so an interval may be half a frame shorter or longer than that range,
    and the 4CV intervals cover at most about half of the video.
    """
    rng = np.random.default_rng([seed, 1])
    duration = float(rng.uniform(*duration_s))
    frame_count = int(round(duration * rate))
    one_second = math.ceil(rate)
    count = int(rng.integers(2, 4)) if duration >= 15 else 2
    longest = min(10.0, 0.5 * duration / count)
    cine_lengths = [int(round(rng.uniform(2.1, longest) * rate)) for _ in range(count)]
    gaps = _split_frames(frame_count - sum(cine_lengths), count + 1, one_second, rng)

    # Background kinds are dealt from shuffled decks, so every video with 4 or more parts shows each kind.
    kinds: list[str] = []
    previous = None
    stretches, cine_frames = [], []
    position = 0
    for index, gap in enumerate(gaps):
        # A gap gets one more part per 6 s, so long stretches of one kind of background are rare.
        parts = min(int(rng.integers(1, 3)) + gap // (6 * one_second), gap // one_second)
        for length in _split_frames(gap, parts, one_second, rng):
            if not kinds:
                kinds = [str(kind) for kind in rng.permutation(BACKGROUND_KINDS)]
                if kinds[-1] == previous:
                    kinds.insert(0, kinds.pop())
            previous = kinds.pop()
            stretches.append(Stretch(previous, position, position + length, int(rng.integers(2**31))))
            position += length
        if index < count:
            stop = position + cine_lengths[index]
            stretches.append(Stretch("cine", position, stop, int(rng.integers(2**31))))
            cine_frames.append((position, stop))
            position = stop
    return Timeline(frame_count, rate, tuple(stretches), tuple(cine_frames))


# ----------------------------------------------------------------------------------------------------------
# Sector content: real ultrasound frames fitted into the fan.


def sector_rectangle() -> tuple[int, int, int, int]:
    """Return the sector's bounding rectangle (x, y, width, height) in screen pixels."""
    half_width = int(round(SECTOR_RADIUS * math.sin(math.radians(SECTOR_HALF_ANGLE_DEG))))
    x = BOX[0] + SECTOR_APEX[0] - half_width
    y = BOX[1] + SECTOR_APEX[1]
    return x, y, 2 * half_width, SECTOR_RADIUS


def sector_mask() -> np.ndarray:
    """Return a uint8 [height, width] mask of the sector rectangle: 1 inside the fan, 0 outside."""
    _, _, width, height = sector_rectangle()
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float64)
    dx = columns + 0.5 - width / 2.0
    dy = rows + 0.5
    inside = (np.hypot(dx, dy) <= SECTOR_RADIUS) & (
        np.degrees(np.arctan2(np.abs(dx), dy)) <= SECTOR_HALF_ANGLE_DEG)
    return inside.astype(np.uint8)


def _testdata_file(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name!r} not found; the demo tree needs the pydicom-data "
                                "package. Install it with: pip install pydicom-data")
    return path


def _gray(dataset) -> np.ndarray:
    """Return a DICOM image (or the frames of a cine) as uint8 grayscale."""
    from pydicom.pixels import apply_color_lut, pixel_array

    interpretation = dataset.PhotometricInterpretation
    if interpretation.startswith("YBR"):
        # Without conversion to RGB the first channel is the luma Y, which is the grayscale image.
        return pixel_array(dataset, as_rgb=False)[..., 0]
    pixels = dataset.pixel_array
    if interpretation == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        pixels = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
    return pixels.astype(np.uint8)


def _cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale ``image`` to cover width x height, keeping its aspect ratio, and crop the centre."""
    scale = max(width / image.shape[1], height / image.shape[0])
    scaled = cv2.resize(image, (math.ceil(image.shape[1] * scale), math.ceil(image.shape[0] * scale)),
                        interpolation=cv2.INTER_LINEAR)
    top = (scaled.shape[0] - height) // 2
    left = (scaled.shape[1] - width) // 2
    return np.ascontiguousarray(scaled[top:top + height, left:left + width])


@dataclass(frozen=True)
class Sources:
    """Real ultrasound frames prepared for the sector rectangle."""

    mask: np.ndarray  # uint8 [H, W], 1 inside the fan
    cine: np.ndarray  # uint8 [frames, H, W], the 4CV loop, masked
    cine_fps: float
    backgrounds: tuple[np.ndarray, ...]  # uint8 [H + 2 * DRIFT_MARGIN, W + 2 * DRIFT_MARGIN], unmasked


@functools.lru_cache(maxsize=1)
def load_sources() -> Sources:
    """Read the pydicom test files and fit them into the sector rectangle (once per process)."""
    import pydicom

    _, _, width, height = sector_rectangle()
    mask = sector_mask()
    dataset = pydicom.dcmread(_testdata_file(CINE_FILE))
    x, y, crop_width, crop_height = CINE_CROP
    frames = _gray(dataset)[:, y:y + crop_height, x:x + crop_width]
    cine = np.stack([cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR) * mask
                     for frame in frames])
    cine_fps = 1000.0 / float(dataset.get("FrameTime", 1000.0 / 30.0))

    backgrounds = []
    for name, (x, y, crop_width, crop_height) in BACKGROUND_FILES.items():
        image = _gray(pydicom.dcmread(_testdata_file(name)))[y:y + crop_height, x:x + crop_width]
        backgrounds.append(_cover(image, width + 2 * DRIFT_MARGIN, height + 2 * DRIFT_MARGIN))
    return Sources(mask, cine, cine_fps, tuple(backgrounds))


def _mmode_strip(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Draw an M-mode-like strip: speckled tissue bands whose depth oscillates along the time axis (columns)."""
    rows = np.arange(height, dtype=np.float32)[:, None]
    columns = np.arange(width, dtype=np.float32)[None, :]
    strip = np.full((height, width), 30.0, dtype=np.float32)
    for _ in range(int(rng.integers(4, 8))):
        depth = rng.uniform(0.1, 0.9) * height
        swing = rng.uniform(5, 40)
        period = rng.uniform(60, 200)
        thickness = rng.uniform(6, 30)
        brightness = rng.uniform(60, 200)
        centre = depth + swing * np.sin(2 * np.pi * columns / period + rng.uniform(0, 2 * np.pi))
        strip += brightness * np.exp(-((rows - centre) / thickness) ** 2)
    speckle = rng.uniform(0.3, 1.0, size=(height // 2 + 1, width // 2 + 1)).astype(np.float32)
    strip *= np.repeat(np.repeat(speckle, 2, axis=0), 2, axis=1)[:height, :width]
    return np.clip(strip, 0, 255).astype(np.uint8)


class SectorPlayer:
    """Source of the masked sector picture for each frame of one stretch."""

    def __init__(self, stretch: Stretch, rate: Fraction, sources: Sources):
        self.stretch = stretch
        self.rate = rate
        self.sources = sources
        rng = np.random.default_rng(stretch.seed)
        height, width = sources.mask.shape
        self.image = sources.backgrounds[int(rng.integers(len(sources.backgrounds)))]
        self.cine_phase = int(rng.integers(len(sources.cine)))
        # Slow probe drift of a background image: amplitude in pixels and period in seconds for x and y.
        self.drift = (rng.uniform(4, DRIFT_MARGIN), rng.uniform(3, 8), rng.uniform(0, 2 * np.pi),
                      rng.uniform(2, DRIFT_MARGIN / 2), rng.uniform(2, 6), rng.uniform(0, 2 * np.pi))
        self.speed = int(rng.integers(2, 7))  # M-mode scroll in pixels per frame
        if stretch.kind == "mmode":
            self.strip = _mmode_strip(rng, height, width + self.speed * (stretch.stop - stretch.first))
        self.still = self._scan(float(rng.uniform(0, 10))) if stretch.kind == "frozen" else None
        self.blank = np.zeros_like(sources.mask)

    def _scan(self, seconds: float) -> np.ndarray:
        amplitude_x, period_x, phase_x, amplitude_y, period_y, phase_y = self.drift
        dx = DRIFT_MARGIN + int(round(amplitude_x * math.sin(2 * math.pi * seconds / period_x + phase_x)))
        dy = DRIFT_MARGIN + int(round(amplitude_y * math.sin(2 * math.pi * seconds / period_y + phase_y)))
        height, width = self.sources.mask.shape
        return self.image[dy:dy + height, dx:dx + width] * self.sources.mask

    def frame(self, index: int) -> np.ndarray:
        """Return the sector picture of video frame ``index``, which must lie in this stretch."""
        local = index - self.stretch.first
        kind = self.stretch.kind
        if kind == "cine":
            step = math.floor(local / self.rate * self.sources.cine_fps)
            return self.sources.cine[(self.cine_phase + step) % len(self.sources.cine)]
        if kind == "scan":
            return self._scan(float(local / self.rate))
        if kind == "mmode":
            width = self.sources.mask.shape[1]
            offset = self.speed * local
            return self.strip[:, offset:offset + width] * self.sources.mask
        if kind == "frozen":
            return self.still
        return self.blank


# ----------------------------------------------------------------------------------------------------------
# Screen around the sector and encoding.

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT = 205
_PANEL = 42
_BACKDROP = 14
CLOCK_BOX = (1660, 18, 240, 36)  # x, y, width, height of the clock text, in screen pixels


def _text(image: np.ndarray, text: str, x: int, y: int, scale: float = 0.8, value: int = _TEXT) -> None:
    cv2.putText(image, text, (x, y), _FONT, scale, value, 2 if scale >= 0.8 else 1, cv2.LINE_AA)


def build_screen(participant: str, session: str, rng: np.random.Generator) -> np.ndarray:
    """Draw the static scanner screen: menus, settings, caliper readout and depth scale around a black box."""
    screen = np.full((SCREEN_HEIGHT, SCREEN_WIDTH), _BACKDROP, dtype=np.uint8)
    screen[0:70, :] = _PANEL
    _text(screen, "ECHOFLOW DEMO", 20, 45, 1.0)
    _text(screen, f"ID {participant}  {session}", 330, 45)
    _text(screen, "Adult Echo   S5-1   MI 0.9   TIS 0.7", 780, 45)

    gain = int(rng.integers(45, 70))
    lines = ["2D", f"Gn {gain}", "C 50", "3/2/0", "HGen", f"Depth {DEPTH_CM} cm", "FR 30 Hz", "",
             "Caliper", f"Dist {rng.uniform(2.5, 6.5):.2f} cm", f"Area {rng.uniform(8, 25):.1f} cm2"]
    for row, line in enumerate(lines):
        _text(screen, line, 40, 170 + 42 * row, 0.8)

    # Depth scale beside the box: a tick per centimetre from the sector apex, labelled every 5 cm.
    x_scale = BOX[0] + BOX[2] + 25
    top = BOX[1] + SECTOR_APEX[1]
    pixels_per_cm = SECTOR_RADIUS / DEPTH_CM
    cv2.line(screen, (x_scale, top), (x_scale, top + SECTOR_RADIUS), _TEXT, 2)
    for depth in range(DEPTH_CM + 1):
        y = int(round(top + depth * pixels_per_cm))
        cv2.line(screen, (x_scale, y), (x_scale + (18 if depth % 5 == 0 else 9), y), _TEXT, 2)
        if depth % 5 == 0:
            _text(screen, str(depth), x_scale + 26, y + 9, 0.7)

    buttons = ["Freeze", "Gain", "Depth", "Zoom", "Caliper", "Measure", "Cine", "Save", "Report"]
    for index, label in enumerate(buttons):
        x = 40 + index * 205
        cv2.rectangle(screen, (x, 985), (x + 190, 1050), _PANEL + 20, -1)
        _text(screen, label, x + 20, 1028, 0.8)

    x, y, width, height = BOX
    screen[y:y + height, x:x + width] = 0
    return screen


@functools.lru_cache(maxsize=256)
def _clock_patch(seconds_of_day: int) -> np.ndarray:
    x, y, width, height = CLOCK_BOX
    patch = np.full((height, width), _PANEL, dtype=np.uint8)
    hours, rest = divmod(seconds_of_day % 86400, 3600)
    _text(patch, f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}", 10, 28, 0.9)
    return patch


def encode_video(path: Path, planes, rate: Fraction, width: int, height: int) -> int:
    """Encode 8-bit luma planes as full-range yuv420p H.264 in an MP4 and return the number of frames.

    Chroma is constant 128, so the picture is gray. The muxer's bitexact flag leaves out the FFmpeg version
    and creation time, which keeps the file byte-identical across runs.
    """
    buffer = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
    count = 0
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=rate, options=X264_OPTIONS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.color_range = 2  # full range (JPEG): luma 0-255 decodes to the same gray
        for luma in planes:
            buffer[:height] = luma
            frame = av.VideoFrame.from_ndarray(buffer, format="yuv420p")
            frame.pts = count
            frame.color_range = 2
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count


def _frames(video: VideoPlan, timeline: Timeline, sources: Sources):
    """Yield the screen picture of every frame of one video."""
    rng = np.random.default_rng([video.seed, 2])
    screen = build_screen(video.participant, video.session, rng)
    # Per-video brightness: a gain and gamma applied to the sector, as operators set them differently.
    gain, gamma = rng.uniform(0.8, 1.2), rng.uniform(0.85, 1.15)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma * gain, 0, 255).astype(np.uint8)
    clock_start = int(rng.integers(8 * 3600, 17 * 3600))
    x, y, width, height = sector_rectangle()
    clock_x, clock_y, clock_width, clock_height = CLOCK_BOX
    for stretch in timeline.stretches:
        player = SectorPlayer(stretch, timeline.rate, sources)
        for index in range(stretch.first, stretch.stop):
            screen[y:y + height, x:x + width] = cv2.LUT(player.frame(index), lut)
            second = clock_start + int(index / timeline.rate)
            screen[clock_y:clock_y + clock_height, clock_x:clock_x + clock_width] = _clock_patch(second)
            yield screen


def render_video(video: VideoPlan, path: Path, duration_s: tuple[float, float], fps: float) -> int:
    """Write one capture video and return its number of frames."""
    timeline = plan_timeline(video.seed, duration_s, frame_rate(fps))
    return encode_video(path, _frames(video, timeline, load_sources()), timeline.rate, SCREEN_WIDTH,
                        SCREEN_HEIGHT)


def _render_task(arguments: tuple) -> tuple[str, int]:
    video, path, duration_s, fps = arguments
    return video.name, render_video(video, path, duration_s, fps)


def write_tiny_video(path: Path) -> None:
    """Write a 3-frame 64x64 H.264 MP4, standing in for a capture that was set aside."""
    plane = np.zeros((64, 64), dtype=np.uint8)
    encode_video(path, (plane for _ in range(3)), Fraction(30), 64, 64)


# ----------------------------------------------------------------------------------------------------------
# Annotations, checksums and the whole tree.


def _segment_ids(rng: np.random.Generator, count: int) -> list[str]:
    """Return VIA-style segment ids: "1_" and 8 random letters or digits, as VIA 3 writes them."""
    alphabet = np.array(list(string.ascii_letters + string.digits))
    return ["1_" + "".join(rng.choice(alphabet, size=8)) for _ in range(count)]


def write_annotation(video: VideoPlan, path: Path, duration_s: tuple[float, float], fps: float) -> None:
    """Write the VIA 3 project of one video with its 4CV intervals and quirks."""
    plan = video.annotation
    intervals = [] if plan.empty else plan_timeline(video.seed, duration_s, frame_rate(fps)).intervals_s()
    rng = np.random.default_rng([video.seed, 3])
    if plan.shuffled and len(intervals) > 1:
        shift = int(rng.integers(1, len(intervals)))
        intervals = intervals[shift:] + intervals[:shift]
    write_project(path, plan.video_name, intervals, project_name=VIA_PROJECT_NAME,
                  values=[plan.value] * len(intervals), segment_ids=_segment_ids(rng, len(intervals)),
                  extra_attributes=("guidance_4CV",) if plan.guidance else (), created=VIA_CREATED_MS)


def file_checksums(root: str | Path) -> list[tuple[str, str]]:
    """Return (sha256 hex digest, path relative to ``root``) for every file under ``root``, sorted by path."""
    root = Path(root)
    checksums = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        checksums.append((digest.hexdigest(), path.relative_to(root).as_posix()))
    return checksums


def write_checksums(root: str | Path, target: str | Path) -> None:
    """Write the checksum list of a tree in ``sha256sum`` format ("<digest>  <relative path>" per line)."""
    lines = [f"{digest}  {relative}\n" for digest, relative in file_checksums(root)]
    with atomic_output(target) as temporary:
        temporary.write_text("".join(lines), encoding="utf-8")


def _remove_stale_folders(target: Path) -> None:
    """Remove temporary folders that earlier, interrupted runs left beside ``target``."""
    for folder in target.parent.glob(f".{target.name}.*-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if not folder.is_dir() or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            log.info("removing %s, left by an interrupted run", folder)
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass


def _write_tree(plan: TreePlan, root: Path, config: dict, workers: int) -> int:
    """Write every file of ``plan`` under ``root`` and return the total number of video frames."""
    duration_s = tuple(float(v) for v in config["duration_s"])
    fps = float(config["fps"])
    for folder in plan.empty_folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for relative in plan.ignored_files:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        write_tiny_video(root / relative)
    tasks = []
    for video in plan.videos:
        (root / video.folder).mkdir(parents=True, exist_ok=True)
        if video.annotation is not None:
            write_annotation(video, root / video.folder / video.annotation.name, duration_s, fps)
        tasks.append((video, root / video.folder / video.name, duration_s, fps))

    # Longest videos first, so the workers finish at about the same time.
    tasks.sort(key=lambda task: -plan_timeline(task[0].seed, duration_s, frame_rate(fps)).frame_count)
    total = 0
    if workers <= 1:
        results = map(_render_task, tasks)
    else:
        executor = ProcessPoolExecutor(max_workers=workers)
        results = executor.map(_render_task, tasks)
    try:
        for name, frames in results:
            log.info("wrote %s (%d frames)", name, frames)
            total += frames
    finally:
        if workers > 1:
            executor.shutdown(cancel_futures=True)
    return total


def generate_tree(raw_dir: str | Path, demo: dict | None, workers: int = 1) -> TreePlan:
    """Generate the demo tree at ``raw_dir``, replacing an older one only once the new tree is complete.

    The tree is built in a hidden folder beside ``raw_dir`` and renamed into place, so ``raw_dir`` is always
    either the old complete tree, briefly absent, or the new complete tree.

    Args:
        raw_dir: folder to create, e.g. resources/demo/raw.
        demo: the ``demo`` config block (seed, participants, duration_s, fps); missing keys take DEFAULTS.
        workers: processes that encode videos in parallel. The output does not depend on it.
    """
    config = settings(demo)
    plan = plan_tree(config)
    target = Path(raw_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_folders(target)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    log.info("generating %d videos for %d participants in %s (seed %s, %d workers)", len(plan.videos),
             config["participants"], partial, config["seed"], workers)
    try:
        partial.mkdir()
        frames = _write_tree(plan, partial, config, workers)
        if target.exists():
            os.rename(target, old)
        try:
            os.rename(partial, target)
        except OSError:
            if old.exists() and not target.exists():
                os.rename(old, target)
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    log.info("demo tree complete: %s (%d videos, %d frames)", target, len(plan.videos), frames)
    return plan

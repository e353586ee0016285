"""Read and write VGG Image Annotator (VIA 3) video projects with temporal segments."""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path

# Attribute names that carry the view label in the projects seen so far. Other attributes, such as the unused
# "guidance_4CV", are ignored when one of these is present in a segment.
LABEL_ATTRIBUTES = ("4CV", "TEMPORAL-SEGMENTS")


class AnnotationError(ValueError):
    """Malformed VIA project; the message names the file and the segment."""


@dataclass(frozen=True)
class Segment:
    """One temporal segment: times in seconds and the attribute value typed by the annotator."""

    id: str
    start_s: float
    end_s: float
    value: str
    counted: bool


@dataclass
class Annotation:
    """The 4CV intervals of one video, with the raw segments they came from."""

    path: Path
    file_name: str
    segments: list[Segment] = field(default_factory=list)
    intervals: list[tuple[float, float]] = field(default_factory=list)
    unknown_values: set[str] = field(default_factory=set)

    @property
    def annotated_s(self) -> float:
        """Total length of the merged 4CV intervals in seconds."""
        return sum(end - start for start, end in self.intervals)


def merge_intervals(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sort intervals and merge those that overlap or touch."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            project = json.load(handle)
    except json.JSONDecodeError as error:
        raise AnnotationError(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}). "
            "Re-export the project from VIA.") from None
    except UnicodeDecodeError as error:
        raise AnnotationError(f"{path}: not UTF-8 text ({error.reason}). Re-export the project from VIA.") from None
    if not isinstance(project, dict):
        raise AnnotationError(f"{path}: expected a VIA 3 project object, found a JSON {type(project).__name__}.")
    for key in ("metadata", "attribute", "file"):
        if not isinstance(project.get(key), dict):
            raise AnnotationError(
                f"{path}: missing or invalid '{key}' object; expected a VIA 3 project exported with "
                "'Save project'.")
    return project


def _segment_value(project: dict, attributes: dict) -> str:
    """Return the label of a segment, mapping option ids of dropdown attributes to their text."""
    if not attributes:
        return ""
    ids = [aid for aid in attributes if project["attribute"].get(aid, {}).get("aname") in LABEL_ATTRIBUTES]
    attribute_id = ids[0] if ids else sorted(attributes)[0]
    value = attributes[attribute_id]
    options = project["attribute"].get(attribute_id, {}).get("options") or {}
    if isinstance(value, str) and value in options:
        value = options[value]
    return "" if value is None else str(value)


def _parse_times(path: Path, segment_id: str, z: object) -> tuple[float, float]:
    where = f"{path}: segment '{segment_id}'"
    if (not isinstance(z, list) or len(z) != 2
            or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in z)):
        raise AnnotationError(f"{where} has z={z!r}; expected [start_s, end_s], two numbers in seconds.")
    start, end = float(z[0]), float(z[1])
    if not (math.isfinite(start) and math.isfinite(end)):
        raise AnnotationError(f"{where} has a non-finite time z={z!r}; fix the segment in VIA.")
    if start < 0 or end < 0:
        raise AnnotationError(f"{where} has a negative time z={z!r}; fix the segment in VIA.")
    if end <= start:
        raise AnnotationError(f"{where} ends at {end} s, not after its start at {start} s; fix the segment in VIA.")
    return start, end


def _video_file(path: Path, project: dict) -> tuple[str, str | None]:
    """Return the name and id of the project's single video file."""
    files = project["file"]
    if len(files) > 1:
        names = ", ".join(str(f.get("fname")) for f in files.values())
        raise AnnotationError(f"{path}: the project lists {len(files)} videos ({names}); expected one per project.")
    if not files:
        return "", None
    file_id, entry = next(iter(files.items()))
    return str(entry.get("fname", "")), str(entry.get("fid", file_id))


def read_project(path: str | Path, positive_values: tuple[str, ...] | list[str] = ()) -> Annotation:
    """Return the 4CV intervals of a VIA 3 project, sorted and with overlaps merged.

    Args:
        path: VIA 3 project JSON.
        positive_values: attribute values that mark 4CV. Empty counts every segment, which matches projects where
            only 4CV stretches were marked (values such as "_DEFAULT" left unset by the annotator).

    Raises:
        AnnotationError: bad JSON, no ``metadata``, or a segment whose ``z`` is not two increasing,
            non-negative numbers.
    """
    path = Path(path)
    project = _load_json(path)
    file_name, file_id = _video_file(path, project)
    annotation = Annotation(path=path, file_name=file_name)
    positive = set(positive_values)
    for segment_id, entry in project["metadata"].items():
        if not isinstance(entry, dict):
            raise AnnotationError(f"{path}: segment '{segment_id}' is a {type(entry).__name__}; expected an object.")
        if file_id is not None and "vid" in entry and str(entry["vid"]) != file_id:
            continue
        start, end = _parse_times(path, segment_id, entry.get("z"))
        value = _segment_value(project, entry.get("av") or {})
        counted = not positive or value in positive
        if not counted:
            annotation.unknown_values.add(value)
        annotation.segments.append(Segment(segment_id, start, end, value, counted))
    annotation.segments.sort(key=lambda s: (s.start_s, s.end_s, s.id))
    annotation.intervals = merge_intervals([(s.start_s, s.end_s) for s in annotation.segments if s.counted])
    return annotation


def project_dict(video_name: str, intervals: list[tuple[float, float]], attribute_name: str = "4CV",
                 value: str = "4CV", project_name: str = "echoflow", id_seed: int | None = 0, *,
                 values: list[str] | None = None, segment_ids: list[str] | None = None,
                 extra_attributes: tuple[str, ...] | list[str] = (), created: int = 0) -> dict:
    """Build a VIA 3 project with one video and one temporal segment per interval (seconds).

    Segments are stored in the order of ``intervals``, so a caller can reproduce projects whose segments are out
    of time order. ``values`` gives each segment its own attribute value (default: ``value`` for all), and
    ``segment_ids`` its metadata key (default: numbered ids derived from ``id_seed``, or random ones when
    ``id_seed`` is None). ``extra_attributes`` adds unused text attributes after the label attribute, such as
    "guidance_4CV" in the annotators' template. ``created`` is the project creation time in ms since the epoch.
    """
    if values is None:
        values = [value] * len(intervals)
    if segment_ids is None:
        token = secrets.token_hex(4) if id_seed is None else f"{id_seed:08x}"
        segment_ids = [f"1_{token}{index:04d}" for index in range(len(intervals))]
    if not len(values) == len(segment_ids) == len(intervals):
        raise ValueError(f"got {len(intervals)} intervals, {len(values)} values and {len(segment_ids)} segment ids; "
                         "pass one value and one id per interval.")
    metadata = {}
    for segment_id, (start, end), segment_value in zip(segment_ids, intervals, values):
        metadata[segment_id] = {
            "vid": "1", "flg": 0, "z": [round(float(start), 5), round(float(end), 5)], "xy": [],
            "av": {"1": segment_value},
        }
    attributes = {}
    for index, name in enumerate([attribute_name, *extra_attributes]):
        attributes[str(index + 1)] = {"aname": name, "anchor_id": "FILE1_Z2_XY0", "type": 2, "desc": "",
                                      "options": {}, "default_option_id": ""}
    return {
        "project": {"pid": "__VIA_PROJECT_ID__", "rev": "__VIA_PROJECT_REV_ID__",
                    "rev_timestamp": "__VIA_PROJECT_REV_TIMESTAMP__", "pname": project_name,
                    "creator": "VGG Image Annotator (http://www.robots.ox.ac.uk/~vgg/software/via)",
                    "created": created, "vid_list": ["1"]},
        "config": {"file": {"loc_prefix": {"1": "", "2": "", "3": "", "4": ""}},
                   "ui": {"file_content_align": "center", "file_metadata_editor_visible": True,
                          "spatial_metadata_editor_visible": True,
                          "temporal_segment_metadata_editor_visible": True,
                          "spatial_region_label_attribute_id": "", "gtimeline_visible_row_count": "4"}},
        "attribute": attributes,
        "file": {"1": {"fid": "1", "fname": video_name, "type": 4, "loc": 1, "src": ""}},
        "metadata": metadata,
        "view": {"1": {"fid_list": ["1"]}},
    }


def write_project(path: str | Path, video_name: str, intervals: list[tuple[float, float]],
                  attribute_name: str = "4CV", value: str = "4CV", project_name: str = "echoflow",
                  **options) -> None:
    """Write a VIA 3 project JSON that VIA opens beside the video named ``video_name``.

    ``options`` are passed to :func:`project_dict` (``values``, ``segment_ids``, ``extra_attributes``, ...).
    """
    project = project_dict(video_name, intervals, attribute_name, value, project_name, **options)
    Path(path).write_text(json.dumps(project, separators=(",", ":")), encoding="utf-8")

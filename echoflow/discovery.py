"""Find the videos and annotations in a raw tree and pair them by participant and session."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from echoflow.via import AnnotationError, read_project

MANIFEST_COLUMNS = ["video_id", "participant", "session", "video", "annotation", "status", "reason",
                    "n_segments", "annotated_s"]
ANNOTATION_COLUMNS = ["video_id", "annotation", "segment", "start_s", "end_s", "value", "counted", "note"]
IGNORED_COLUMNS = ["path", "reason"]

SESSION_PATTERN = re.compile(r"^[Tt]\d+$")
EXTRAS_FOLDER = "extras"
# Snakemake 9 replaces "<name>" in every input path with a path variable and fails when none is defined.
SNAKEMAKE_PATHVAR = re.compile(r"<[a-z][a-z0-9_]*>")


@dataclass
class SessionFiles:
    """The files found in one <participant>/<session>/ folder."""

    participant: str
    session: str
    videos: list[Path]
    annotations: list[Path]


def video_id(participant: str, session: str) -> str:
    """Return a stable identifier that is safe as a file name, e.g. ``01NVb-003-050_T1``."""
    text = unicodedata.normalize("NFKD", f"{participant}_{session.upper()}")
    text = text.encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return text or "video"


def _is_video(path: Path) -> bool:
    return path.suffix.lower() == ".mp4"


def _is_annotation(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def _ignore_reason(path: Path, relative: Path) -> str | None:
    """Return why a file is not part of the dataset, or None if it may be."""
    parts = relative.parts
    if any(part.startswith(".") for part in parts):
        return "hidden file or folder"
    if any(part.lower() == EXTRAS_FOLDER for part in parts[:-1]):
        return "inside an extras/ folder"
    if len(parts) != 3:
        return "not inside a <participant>/<session>/ folder"
    if not SESSION_PATTERN.match(parts[1]):
        return f"session folder '{parts[1]}' is not named T1, T2, T3, ..."
    if path.name.lower().endswith("_mp4_"):
        return "set aside by renaming to *_mp4_"
    if not (_is_video(path) or _is_annotation(path)):
        return "neither an .mp4 video nor a .json annotation"
    return None


def scan(raw_dir: str | Path) -> tuple[list[SessionFiles], list[tuple[str, str]]]:
    """List the session folders of a raw tree and the files that are ignored, with the reason for each."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(
            f"raw_dir {str(raw_dir)!r} not found or not a directory. Set raw_dir in the config to the folder that contains "
            "<participant>/<T1|T2|T3>/ folders, or to 'demo'.")
    sessions: dict[tuple[str, str], SessionFiles] = {}
    ignored: list[tuple[str, str]] = []
    for path in sorted(p for p in raw_dir.rglob("*") if p.is_file() or p.is_symlink()):
        relative = path.relative_to(raw_dir)
        reason = _ignore_reason(path, relative)
        if reason is not None:
            ignored.append((str(path), reason))
            continue
        participant, session = relative.parts[0], relative.parts[1]
        entry = sessions.setdefault((participant, session), SessionFiles(participant, session, [], []))
        (entry.videos if _is_video(path) else entry.annotations).append(path)
    return [sessions[key] for key in sorted(sessions)], ignored


def _choose_annotation(files: SessionFiles) -> tuple[Path | None, str | None]:
    """Pick the session's annotation; prefer names ending in 4CV.json when there are several."""
    if len(files.annotations) <= 1:
        return (files.annotations[0] if files.annotations else None), None
    preferred = [p for p in files.annotations if p.stem.lower().endswith("4cv")]
    if len(preferred) == 1:
        return preferred[0], None
    names = ", ".join(p.name for p in files.annotations)
    return None, (f"{len(files.annotations)} annotation files in one session folder ({names}); "
                  "keep one, or rename the others to end in _json_")


def _row(files: SessionFiles, identifier: str, video: Path | None, annotation: Path | None) -> dict:
    return {"video_id": identifier, "participant": files.participant, "session": files.session.upper(),
            "video": str(video) if video else "", "annotation": str(annotation) if annotation else "",
            "status": "ok", "reason": "", "n_segments": 0, "annotated_s": 0.0}


def _unique_ids(sessions: list[SessionFiles]) -> list[str]:
    """Return one video id per session, suffixing ids that sanitising made equal."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for files in sessions:
        base = video_id(files.participant, files.session)
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


def _pathvar_in(paths: list[Path | None]) -> str | None:
    """Return the first "<name>" in the paths, which Snakemake would expand as a path variable."""
    for path in paths:
        match = SNAKEMAKE_PATHVAR.search(str(path)) if path is not None else None
        if match:
            return match.group(0)
    return None


def build_manifest(raw_dir: str | Path, positive_values: list[str] | tuple[str, ...] = (),
                   empty_project: str = "exclude") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Pair each video with its annotation and decide which videos the workflow uses.

    Returns:
        (manifest, annotation segments, ignored files) tables with MANIFEST_COLUMNS, ANNOTATION_COLUMNS and
        IGNORED_COLUMNS.
    """
    sessions, ignored = scan(raw_dir)
    rows, segment_rows = [], []
    for files, identifier in zip(sessions, _unique_ids(sessions)):
        if not files.videos:
            for path in files.annotations:
                ignored.append((str(path), "annotation without a video in its session folder"))
            continue
        if len(files.videos) > 1:
            names = ", ".join(p.name for p in files.videos)
            for index, path in enumerate(files.videos):
                row = _row(files, f"{identifier}-{index + 1}", path, None)
                row.update(status="excluded", reason=(
                    f"{len(files.videos)} videos in one session folder ({names}); keep one and move the others "
                    "into an extras/ folder"))
                rows.append(row)
            continue
        annotation, problem = _choose_annotation(files)
        row = _row(files, identifier, files.videos[0], annotation)
        rows.append(row)
        pathvar = _pathvar_in([files.videos[0], annotation])
        if problem:
            row.update(status="excluded", reason=problem)
        elif pathvar:
            row.update(status="excluded", reason=(
                f"the path contains {pathvar!r}, which Snakemake reads as a path variable; rename the file or "
                "folder without angle brackets"))
        elif annotation is None:
            row.update(status="excluded", reason="no annotation (.json) in the session folder")
        else:
            _apply_annotation(row, annotation, positive_values, empty_project, segment_rows)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    segments = pd.DataFrame(segment_rows, columns=ANNOTATION_COLUMNS)
    ignored_table = pd.DataFrame(ignored, columns=IGNORED_COLUMNS).sort_values("path", ignore_index=True)
    return manifest, segments, ignored_table


def _apply_annotation(row: dict, path: Path, positive_values, empty_project: str, segment_rows: list) -> None:
    """Fill the annotation columns of a manifest row and list its segments in the QC table."""
    try:
        annotation = read_project(path, positive_values)
    except AnnotationError as error:
        row.update(status="excluded", reason=f"invalid annotation: {error}")
        return
    for segment in annotation.segments:
        note = "" if segment.counted else f"value {segment.value!r} is not in annotations.positive_values"
        segment_rows.append({"video_id": row["video_id"], "annotation": str(path), "segment": segment.id,
                             "start_s": segment.start_s, "end_s": segment.end_s, "value": segment.value,
                             "counted": segment.counted, "note": note})
    row["n_segments"] = len(annotation.segments)
    row["annotated_s"] = round(annotation.annotated_s, 3)
    if not annotation.segments and empty_project == "exclude":
        row.update(status="excluded", reason=(
            "annotation has no segments (probably never annotated); set annotations.empty_project to "
            "'background' to use the video as background"))

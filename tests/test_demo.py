"""Demo tree: layout and names of the real tree, real H.264 videos, frame-exact annotations, determinism."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import yaml

from echoflow import demo
from echoflow.discovery import build_manifest
from echoflow.via import read_project

REPOSITORY = Path(__file__).resolve().parents[1]
# Small enough for a test run: the minimum participants, duration and frame rate (about 800 frames in all).
SMALL = {"seed": 11, "participants": 6, "duration_s": [12, 13], "fps": 5}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Generate the small demo tree once for the module; return its root and plan."""
    root = tmp_path_factory.mktemp("demo") / "raw"
    plan = demo.generate_tree(root, SMALL, workers=2)
    return root, plan


def relative_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def capture_videos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.mp4") if "extras" not in p.parts)


def test_tree_has_every_naming_variant(tree):
    root, _ = tree
    names = [path.rsplit("/", 1)[-1] for path in relative_files(root)]
    patterns = {
        "video with space": r"^01NVb-003-\d{3}-[123] echo\.mp4$",
        "video with dash": r"^01NVb-003-\d{3}-[123]-echo\.mp4$",
        "continued video": r"^01NVb-003-\d{3}-[123]-echo-cont\.mp4$",
        "annotation 4CV": r"^01NVb-003-\d{3}-[123]-4CV\.json$",
        "annotation underscore": r"^01NVb_003_\d{3}_T[123]_4CV\.json$",
        "annotation lower case": r"^01NVb-003-\d{3}-[123]-4cv\.json$",
        "continued video set aside": r"^01NVb-003-\d{3}-[123] echo cont_mp4_$",
    }
    for variant, pattern in patterns.items():
        assert any(re.match(pattern, name) for name in names), f"no file for {variant} ({pattern})"


def test_tree_has_ignored_and_empty_cases(tree):
    root, plan = tree
    files = relative_files(root)
    in_extras = [f for f in files if "/extras/" in f]
    assert any(f.count("/") == 2 for f in in_extras), "no participant-level extras/ folder"
    assert any(f.count("/") == 3 for f in in_extras), "no session-level extras/ folder"
    assert all(f.endswith("_mp4_") for f in in_extras)
    assert any(f.endswith("_mp4_") and f.count("/") == 2 for f in files), "no *_mp4_ file in a session folder"
    empty = [p for p in root.glob("*/T*") if p.is_dir() and not any(p.iterdir())]
    assert empty
    for relative in plan.ignored_files:
        assert (root / relative).stat().st_size < 4096
    participants = sorted(p.name for p in root.iterdir())
    assert len(participants) == 6
    assert all(re.match(r"^01NVb-003-\d{3}$", name) for name in participants)


def test_videos_are_full_hd_h264(tree):
    root, plan = tree
    videos = capture_videos(root)
    assert len(videos) == len(plan.videos)
    for path in videos:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert (stream.width, stream.height) == (1920, 1080)
            assert float(stream.average_rate) == pytest.approx(SMALL["fps"])
        capture = cv2.VideoCapture(str(path))
        ok, picture = capture.read()
        frame_count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        capture.release()
        assert ok, f"OpenCV could not decode {path}"
        assert picture.shape == (1080, 1920, 3)
        assert 12 * SMALL["fps"] <= frame_count <= 13 * SMALL["fps"] + 1


def test_manifest_uses_annotated_videos(tree):
    root, plan = tree
    manifest, segments, ignored = build_manifest(root)
    ok = manifest[manifest["status"] == "ok"]
    excluded = manifest[manifest["status"] == "excluded"]
    annotated = [v for v in plan.videos if v.annotation is not None and not v.annotation.empty]
    assert len(ok) == len(annotated)
    assert len(excluded) == 2
    reasons = " ".join(excluded["reason"])
    assert "no annotation" in reasons
    assert "no segments" in reasons
    assert ok["n_segments"].astype(int).between(2, 3).all()
    ignored_paths = set(ignored["path"])
    for relative in plan.ignored_files:
        assert str(root / relative) in ignored_paths
    assert len(ignored) == len(plan.ignored_files)
    assert set(segments["counted"]) == {True}


def test_annotations_have_real_quirks(tree):
    root, _ = tree
    projects = sorted(root.rglob("*.json"))
    raw = {path: json.loads(path.read_text(encoding="utf-8")) for path in projects}
    assert any(len(p["attribute"]) == 2 and p["attribute"]["2"]["aname"] == "guidance_4CV" for p in raw.values())
    assert any(m["av"]["1"] == "_DEFAULT" for p in raw.values() for m in p["metadata"].values())
    assert any(not p["metadata"] for p in raw.values())
    starts = [[m["z"][0] for m in p["metadata"].values()] for p in raw.values()]
    assert any(s != sorted(s) for s in starts), "no project with segments out of time order"
    for path, project in raw.items():
        assert project["project"]["pname"] == "echo_4CV_template_VIA Project"
        assert all(re.match(r"^1_[A-Za-z0-9]{8}$", key) for key in project["metadata"])
        annotation = read_project(path)
        assert re.match(r"^01NVb-003-\d{3}-[123] echo\.mp4$", annotation.file_name)
        for start, end in annotation.intervals:
            assert 2.0 <= end - start <= 10.0
        assert annotation.annotated_s <= 0.5 * 13


def test_4cv_shown_exactly_inside_intervals(tree):
    """Every decoded frame shows the 4CV cine if and only if its timestamp lies in an annotated interval."""
    root, _ = tree
    x, y, width, height = demo.sector_rectangle()

    def signature(picture):
        small = cv2.resize(picture, (68, 48), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        small -= small.mean()
        norm = np.linalg.norm(small)
        return small / norm if norm > 0 else small

    cine = np.stack([signature(frame) for frame in demo.load_sources().cine])
    manifest, _, _ = build_manifest(root)
    checked = 0
    for row in manifest[manifest["status"] == "ok"].itertuples():
        intervals = read_project(row.annotation).intervals
        with av.open(row.video) as container:
            for frame in container.decode(video=0):
                sector = frame.to_ndarray(format="gray")[y:y + height, x:x + width]
                shows_cine = float((cine @ signature(sector)).max()) > 0.9
                inside = any(start <= frame.time <= end for start, end in intervals)
                assert shows_cine == inside, f"{row.video} frame at {frame.time:.4f} s"
                checked += 1
    assert checked >= 11 * 12 * SMALL["fps"]


def test_box_is_black_outside_sector(tree):
    root, plan = tree
    box_x, box_y, box_width, box_height = demo.BOX
    x, y, width, height = demo.sector_rectangle()
    outside = np.ones((box_height, box_width), dtype=np.uint8)
    outside[y - box_y:y - box_y + height, x - box_x:x - box_x + width] -= demo.sector_mask()
    # H.264 ringing reaches up to one 16x16 macroblock beyond the fan's edge and the box's border, so test
    # only pixels at least 16 px from both.
    outside = cv2.erode(outside, np.ones((33, 33), np.uint8))
    outside[:16, :] = 0
    outside[-16:, :] = 0
    outside[:, :16] = 0
    outside[:, -16:] = 0
    outside = outside.astype(bool)
    for path in capture_videos(root)[:3]:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                box = frame.to_ndarray(format="gray")[box_y:box_y + box_height, box_x:box_x + box_width]
                assert box[outside].max() <= 8, f"{path} frame at {frame.time:.3f} s"


def test_same_seed_same_bytes(tree, tmp_path):
    root, _ = tree
    again = tmp_path / "raw"
    demo.generate_tree(again, SMALL, workers=1)
    assert demo.file_checksums(again) == demo.file_checksums(root)


def test_other_seed_other_tree():
    first = demo.plan_tree(SMALL)
    second = demo.plan_tree({**SMALL, "seed": SMALL["seed"] + 1})
    assert [v.name for v in first.videos] != [v.name for v in second.videos]
    rate = demo.frame_rate(SMALL["fps"])
    first_intervals = [demo.plan_timeline(v.seed, (12, 13), rate).cine_frames for v in first.videos]
    second_intervals = [demo.plan_timeline(v.seed, (12, 13), rate).cine_frames for v in second.videos]
    assert first_intervals != second_intervals


def test_checksum_list_verifies(tree, tmp_path):
    root, _ = tree
    stamp = tmp_path / "raw.sha256"
    demo.write_checksums(root, stamp)
    lines = stamp.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(relative_files(root))
    result = subprocess.run(["sha256sum", "--check", "--quiet", str(stamp)], cwd=root, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_failed_run_keeps_old_tree(tmp_path, monkeypatch):
    target = tmp_path / "raw"
    target.mkdir()
    (target / "old.txt").write_text("old tree", encoding="utf-8")

    def fail(*arguments):
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(demo, "render_video", fail)
    with pytest.raises(RuntimeError, match="encoder failed"):
        demo.generate_tree(target, SMALL, workers=1)
    assert (target / "old.txt").read_text(encoding="utf-8") == "old tree"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_new_tree_replaces_old(tmp_path, monkeypatch):
    target = tmp_path / "raw"
    target.mkdir()
    (target / "old.txt").write_text("old tree", encoding="utf-8")
    def write_empty(video, path, duration_s, fps):
        path.write_bytes(b"")
        return 0

    monkeypatch.setattr(demo, "render_video", write_empty)
    plan = demo.generate_tree(target, SMALL, workers=1)
    assert not (target / "old.txt").exists()
    assert all((target / v.folder / v.name).exists() for v in plan.videos)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.parametrize("key, value", [("participants", 5), ("duration_s", [8, 20]), ("duration_s", [30, 20])])
def test_invalid_settings_rejected(key, value):
    with pytest.raises(ValueError, match=f"demo.{key}"):
        demo.settings({**SMALL, key: value})


def test_ntsc_frame_rate():
    assert demo.frame_rate(29.97) == demo.Fraction(30000, 1001)
    assert demo.frame_rate(30) == 30
    assert demo.frame_rate(10) == 10
    assert demo.frame_rate(5) == 5
    assert demo.frame_rate(59.94) == demo.Fraction(60000, 1001)
    assert demo.frame_rate(12.5) == demo.Fraction(25, 2)


@pytest.mark.workflow
def test_snakemake_builds_manifest_from_demo(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"raw_dir": "demo", "demo": SMALL}), encoding="utf-8")
    command = [sys.executable, "-m", "snakemake", "-s", str(REPOSITORY / "Snakefile"), "--directory", str(tmp_path),
               "--configfile", str(config), "--cores", "2", "results/manifest.tsv"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    assert result.returncode == 0, result.stderr[-3000:]
    stamp = tmp_path / "resources" / "demo" / "raw.sha256"
    assert stamp.exists()
    assert not list((tmp_path / "resources" / "demo").glob(".raw.*"))
    manifest = (tmp_path / "results" / "manifest.tsv").read_text(encoding="utf-8").splitlines()
    statuses = [line.split("\t")[5] for line in manifest[1:]]
    assert statuses.count("ok") == 11
    assert statuses.count("excluded") == 2
    assert (tmp_path / "logs" / "demo_data.log").exists()

"""Pairing of videos and annotations in a raw tree with the naming variants of real captures."""

import json
from pathlib import Path

import pytest

from echoflow.discovery import build_manifest, video_id
from echoflow.via import project_dict

GOOD = [(10.0, 15.0)]


def annotate(path: Path, intervals=GOOD, inner_name="x echo.mp4") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(project_dict(inner_name, intervals)))


def touch(path: Path, content: bytes = b"\0") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


@pytest.fixture
def raw_tree(tmp_path) -> Path:
    """A tree with every naming variant of the real data."""
    root = tmp_path / "raw"
    touch(root / "01NVb-003-050/T1/01NVb-003-050-1 echo.mp4")
    annotate(root / "01NVb-003-050/T1/01NVb-003-050-1-4CV.json")
    touch(root / "01NVb-003-050/T2/01NVb-003-050-2 echo.mp4")
    annotate(root / "01NVb-003-050/T2/01NVb-003-050-2-4cv.json")
    (root / "01NVb-003-050/T3").mkdir(parents=True)
    touch(root / "01NVb-003-056/T2/01NVb-003-056-2 echo.mp4")
    touch(root / "01NVb-003-056/T2/01NVb-003-056-2 echo cont_mp4_")
    annotate(root / "01NVb-003-056/T2/01NVb-003-056-2-4CV.json")
    touch(root / "01NVb-003-060/T1/01NVb-003-060-1 echo.mp4")
    annotate(root / "01NVb-003-060/T1/01NVb-003-060-1-4CV.json", intervals=[])
    touch(root / "01NVb-003-060/T2/extras/01NVb-003-060-2 echo_mp4_")
    touch(root / "01NVb-003-072/T1/01NVb-003-072-1-echo.mp4")
    annotate(root / "01NVb-003-072/T1/01NVb_003_072_T1_4CV.json", inner_name="01NVb-003-072-1 echo.mp4")
    touch(root / "01NVb-003-072/T2/01NVb-003-072-2-echo-cont.mp4")
    annotate(root / "01NVb-003-072/T2/01NVb_003_072_T2_4CV.json")
    touch(root / "01NVb-003-072/T2/extras/01NVb-003-072-2-echo_mp4_")
    touch(root / "01NVb-003-080/T1/01NVb-003-080-1-echo.mp4")
    touch(root / "01NVb-003-080/T2/01NVb-003-080-2 echo_mp4_")
    touch(root / "01NVb-003-080/notes.txt")
    (root / "01NVb-003-055/T1").mkdir(parents=True)
    return root


def table_by_id(manifest):
    return {row.video_id: row for row in manifest.itertuples()}


def test_variants_pair_by_folder(raw_tree):
    manifest, _, _ = build_manifest(raw_tree)
    rows = table_by_id(manifest)
    assert sorted(rows) == ["01NVb-003-050_T1", "01NVb-003-050_T2", "01NVb-003-056_T2", "01NVb-003-060_T1",
                            "01NVb-003-072_T1", "01NVb-003-072_T2", "01NVb-003-080_T1"]
    assert rows["01NVb-003-072_T1"].annotation.endswith("01NVb_003_072_T1_4CV.json")
    assert rows["01NVb-003-072_T1"].video.endswith("01NVb-003-072-1-echo.mp4")
    assert rows["01NVb-003-050_T2"].annotation.endswith("-4cv.json")
    assert rows["01NVb-003-072_T2"].video.endswith("01NVb-003-072-2-echo-cont.mp4")
    assert rows["01NVb-003-050_T1"].status == "ok"
    assert rows["01NVb-003-050_T1"].annotated_s == pytest.approx(5.0)


def test_missing_annotation_excluded(raw_tree):
    manifest, _, _ = build_manifest(raw_tree)
    row = table_by_id(manifest)["01NVb-003-080_T1"]
    assert row.status == "excluded"
    assert "no annotation" in row.reason


def test_empty_project_excluded_by_default(raw_tree):
    manifest, _, _ = build_manifest(raw_tree)
    row = table_by_id(manifest)["01NVb-003-060_T1"]
    assert row.status == "excluded"
    assert "no segments" in row.reason
    assert "empty_project" in row.reason


def test_empty_project_as_background(raw_tree):
    manifest, _, _ = build_manifest(raw_tree, empty_project="background")
    row = table_by_id(manifest)["01NVb-003-060_T1"]
    assert row.status == "ok"
    assert row.annotated_s == 0


def test_extras_and_set_aside_files_ignored(raw_tree):
    _, _, ignored = build_manifest(raw_tree)
    reasons = {Path(path).name: reason for path, reason in ignored.itertuples(index=False)}
    assert reasons["01NVb-003-060-2 echo_mp4_"] == "inside an extras/ folder"
    assert reasons["01NVb-003-072-2-echo_mp4_"] == "inside an extras/ folder"
    assert reasons["01NVb-003-056-2 echo cont_mp4_"] == "set aside by renaming to *_mp4_"
    assert reasons["01NVb-003-080-2 echo_mp4_"] == "set aside by renaming to *_mp4_"
    assert "not inside a <participant>/<session>/ folder" in reasons["notes.txt"]


def test_two_videos_in_session_excluded(raw_tree):
    touch(raw_tree / "01NVb-003-050/T1/01NVb-003-050-1 echo second.mp4")
    manifest, _, _ = build_manifest(raw_tree)
    rows = manifest[manifest["participant"] == "01NVb-003-050"]
    session = rows[rows["session"] == "T1"]
    assert len(session) == 2
    assert set(session["status"]) == {"excluded"}
    assert all("2 videos in one session folder" in reason for reason in session["reason"])
    assert session["video_id"].is_unique


def test_malformed_annotation_excluded_with_reason(raw_tree):
    (raw_tree / "01NVb-003-050/T1/01NVb-003-050-1-4CV.json").write_text('{"project": {}}')
    manifest, _, _ = build_manifest(raw_tree)
    row = table_by_id(manifest)["01NVb-003-050_T1"]
    assert row.status == "excluded"
    assert "invalid annotation" in row.reason
    assert "metadata" in row.reason or "attribute" in row.reason


def test_unknown_values_listed_in_qc(raw_tree):
    path = raw_tree / "01NVb-003-050/T1/01NVb-003-050-1-4CV.json"
    project = json.loads(path.read_text())
    project["metadata"]["1_extra"] = {"vid": "1", "flg": 0, "z": [20.0, 22.0], "xy": [], "av": {"1": "_DEFAULT"}}
    path.write_text(json.dumps(project))
    _, segments, _ = build_manifest(raw_tree, positive_values=["4CV"])
    unknown = segments[segments["value"] == "_DEFAULT"]
    assert len(unknown) == 1
    assert not unknown.iloc[0]["counted"]
    assert "positive_values" in unknown.iloc[0]["note"]


def test_odd_names_give_safe_ids(tmp_path):
    root = tmp_path / "raw"
    touch(root / "Pätient <1> & co/T1/v echo.mp4")
    annotate(root / "Pätient <1> & co/T1/v-4CV.json")
    manifest, _, _ = build_manifest(root)
    identifier = manifest.iloc[0]["video_id"]
    assert identifier == "Patient-1-co_T1"
    assert manifest.iloc[0]["participant"] == "Pätient <1> & co"


def test_video_id_is_stable():
    assert video_id("01NVb-003-050", "T1") == "01NVb-003-050_T1"
    assert video_id("01NVb-003-050", "t2") == "01NVb-003-050_T2"


def test_missing_raw_dir_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="raw_dir"):
        build_manifest(tmp_path / "nope")


def test_raw_tree_left_unchanged(raw_tree):
    before = {p: p.stat().st_mtime_ns for p in raw_tree.rglob("*")}
    build_manifest(raw_tree)
    after = {p: p.stat().st_mtime_ns for p in raw_tree.rglob("*")}
    assert before == after

"""VIA 3 project parsing: every quirk of real annotation files, and malformed files."""

import json
import os
from pathlib import Path

import pytest

from echoflow.via import AnnotationError, merge_intervals, project_dict, read_project, write_project

# Real VIA projects written by clinicians; parsed when the folder exists.
REAL_ANNOTATIONS = Path(os.environ.get(
    "ECHOFLOW_VIA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "via-annotations"))


def write_json(path: Path, project) -> Path:
    path.write_text(json.dumps(project), encoding="utf-8")
    return path


def project_with(segments, attributes=None, av_key="1"):
    """Build a VIA 3 project whose metadata contains the given (z, value) pairs."""
    project = project_dict("P-1 echo.mp4", [])
    if attributes is not None:
        project["attribute"] = attributes
    for index, (z, value) in enumerate(segments):
        project["metadata"][f"1_seg{index}"] = {"vid": "1", "flg": 0, "z": z, "xy": [], "av": {av_key: value}}
    return project


def test_unsorted_segments_sorted(tmp_path):
    path = write_json(tmp_path / "a.json", project_with([([30.0, 35.0], "4CV"), ([10.0, 12.5], "4CV")]))
    annotation = read_project(path)
    assert annotation.intervals == [(10.0, 12.5), (30.0, 35.0)]
    assert [s.id for s in annotation.segments] == ["1_seg1", "1_seg0"]


def test_overlapping_segments_merged(tmp_path):
    project = project_with([([10.0, 14.0], "4CV"), ([12.0, 16.0], "4CV"), ([16.0, 17.0], "4CV"), ([20, 21], "4CV")])
    annotation = read_project(write_json(tmp_path / "a.json", project))
    assert annotation.intervals == [(10.0, 17.0), (20.0, 21.0)]
    assert annotation.annotated_s == pytest.approx(8.0)


def test_empty_project_has_no_intervals(tmp_path):
    annotation = read_project(write_json(tmp_path / "a.json", project_with([])))
    assert annotation.segments == []
    assert annotation.intervals == []


def test_default_value_counts_when_all_count(tmp_path):
    path = write_json(tmp_path / "a.json", project_with([([1.0, 3.0], "_DEFAULT"), ([5.0, 8.0], "4CV")]))
    assert read_project(path).intervals == [(1.0, 3.0), (5.0, 8.0)]


def test_positive_values_filter_and_report(tmp_path):
    path = write_json(tmp_path / "a.json", project_with([([1.0, 3.0], "_DEFAULT"), ([5.0, 8.0], "4CV")]))
    annotation = read_project(path, positive_values=["4CV"])
    assert annotation.intervals == [(5.0, 8.0)]
    assert annotation.unknown_values == {"_DEFAULT"}
    assert [s.counted for s in annotation.segments] == [False, True]


def test_guidance_attribute_ignored(tmp_path):
    attributes = {"1": {"aname": "4CV", "type": 2, "options": {}},
                  "2": {"aname": "guidance_4CV", "type": 2, "options": {}}}
    project = project_with([([2.0, 6.0], "4CV")], attributes)
    project["metadata"]["1_seg0"]["av"]["2"] = "probe tilted"
    annotation = read_project(write_json(tmp_path / "a.json", project), positive_values=["4CV"])
    assert annotation.intervals == [(2.0, 6.0)]
    assert annotation.segments[0].value == "4CV"


def test_dropdown_option_ids_mapped(tmp_path):
    attributes = {"1": {"aname": "TEMPORAL-SEGMENTS", "type": 4, "options": {"0": "4CV_NP", "1": "OTHER"}}}
    project = project_with([([2.0, 6.0], "0"), ([7.0, 9.0], "1")], attributes)
    annotation = read_project(write_json(tmp_path / "a.json", project), positive_values=["4CV_NP"])
    assert annotation.intervals == [(2.0, 6.0)]
    assert annotation.unknown_values == {"OTHER"}


def test_dropdown_plain_text_value(tmp_path):
    attributes = {"1": {"aname": "TEMPORAL-SEGMENTS", "type": 4, "options": {}}}
    project = project_with([([2.0, 6.0], "4CV_NP")], attributes)
    annotation = read_project(write_json(tmp_path / "a.json", project), positive_values=["4CV_NP"])
    assert annotation.intervals == [(2.0, 6.0)]


def test_file_name_inside_project(tmp_path):
    annotation = read_project(write_json(tmp_path / "01NVb_003_072_T1_4CV.json", project_with([])))
    assert annotation.file_name == "P-1 echo.mp4"


@pytest.mark.parametrize("text, words", [
    ("{not json", ["not valid JSON", "line 1"]),
    ("[1, 2]", ["expected a VIA 3 project object"]),
    ('{"project": {}, "attribute": {}, "file": {}}', ["missing or invalid 'metadata'"]),
])
def test_malformed_file_names_problem(tmp_path, text, words):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(AnnotationError) as raised:
        read_project(path)
    assert str(path) in str(raised.value)
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize("z, words", [
    ([5.0, 2.0], ["ends at 2.0 s", "start at 5.0 s"]),
    ([-1.0, 2.0], ["negative time"]),
    ([3.0], ["expected [start_s, end_s]"]),
    (["a", "b"], ["expected [start_s, end_s]"]),
    ([4.0, 4.0], ["not after its start"]),
])
def test_bad_segment_times_name_segment(tmp_path, z, words):
    path = write_json(tmp_path / "a.json", project_with([([1.0, 2.0], "4CV"), (z, "4CV")]))
    with pytest.raises(AnnotationError) as raised:
        read_project(path)
    assert "1_seg1" in str(raised.value)
    assert str(path) in str(raised.value)
    for word in words:
        assert word in str(raised.value)


def test_write_project_round_trip(tmp_path):
    intervals = [(1.25, 4.5), (10.0, 18.75)]
    write_project(tmp_path / "p.json", "01NVb-003-050-1 echo.mp4", intervals)
    annotation = read_project(tmp_path / "p.json")
    assert annotation.intervals == intervals
    assert annotation.file_name == "01NVb-003-050-1 echo.mp4"


def test_merge_touching_intervals():
    assert merge_intervals([(3, 4), (1, 2), (2, 3)]) == [(1, 4)]


@pytest.mark.skipif(not REAL_ANNOTATIONS.is_dir(), reason="real annotation folder not present")
def test_real_annotations_parse():
    files = sorted(REAL_ANNOTATIONS.glob("*.json"))
    assert files
    for path in files:
        annotation = read_project(path)
        starts = [start for start, _ in annotation.intervals]
        assert starts == sorted(starts)
        assert all(end > start >= 0 for start, end in annotation.intervals)
        if path.name == "echo_4CV_template.json" or path.name.startswith("01NVb-003-077-1"):
            assert annotation.intervals == []
        else:
            assert annotation.intervals, path.name

"""Per-frame labels from VIA intervals, checked frame by frame against videos that encode their index."""

import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import synthetic
from echoflow.frames import build_store, open_store
from echoflow.labels import build_labels, label_frames
from echoflow.via import write_project

LAYOUT = synthetic.Layout()
PREPROCESS = {"crop": LAYOUT.crop, "size": [64, 48], "mask": "auto", "stride": 1, "on_bad_video": "exclude"}
# Irregular frame times (20 ms and 50 ms gaps), so labels by index / fps would differ from labels by time.
TIMES_S = np.round(np.cumsum(np.where(np.arange(60) % 4 == 0, 0.050, 0.020)) - 0.050, 6)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labels")
    video = synthetic.write_video(folder / "video.mp4", len(TIMES_S), LAYOUT, timestamps_s=TIMES_S.tolist())
    path = folder / "video.h5"
    build_store(video, path, PREPROCESS)
    return path


def run_labels(store, tmp_path, intervals, **options):
    annotation = tmp_path / "video.json"
    write_project(annotation, "video.mp4", intervals)
    labels_path = tmp_path / "labels.tsv"
    intervals_path = tmp_path / "intervals.tsv"
    build_labels(annotation, store, labels_path, intervals_path, **options)
    return pd.read_csv(labels_path, sep="\t"), pd.read_csv(intervals_path, sep="\t", keep_default_na=False)


def stored_indices(store):
    """Read the index that each stored frame shows."""
    with open_store(store) as handle:
        frames = handle["frames"][:]
        x, y, width, height = (int(v) for v in handle.attrs["crop_box"])
    box = synthetic.map_box(LAYOUT.sector, {"x": x, "y": y, "width": width, "height": height}, PREPROCESS["size"])
    return [synthetic.read_index(frame, box) for frame in frames]


def test_labels_match_intervals_frame_exactly(store, tmp_path):
    # Boundaries fall between frame times, exactly on frame times, and inside long gaps.
    intervals = [(TIMES_S[5], TIMES_S[12]), (TIMES_S[20] + 0.001, TIMES_S[31] - 0.001), (TIMES_S[40], 1.23)]
    labels, table = run_labels(store, tmp_path, intervals)
    indices = stored_indices(store)
    assert indices == list(range(len(TIMES_S)))
    expected = np.zeros(len(TIMES_S), int)
    for start, end in intervals:
        # The frame that shows index i was presented at TIMES_S[i].
        for i in indices:
            if start <= TIMES_S[i] < end:
                expected[i] = 1
    np.testing.assert_array_equal(labels["label"].to_numpy(), expected)
    assert list(labels.columns) == ["frame", "timestamp_ms", "label"]
    np.testing.assert_allclose(labels["timestamp_ms"], TIMES_S * 1000, atol=0.02)
    assert labels["label"][5] == 1
    assert labels["label"][12] == 0
    assert labels["label"][20] == 0
    assert labels["label"][21] == 1
    assert labels["label"][30] == 1
    assert list(table["status"]) == ["kept", "kept", "kept"]
    assert list(table["start_frame"]) == [5, 21, 40]
    assert list(table["end_frame"]) == [12, 31, int(np.searchsorted(TIMES_S, 1.23))]


def test_interval_table_columns(store, tmp_path):
    _, table = run_labels(store, tmp_path, [(0.2, 0.4)])
    assert list(table.columns) == ["interval", "start_s", "end_s", "start_frame", "end_frame", "status", "note"]
    assert table["interval"][0] == "4CV-0"


def test_interval_past_end_is_clipped(store, tmp_path):
    last_s = TIMES_S[-1]
    labels, table = run_labels(store, tmp_path, [(TIMES_S[50], last_s + 3.0)])
    assert table["status"][0] == "clipped"
    assert "after the video end" in table["note"][0]
    assert table["end_frame"][0] == len(TIMES_S)
    assert labels["label"][50:].eq(1).all()
    assert labels["label"][:50].eq(0).all()


def test_interval_ending_at_video_end_is_kept(store, tmp_path):
    spacing = float(np.median(np.diff(TIMES_S)))
    _, table = run_labels(store, tmp_path, [(TIMES_S[50], TIMES_S[-1] + spacing)])
    assert table["status"][0] == "kept"


def test_interval_outside_video_is_excluded(store, tmp_path):
    labels, table = run_labels(store, tmp_path, [(0.1, 0.3), (5.0, 6.0)])
    assert list(table["status"]) == ["kept", "excluded"]
    assert "entirely outside the video" in table["note"][1]
    assert labels["label"].sum() == int(np.sum((TIMES_S >= 0.1) & (TIMES_S < 0.3)))


def test_empty_project_as_background(store, tmp_path):
    labels, table = run_labels(store, tmp_path, [], empty_project="background")
    assert len(labels) == len(TIMES_S)
    assert labels["label"].eq(0).all()
    assert table.empty


def test_empty_project_rejected_when_excluded(store, tmp_path):
    with pytest.raises(ValueError, match="no segments"):
        run_labels(store, tmp_path, [], empty_project="exclude")


def test_excluded_store_gives_no_labels(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    build_store(broken, tmp_path / "broken.h5", PREPROCESS)
    labels, table = run_labels(tmp_path / "broken.h5", tmp_path, [(1.0, 2.0)])
    assert labels.empty
    assert table["status"][0] == "excluded"
    assert "video excluded" in table["note"][0]


@pytest.mark.parametrize("interval, frames, status", [
    ((0.0, 0.1), [0, 1, 2, 3], "kept"),            # Start on a frame time: included; end on one: excluded.
    ((0.1, 0.101), [4], "kept"),
    ((0.099, 0.1), [], "excluded"),
    ((0.1001, 0.1249), [], "excluded"),            # Between two frames: no frame time inside.
    ((-1.0, 0.05), [0, 1], "clipped"),             # Starts before the first frame.
    ((0.35, 0.4), [14, 15], "kept"),               # Ends at the last frame time + spacing, the video end.
    ((0.35, 0.5), [14, 15], "clipped"),
])
def test_label_frames_half_open_rule(interval, frames, status):
    timestamps = np.arange(0, 400, 25, dtype=np.float64)  # 16 frames, 25 ms apart.
    labels, rows = label_frames(timestamps, [interval], spacing_ms=25.0)
    assert np.flatnonzero(labels).tolist() == frames
    assert rows[0]["status"] == status


# End to end: the frames, labels and qc rules in a real snakemake run.

SNAKEFILE = Path(__file__).resolve().parents[1] / "Snakefile"


def make_raw_tree(raw, broken=True):
    """Write two annotated participants and, optionally, one whose video is truncated."""
    for number, intervals in ((1, [(0.5, 1.0)]), (2, [(0.2, 0.6), (1.2, 9.0)])):
        folder = raw / f"P0{number}" / "T1"
        folder.mkdir(parents=True)
        synthetic.write_video(folder / f"P0{number}_T1.mp4", 45, LAYOUT, seed=number)
        write_project(folder / f"P0{number}_T1.json", f"P0{number}_T1.mp4", intervals)
    if broken:
        folder = raw / "P03" / "T1"
        folder.mkdir(parents=True)
        full = synthetic.write_video(raw.parent / "full.mp4", 90, LAYOUT)
        synthetic.truncate(full, folder / "P03_T1.mp4", 0.5)
        write_project(folder / "P03_T1.json", "P03_T1.mp4", [(0.5, 1.0)])


def write_config(path, raw, on_bad_video):
    preprocess = dict(PREPROCESS, on_bad_video=on_bad_video)
    path.write_text(yaml.safe_dump({"raw_dir": str(raw), "preprocess": preprocess}))


def snakemake(workdir, config, *targets, extra=()):
    command = ["snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), "--configfile", str(config),
               "--cores", "2", *extra, *targets]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def jobs_run(result):
    """Return the rules of the jobs that snakemake reports as finished.

    The job stats table is not used: before a checkpoint has run it also lists jobs that may turn out to be
    up to date.
    """
    return set(re.findall(r"Finished jobid: \d+ \(Rule: ([\w.-]+)\)", result.stdout + result.stderr))


@pytest.mark.workflow
def test_annotation_edit_reruns_only_labels(tmp_path):
    raw = tmp_path / "raw"
    make_raw_tree(raw)
    config = tmp_path / "config.yaml"
    write_config(config, raw, "exclude")
    workdir = tmp_path / "work"
    targets = ["results/qc/videos.tsv"] + [f"results/labels/P0{n}_T1.tsv" for n in (1, 2, 3)]

    first = snakemake(workdir, config, *targets)
    assert first.returncode == 0, first.stderr[-3000:]
    qc = pd.read_csv(workdir / "results/qc/videos.tsv", sep="\t", keep_default_na=False).set_index("video_id")
    assert qc.loc["P01_T1", "status"] == "ok"
    assert qc.loc["P01_T1", "frames_decoded"] == 45
    assert qc.loc["P03_T1", "status"] == "excluded"
    assert "truncated" in qc.loc["P03_T1", "reason"]
    intervals = pd.read_csv(workdir / "results/labels/P02_T1.intervals.tsv", sep="\t", keep_default_na=False)
    assert list(intervals["status"]) == ["kept", "clipped"]

    store = workdir / "results/frames/P01_T1.h5"
    store_mtime = store.stat().st_mtime_ns
    write_project(raw / "P01" / "T1" / "P01_T1.json", "P01_T1.mp4", [(0.0, 0.5)])
    second = snakemake(workdir, config, *targets)
    assert second.returncode == 0, second.stderr[-3000:]
    ran = jobs_run(second)
    assert "manifest" in ran
    assert "labels" in ran
    assert "frames" not in ran
    assert store.stat().st_mtime_ns == store_mtime
    labels = pd.read_csv(workdir / "results/labels/P01_T1.tsv", sep="\t")
    expected = (labels["timestamp_ms"] < 500).astype(int)
    assert labels["label"].tolist() == expected.tolist()


@pytest.mark.workflow
def test_bad_video_fails_its_job_only(tmp_path):
    raw = tmp_path / "raw"
    make_raw_tree(raw)
    config = tmp_path / "config.yaml"
    write_config(config, raw, "fail")
    workdir = tmp_path / "work"
    targets = [f"results/labels/P0{n}_T1.tsv" for n in (1, 2, 3)]
    result = snakemake(workdir, config, *targets, extra=["--keep-going"])
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "P03_T1.mp4" in output
    assert "truncated" in output
    assert (workdir / "results/labels/P01_T1.tsv").exists()
    assert (workdir / "results/labels/P02_T1.tsv").exists()
    assert not (workdir / "results/frames/P03_T1.h5").exists()
    log = (workdir / "logs/frames/P03_T1.log").read_text()
    assert "last frame decoded at" in log

"""Segment sets: clip contents match the frame stores, sampling rules hold, and output bytes are reproducible."""

import hashlib
import re
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

import synthetic
from echoflow.segments import (Sampling, SegmentError, VideoInput, build_segment_set, label_runs, plan_video,
                               summarize)
from echoflow.via import write_project

FRAME_MS = 1000 / 29.97
SIZE = (12, 10)  # stored frame height, width


def write_store(folder: Path, video_id: str, labels, status="ok", seed=0) -> VideoInput:
    """Write a frame store with distinct random frames and a label table for ``labels``."""
    labels = np.asarray(labels, dtype=np.uint8)
    n = 0 if status == "excluded" else len(labels)
    rng = np.random.default_rng(seed)
    frames_path = folder / f"{video_id}.h5"
    with h5py.File(frames_path, "w") as store:
        store.create_dataset("frames", data=rng.integers(0, 256, size=(n, *SIZE), dtype=np.uint8))
        store.create_dataset("timestamps_ms", data=np.arange(n) * FRAME_MS)
        store.attrs["status"] = status
        store.attrs["fps"] = 29.97
    labels_path = folder / f"{video_id}.tsv"
    rows = labels if status == "ok" else labels[:0]
    pd.DataFrame({"frame": np.arange(len(rows)), "timestamp_ms": np.arange(len(rows)) * FRAME_MS,
                  "label": rows}).to_csv(labels_path, sep="\t", index=False)
    intervals_path = folder / f"{video_id}.intervals.tsv"
    intervals = [(start, end) for start, end, label in label_runs(rows) if label == 1]
    write_intervals(intervals_path, [(f"4CV-{i}", start, end, "kept") for i, (start, end) in enumerate(intervals)])
    return VideoInput(video_id, video_id.split("_")[0], frames_path, labels_path, intervals_path)


def write_intervals(path: Path, rows):
    """Write an interval table from (interval, start_frame, end_frame, status) rows."""
    table = pd.DataFrame(rows, columns=["interval", "start_frame", "end_frame", "status"])
    table["start_s"] = table["start_frame"] * FRAME_MS / 1000
    table["end_s"] = table["end_frame"] * FRAME_MS / 1000
    table["note"] = ""
    table[["interval", "start_s", "end_s", "start_frame", "end_frame", "status", "note"]].to_csv(
        path, sep="\t", index=False)


def runs(*pieces):
    """Build per-frame labels from (label, length) pieces."""
    return np.concatenate([np.full(length, label, dtype=np.uint8) for label, length in pieces])


def sampling(**changes):
    settings = {"seed": 99, "frames_per_clip": 4, "stride": 1, "max_background_s": 6.0, "clips_per_interval": 3,
                "min_clip_frames": 4, "short_intervals": "pad", "balance": "none", "sliding_window": None}
    settings.update(changes)
    return Sampling.from_config(settings)


def read_set(path):
    with h5py.File(path, "r") as segment_set:
        return {
            "clips": segment_set["clips"][:],
            "labels": segment_set["labels"][:],
            "video_id": segment_set["video_id"].asstr()[:].tolist(),
            "participant": segment_set["participant"].asstr()[:].tolist(),
            "start_frame": segment_set["start_frame"][:],
            "interval": segment_set["interval"].asstr()[:].tolist(),
            "valid_frames": segment_set["valid_frames"][:],
            "attrs": dict(segment_set.attrs),
        }


@pytest.fixture
def videos(tmp_path):
    return [
        write_store(tmp_path, "P1_T1", runs((0, 300), (1, 60), (0, 40), (1, 3), (0, 120)), seed=1),
        write_store(tmp_path, "P1_T2", runs((1, 50), (0, 500), (1, 80)), seed=2),
        write_store(tmp_path, "P2_T1", runs((0, 100), (1, 100), (0, 100)), seed=3),
    ]


def build(videos, settings, output, split="train", members=("P1", "P2")):
    return build_segment_set(videos, set(members), settings, "test-sampling", split, output, frame_shape=SIZE)


def test_clips_equal_store_frames(videos, tmp_path):
    settings = sampling(frames_per_clip=5, stride=3)
    build(videos, settings, tmp_path / "train.h5")
    result = read_set(tmp_path / "train.h5")
    stores = {video.video_id: h5py.File(video.frames_path, "r")["frames"][:] for video in videos}
    assert len(result["labels"]) > 0
    for i, video_id in enumerate(result["video_id"]):
        start, valid = result["start_frame"][i], result["valid_frames"][i]
        expected = stores[video_id][start: start + 3 * valid: 3]
        assert len(expected) == valid
        np.testing.assert_array_equal(result["clips"][i, :valid], expected, err_msg=f"clip {i}")
        np.testing.assert_array_equal(result["clips"][i, valid:], np.repeat(expected[-1:], 5 - valid, axis=0))


def test_clip_labels_match_every_frame(videos, tmp_path):
    settings = sampling(frames_per_clip=4, stride=2, clips_per_interval=5)
    build(videos, settings, tmp_path / "train.h5")
    result = read_set(tmp_path / "train.h5")
    labels = {video.video_id: pd.read_csv(video.labels_path, sep="\t")["label"].to_numpy() for video in videos}
    for i, video_id in enumerate(result["video_id"]):
        start = result["start_frame"][i]
        span = min(settings.span, 2 * (result["valid_frames"][i] - 1) + 1)
        covered = labels[video_id][start: start + span]
        assert (covered == result["labels"][i]).all(), f"clip {i} of {video_id} at {start} crosses a class boundary"


def test_background_never_overlaps_4cv():
    labels = runs((0, 7), (1, 20), (0, 2), (1, 30), (0, 900))
    settings = sampling(frames_per_clip=6, stride=2, sliding_window=1, min_clip_frames=1)
    clips = plan_video("P9_T1", "P9", labels, FRAME_MS, settings)
    annotated = np.flatnonzero(labels == 1)
    background = [clip for clip in clips if clip.label == 0]
    assert background
    for clip in background:
        last = clip.start_frame + 2 * (clip.valid_frames - 1)
        overlap = annotated[(annotated >= clip.start_frame) & (annotated <= last)]
        assert overlap.size == 0, f"background clip {clip} covers 4CV frames {overlap.tolist()}"


def test_long_gap_contributes_central_part():
    labels = runs((1, 30), (0, 3000), (1, 30))
    settings = sampling(max_background_s=2.0, sliding_window=1)
    clips = [clip for clip in plan_video("P9_T1", "P9", labels, FRAME_MS, settings) if clip.label == 0]
    kept = round(2.0 * 1000 / FRAME_MS)
    first = 30 + (3000 - kept) // 2
    assert [clip.start_frame for clip in clips] == list(range(first, first + kept - settings.span + 1))


def test_clips_per_interval_and_names():
    labels = runs((0, 200), (1, 100), (0, 100), (1, 100), (0, 150))
    clips = plan_video("P9_T1", "P9", labels, FRAME_MS, sampling(clips_per_interval=4))
    names = pd.Series([clip.interval for clip in clips]).value_counts().to_dict()
    assert names == {"bg-0": 4, "4CV-0": 4, "bg-1": 4, "4CV-1": 4, "bg-2": 4}
    assert len({clip.start_frame for clip in clips}) == len(clips)


def test_sliding_window_takes_every_step():
    labels = runs((0, 20), (1, 31), (0, 20))
    clips = plan_video("P9_T1", "P9", labels, FRAME_MS, sampling(sliding_window=5, frames_per_clip=4, stride=2))
    starts = [clip.start_frame for clip in clips if clip.label == 1]
    assert starts == [20, 25, 30, 35, 40]


@pytest.mark.parametrize("policy, expected", [("pad", [(300, 3)]), ("drop", [])])
def test_short_interval_policy(policy, expected):
    # 4CV-1 has 3 frames, fewer than min_clip_frames = 4.
    labels = runs((0, 200), (1, 60), (0, 40), (1, 3), (0, 200))
    clips = plan_video("P9_T1", "P9", labels, FRAME_MS, sampling(short_intervals=policy))
    short = [(clip.start_frame, clip.valid_frames) for clip in clips if clip.interval == "4CV-1"]
    assert short == expected
    assert len([clip for clip in clips if clip.interval == "4CV-0"]) == 3


def test_interval_between_min_and_span_is_padded():
    # 6 frames reach min_clip_frames but hold no full clip of span 7 (K = 4, stride = 2).
    labels = runs((0, 100), (1, 6), (0, 100))
    clips = plan_video("P9_T1", "P9", labels, FRAME_MS, sampling(stride=2, short_intervals="drop"))
    assert [(clip.start_frame, clip.valid_frames) for clip in clips if clip.label == 1] == [(100, 3)]


def test_padded_clip_repeats_last_frame(tmp_path):
    video = write_store(tmp_path, "P1_T1", runs((0, 50), (1, 2), (0, 50)), seed=4)
    build([video], sampling(frames_per_clip=4), tmp_path / "train.h5", members=["P1"])
    result = read_set(tmp_path / "train.h5")
    index = result["interval"].index("4CV-0")
    frames = h5py.File(video.frames_path, "r")["frames"][:]
    np.testing.assert_array_equal(result["clips"][index], frames[[50, 51, 51, 51]])


def test_downsample_balances_classes(videos, tmp_path):
    build(videos, sampling(balance="downsample"), tmp_path / "train.h5")
    result = read_set(tmp_path / "train.h5")
    counts = np.bincount(result["labels"], minlength=2)
    assert counts[0] == counts[1]
    assert result["attrs"]["balance"] == "downsample"


def test_weights_keeps_every_clip(videos, tmp_path):
    build(videos, sampling(balance="weights"), tmp_path / "weights.h5")
    build(videos, sampling(balance="none"), tmp_path / "none.h5")
    weights, unbalanced = read_set(tmp_path / "weights.h5"), read_set(tmp_path / "none.h5")
    counts = np.bincount(weights["labels"], minlength=2)
    assert counts[0] > counts[1]
    np.testing.assert_array_equal(weights["start_frame"], unbalanced["start_frame"])
    np.testing.assert_array_equal(weights["attrs"]["class_counts"], counts)
    assert weights["attrs"]["balance"] == "weights"


def test_only_split_participants(videos, tmp_path):
    build(videos, sampling(), tmp_path / "val.h5", split="val", members=["P2"])
    result = read_set(tmp_path / "val.h5")
    assert set(result["participant"]) == {"P2"}
    assert set(result["video_id"]) == {"P2_T1"}
    assert result["attrs"]["split"] == "val"


def test_excluded_store_skipped(videos, tmp_path):
    excluded = write_store(tmp_path, "P2_T2", runs((0, 100), (1, 100)), status="excluded")
    build(videos + [excluded], sampling(), tmp_path / "train.h5")
    assert "P2_T2" not in read_set(tmp_path / "train.h5")["video_id"]


def test_empty_split_written(tmp_path):
    build_segment_set([], set(), sampling(), "test-sampling", "val", tmp_path / "val.h5", frame_shape=SIZE)
    result = read_set(tmp_path / "val.h5")
    assert result["clips"].shape == (0, 4, *SIZE)
    assert result["labels"].shape == (0,)


def test_empty_split_needs_frame_shape(tmp_path):
    with pytest.raises(SegmentError, match="split val has no frame store with frames"):
        build_segment_set([], set(), sampling(), "test-sampling", "val", tmp_path / "val.h5")


def test_identical_bytes_on_rerun(videos, tmp_path):
    settings = sampling(balance="downsample")
    digests = []
    for name in ("first.h5", "second.h5"):
        build(videos, settings, tmp_path / name)
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    build(videos, sampling(balance="downsample", seed=100), tmp_path / "other.h5")
    assert hashlib.sha256((tmp_path / "other.h5").read_bytes()).hexdigest() != digests[0]


def test_label_rows_must_match_frames(tmp_path):
    video = write_store(tmp_path, "P1_T1", runs((0, 50), (1, 50)))
    pd.read_csv(video.labels_path, sep="\t").iloc[:-1].to_csv(video.labels_path, sep="\t", index=False)
    with pytest.raises(SegmentError, match="has 99 rows, but the frame store .* has 100 frames"):
        build([video], sampling(), tmp_path / "train.h5", members=["P1"])


def test_summary_counts(videos, tmp_path):
    paths = {}
    for split, members in (("train", ["P1"]), ("val", []), ("test", ["P2"])):
        paths[split] = tmp_path / f"{split}.h5"
        build(videos, sampling(balance="downsample"), paths[split], split=split, members=members)
    table = summarize(paths)
    assert table.columns.tolist() == ["split", "background", "4CV", "clips", "participants", "videos"]
    rows = table.set_index("split")
    assert rows.loc["train", "videos"] == 2
    assert rows.loc["val", "clips"] == 0
    assert rows.loc["test", "participants"] == 1
    assert rows.loc["test", "4CV"] == rows.loc["test", "background"] == 3


def test_label_runs():
    assert label_runs(np.array([0, 0, 1, 1, 1, 0])) == [(0, 2, 0), (2, 5, 1), (5, 6, 0)]
    assert label_runs(np.array([], dtype=np.uint8)) == []


def test_4cv_clips_named_after_annotation(tmp_path):
    video = write_store(tmp_path, "P1_T1", runs((0, 100), (1, 40), (0, 100), (1, 40), (0, 100)))
    # The first annotated interval lay outside the video, so the runs are intervals 4CV-1 and 4CV-2.
    write_intervals(video.intervals_path, [("4CV-0", 340, 340, "excluded"), ("4CV-1", 100, 140, "kept"),
                                           ("4CV-2", 240, 280, "clipped")])
    build([video], sampling(), tmp_path / "train.h5", members=["P1"])
    result = read_set(tmp_path / "train.h5")
    names = {name for name, label in zip(result["interval"], result["labels"]) if label == 1}
    assert names == {"4CV-1", "4CV-2"}
    assert {name for name, label in zip(result["interval"], result["labels"]) if label == 0} == {"bg-0", "bg-1", "bg-2"}


def test_4cv_run_outside_intervals_rejected(tmp_path):
    video = write_store(tmp_path, "P1_T1", runs((0, 100), (1, 40), (0, 100)))
    write_intervals(video.intervals_path, [("4CV-0", 0, 20, "kept")])
    with pytest.raises(SegmentError, match="4CV frames 100-139 lie in no kept or clipped interval"):
        build([video], sampling(), tmp_path / "train.h5", members=["P1"])


# End to end: split, segments and segment_summary in real snakemake runs on small H.264 videos.

SNAKEFILE = Path(__file__).resolve().parents[1] / "Snakefile"
LAYOUT = synthetic.Layout()
SUMMARY = "results/segments/default/summary.tsv"


def make_workflow(tmp_path, frames_per_clip=4):
    """Write a raw tree of three participants with one 3 s video each and a config that reads it."""
    raw = tmp_path / "raw"
    for number in (1, 2, 3):
        folder = raw / f"P0{number}" / "T1"
        folder.mkdir(parents=True, exist_ok=True)
        synthetic.write_video(folder / f"P0{number}_T1.mp4", 90, LAYOUT, seed=number)
        write_project(folder / f"P0{number}_T1.json", f"P0{number}_T1.mp4", [(1.0, 2.0)])
    config = {
        "raw_dir": str(raw),
        "preprocess": {"crop": LAYOUT.crop, "size": [32, 24], "mask": "none", "stride": 1},
        "split": {"seed": 3, "fractions": {"train": 0.34, "val": 0.33, "test": 0.33}, "folds": 0},
        "sampling": {"default": {"frames_per_clip": frames_per_clip, "max_background_s": 0.5}},
    }
    path = tmp_path / f"config-{frames_per_clip}.yaml"
    path.write_text(yaml.safe_dump(config))
    return raw, path


def run_snakemake(workdir, config, *options):
    command = ["snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), "--configfile", str(config),
               "--cores", "2", *options, SUMMARY]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def planned_rules(result):
    """Return the rules of the jobs a dry run lists."""
    return set(re.findall(r"^(?:local)?rule ([\w.-]+):", result.stdout + result.stderr, flags=re.MULTILINE))


def finished_rules(result):
    """Return the rules of the jobs that snakemake reports as finished."""
    return set(re.findall(r"Finished jobid: \d+ \(Rule: ([\w.-]+)\)", result.stdout + result.stderr))


@pytest.mark.workflow
def test_frames_per_clip_reruns_segments_only(tmp_path):
    raw, config = make_workflow(tmp_path)
    workdir = tmp_path / "work"
    first = run_snakemake(workdir, config)
    assert first.returncode == 0, first.stderr[-3000:]
    assert {"frames", "labels", "split", "segments", "segment_summary"} <= finished_rules(first)
    summary = pd.read_csv(workdir / SUMMARY, sep="\t").set_index("split")
    assert summary["participants"].tolist() == [1, 1, 1]
    assert (summary["4CV"] > 0).all()
    with h5py.File(workdir / "results/segments/default/train.h5", "r") as segment_set:
        assert segment_set["clips"].shape[1:] == (4, 24, 32)

    _, changed = make_workflow(tmp_path, frames_per_clip=6)
    dry_run = run_snakemake(workdir, changed, "--dry-run")
    assert dry_run.returncode == 0, dry_run.stderr[-3000:]
    assert planned_rules(dry_run) == {"segments", "segment_summary"}


@pytest.mark.workflow
def test_annotation_times_keep_split(tmp_path):
    raw, config = make_workflow(tmp_path)
    workdir = tmp_path / "work"
    first = run_snakemake(workdir, config)
    assert first.returncode == 0, first.stderr[-3000:]
    splits = workdir / "results/splits.tsv"
    splits_mtime = splits.stat().st_mtime_ns

    write_project(raw / "P02" / "T1" / "P02_T1.json", "P02_T1.mp4", [(0.5, 2.5)])
    second = run_snakemake(workdir, config)
    assert second.returncode == 0, second.stderr[-3000:]
    ran = finished_rules(second)
    assert {"manifest", "labels", "segments"} <= ran
    assert "split" not in ran
    assert splits.stat().st_mtime_ns == splits_mtime
    # P02 is in one split, so only that split's segment set is rebuilt.
    output = second.stdout + second.stderr
    assert len(re.findall(r"Finished jobid: \d+ \(Rule: segments\)", output)) == 1

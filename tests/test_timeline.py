"""Timelines: sliding windows, smoothing, thresholding, interval scores and VIA export of predictions."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from echoflow import timeline, via

FPS = 10.0


def trace_with_bumps(count: int, bumps: list[tuple[int, int]], noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Return a probability trace that is 0.9 inside each frame range [first, last) and 0.1 elsewhere."""
    values = np.full(count, 0.1)
    for first, last in bumps:
        values[first:last] = 0.9
    rng = np.random.default_rng(seed)
    return np.clip(values + rng.normal(0, noise, count), 0, 1)


def test_threshold_intervals_from_trace():
    time_s = np.arange(100) / FPS
    trace = trace_with_bumps(100, [(10, 30), (50, 53), (70, 95)])
    intervals = timeline.threshold_intervals(trace, time_s, threshold=0.5, min_interval_s=1.0, frame_s=0.1)
    # The 3-frame bump (0.3 s) is shorter than min_interval_s and is dropped.
    assert intervals == [pytest.approx((1.0, 3.0)), pytest.approx((7.0, 9.5))]


def test_threshold_interval_at_video_end():
    time_s = np.arange(40) / FPS
    trace = trace_with_bumps(40, [(25, 40)])
    intervals = timeline.threshold_intervals(trace, time_s, threshold=0.5, min_interval_s=0.0, frame_s=0.1)
    assert intervals == [pytest.approx((2.5, 4.0))]


def test_smoothing_removes_flicker():
    time_s = np.arange(200) / FPS
    trace = trace_with_bumps(200, [(40, 120)])
    trace[[60, 75, 90]] = 0.0  # Single-frame dropouts inside the interval.
    trace[[150, 170]] = 1.0  # Single-frame false alarms outside it.
    raw = timeline.threshold_intervals(trace, time_s, 0.5, 0.0, 0.1)
    smoothed = timeline.moving_average(trace, 10)
    cleaned = timeline.threshold_intervals(smoothed, time_s, 0.5, 0.0, 0.1)
    assert len(raw) == 6
    assert len(cleaned) == 1
    start, end = cleaned[0]
    assert start == pytest.approx(4.0, abs=0.15)
    assert end == pytest.approx(12.0, abs=0.15)


def test_moving_average_keeps_constant_edges():
    values = np.full(7, 0.4)
    assert np.allclose(timeline.moving_average(values, 5), 0.4)


def test_score_intervals_iou_and_delay():
    annotated = [(2.0, 6.0), (10.0, 14.0), (20.0, 22.0)]
    predicted = [(2.5, 6.0), (10.0, 13.0), (30.0, 31.0)]
    scores = timeline.score_intervals(predicted, annotated, min_iou=0.3)
    # Overlap 3.5 + 3.0 = 6.5 s; union 10 s annotated + 7.5 s predicted - 6.5 s.
    assert scores["iou"] == pytest.approx(6.5 / 11.0)
    assert scores["n_matched"] == 2
    assert scores["detection_precision"] == pytest.approx(2 / 3)
    assert scores["detection_recall"] == pytest.approx(2 / 3)
    assert scores["onset_delays_s"] == pytest.approx([0.5, 0.0])
    assert scores["onset_delay_s"] == pytest.approx(0.25)


def test_score_intervals_without_intervals():
    scores = timeline.score_intervals([], [], min_iou=0.3)
    assert scores["iou"] is None
    assert scores["detection_precision"] is None
    assert scores["detection_recall"] is None
    assert scores["onset_delay_s"] is None


def test_matching_is_one_to_one():
    # One long prediction spanning two annotations detects only the better-overlapping one.
    pairs = timeline.match_intervals([(0.0, 10.0)], [(0.0, 6.0), (7.0, 8.0)], min_iou=0.05)
    assert pairs == [(0, 0, pytest.approx(0.6))]


def test_sliding_windows_end_at_frame():
    frames = np.arange(12, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), dtype=np.uint8)
    seen = []

    def forward(clips):
        # Record the frame indices (encoded as pixel values) of each window.
        seen.extend((clips[:, 0, :, 0, 0] * 255).round().astype(int).tolist())
        return np.zeros((len(clips), 2))

    probabilities = timeline.sliding_probabilities(forward, frames, frames_per_clip=3, stride=2, batch_size=5)
    assert probabilities.shape == (12,)
    assert np.allclose(probabilities, 0.5)
    assert seen[0] == [0, 0, 0]
    assert seen[3] == [0, 1, 3]
    assert seen[11] == [7, 9, 11]


def write_video_inputs(folder, video_id: str, probabilities: np.ndarray, intervals: list[tuple[float, float]]):
    """Write a frame store whose pixel values carry the intended probability, and its label tables."""
    count = len(probabilities)
    frames = np.repeat((probabilities * 255).round().astype(np.uint8)[:, None, None], 4, axis=1)
    frames = np.repeat(frames, 4, axis=2)
    (folder / "frames").mkdir(exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    with h5py.File(folder / "frames" / f"{video_id}.h5", "w") as store:
        store["frames"] = frames
        store["timestamps_ms"] = np.arange(count) * 1000.0 / FPS
        store.attrs["status"] = "ok"
        store.attrs["fps"] = FPS
    time_s = np.arange(count) / FPS
    labels = np.zeros(count, dtype=int)
    for start, end in intervals:
        labels[(time_s >= start) & (time_s < end)] = 1
    pd.DataFrame({"frame": np.arange(count), "timestamp_ms": time_s * 1000, "label": labels}).to_csv(
        folder / "labels" / f"{video_id}.tsv", sep="\t", index=False)
    pd.DataFrame({"interval": range(len(intervals)), "start_s": [s for s, _ in intervals],
                  "end_s": [e for _, e in intervals], "start_frame": 0, "end_frame": 0, "status": "kept",
                  "note": ""}).to_csv(folder / "labels" / f"{video_id}.intervals.tsv", sep="\t", index=False)


def pixel_forward(clips):
    """Turn the mean pixel value of the newest frame into logits whose softmax gives that value back."""
    value = np.clip(clips[:, 0, -1].mean(axis=(1, 2)), 1e-4, 1 - 1e-4)
    return np.stack([np.zeros_like(value), np.log(value / (1 - value))], axis=1)


def test_write_timelines_and_via_round_trip(tmp_path):
    annotated = [(2.0, 5.0), (8.0, 11.0)]
    trace = trace_with_bumps(150, [(20, 50), (80, 110)], noise=0.05, seed=3)
    write_video_inputs(tmp_path, "P01-T1", trace, annotated)
    write_video_inputs(tmp_path, "P01-T2", trace_with_bumps(60, []), [])
    videos = pd.DataFrame({"video_id": ["P01-T1", "P01-T2"], "participant": ["P01", "P01"],
                           "video": ["/raw/P01/T1/capture <1>.mp4", "/raw/P01/T2/second.mp4"]})
    settings = timeline.TimelineSettings(smooth_s=0.5, threshold=0.5, min_interval_s=1.0, min_iou=0.3)
    table = timeline.write_timelines(pixel_forward, "demo", videos, tmp_path / "frames", tmp_path / "labels",
                                     frames_per_clip=2, stride=1, settings=settings,
                                     table_path=tmp_path / "out" / "timelines.tsv",
                                     arrays_path=tmp_path / "out" / "timelines.npz", via_dir=tmp_path / "out" / "via")

    assert list(table["video_id"]) == ["P01-T1", "P01-T2"]
    first = table.iloc[0]
    assert first["n_predicted"] == 2
    assert first["detection_recall"] == 1.0
    assert first["iou"] > 0.9
    assert abs(first["onset_delay_s"]) <= 0.2
    assert table.iloc[1]["n_predicted"] == 0

    project = via.read_project(tmp_path / "out" / "via" / "P01-T1.json")
    assert project.file_name == "capture <1>.mp4"
    traces = timeline.read_traces(tmp_path / "out" / "timelines.npz")
    predicted = [tuple(row) for row in traces["P01-T1"]["predicted"]]
    assert len(project.intervals) == len(predicted)
    for parsed, written in zip(project.intervals, predicted):
        assert parsed == pytest.approx(written, abs=1e-4)
    assert traces["P01-T1"]["probability"].shape == (150,)
    assert via.read_project(tmp_path / "out" / "via" / "P01-T2.json").intervals == []
    assert sorted(p.name for p in (tmp_path / "out" / "via").iterdir()) == ["P01-T1.json", "P01-T2.json"]


def test_rerun_replaces_via_folder(tmp_path):
    write_video_inputs(tmp_path, "P02-T1", trace_with_bumps(50, [(10, 30)]), [(1.0, 3.0)])
    out = tmp_path / "out"
    (out / "via").mkdir(parents=True)
    (out / "via" / "stale.json").write_text("{}")
    videos = pd.DataFrame({"video_id": ["P02-T1"], "participant": ["P02"], "video": ["a.mp4"]})
    timeline.write_timelines(pixel_forward, "demo", videos, tmp_path / "frames", tmp_path / "labels", 1, 1,
                             timeline.TimelineSettings(smooth_s=0), out / "t.tsv", out / "t.npz", out / "via")
    assert sorted(p.name for p in (out / "via").iterdir()) == ["P02-T1.json"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert json.loads((out / "via" / "P02-T1.json").read_text())["file"]["1"]["fname"] == "a.mp4"


def test_split_videos_picks_test_participants(tmp_path):
    pd.DataFrame({"video_id": ["a", "b", "c"], "participant": ["p1", "p2", "p2"],
                  "video": ["a.mp4", "b.mp4", "c.mp4"], "status": ["ok", "ok", "excluded"]}).to_csv(
        tmp_path / "manifest.tsv", sep="\t", index=False)
    pd.DataFrame({"participant": ["p1", "p2"], "split": ["train", "test"]}).to_csv(
        tmp_path / "splits.tsv", sep="\t", index=False)
    videos = timeline.split_videos(tmp_path / "manifest.tsv", tmp_path / "splits.tsv")
    assert list(videos["video_id"]) == ["b"]


def test_write_timelines_without_videos(tmp_path):
    videos = pd.DataFrame(columns=["video_id", "participant", "video"])
    out = tmp_path / "out"
    table = timeline.write_timelines(pixel_forward, "demo", videos, tmp_path, tmp_path, 2, 1,
                                     timeline.TimelineSettings(), out / "t.tsv", out / "t.npz", out / "via")
    assert table.empty
    assert list(pd.read_csv(out / "t.tsv", sep="\t").columns) == timeline.TIMELINE_COLUMNS
    assert timeline.read_traces(out / "t.npz") == {}
    assert list((out / "via").iterdir()) == []

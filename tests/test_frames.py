"""Frame stores built from real H.264 videos whose frames encode their own index."""

import json
import threading

import cv2
import h5py
import numpy as np
import pytest

import synthetic
from echoflow.frames import (Box, Settings, build_store, effective_box, open_store, reduce_frame, reduced_frames,
                             video_qc_table)
from echoflow.video import DecodeStats, VideoError

LAYOUT = synthetic.Layout()  # 320x240 with the sector box at x=60, y=30, 200x180.
SIZE = [64, 48]
FRAME_COUNT = 75


def preprocess(**changes) -> dict:
    settings = {"crop": LAYOUT.crop, "size": SIZE, "mask": "auto", "stride": 1, "on_bad_video": "fail"}
    settings.update(changes)
    return settings


def stored_box(attrs) -> tuple[float, float, float, float]:
    """Return the sector box in the pixels of a stored frame."""
    x, y, width, height = (int(v) for v in attrs["crop_box"])
    return synthetic.map_box(LAYOUT.sector, {"x": x, "y": y, "width": width, "height": height}, SIZE)


def read_store(path):
    with open_store(path) as store:
        return store["frames"][:], store["timestamps_ms"][:], store["mask"][:], dict(store.attrs)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    good = synthetic.write_video(folder / "good.mp4", FRAME_COUNT, LAYOUT)
    # Irregular frame times: a store that used index / fps instead of pts would get them wrong.
    times = np.cumsum(np.where(np.arange(40) % 3 == 0, 0.050, 0.020))
    variable = synthetic.write_video(folder / "variable.mp4", 40, LAYOUT, timestamps_s=times.tolist())
    return {"folder": folder, "good": good, "variable": variable, "variable_times": times}


@pytest.fixture(scope="module")
def good_store(videos, tmp_path_factory):
    output = tmp_path_factory.mktemp("stores") / "good.h5"
    build_store(videos["good"], output, preprocess(), threads=2, video_id="good")
    return read_store(output)


def test_store_keeps_every_decoded_frame(good_store, videos):
    frames, timestamps, mask, attrs = good_store
    decoded = synthetic.frame_times_s(videos["good"])
    assert len(decoded) == FRAME_COUNT
    assert frames.shape == (FRAME_COUNT, SIZE[1], SIZE[0])
    assert frames.dtype == np.uint8
    assert attrs["frame_count_decoded"] == FRAME_COUNT
    assert attrs["frame_count_header"] == FRAME_COUNT


def test_store_frames_in_decoding_order(good_store):
    frames, _, _, attrs = good_store
    indices = [synthetic.read_index(frame, stored_box(attrs)) for frame in frames]
    assert indices == list(range(FRAME_COUNT))


def test_store_timestamps_are_presentation_times(good_store, videos):
    _, timestamps, _, _ = good_store
    assert timestamps.dtype == np.float64
    assert np.all(np.diff(timestamps) > 0)
    np.testing.assert_allclose(timestamps, np.array(synthetic.frame_times_s(videos["good"])) * 1000, atol=1e-6)


def test_variable_frame_rate_timestamps(videos, tmp_path):
    build_store(videos["variable"], tmp_path / "v.h5", preprocess(), threads=1)
    frames, timestamps, _, attrs = read_store(tmp_path / "v.h5")
    np.testing.assert_allclose(timestamps, videos["variable_times"] * 1000, atol=0.02)
    assert [synthetic.read_index(f, stored_box(attrs)) for f in frames] == list(range(40))


def test_auto_mask_covers_sector(good_store):
    frames, _, mask, _ = good_store
    assert mask.shape == (SIZE[1], SIZE[0])
    assert set(np.unique(mask)) == {0, 1}
    x, y, width, height = LAYOUT.sector
    expected = synthetic.sector_mask(LAYOUT)[y:y + height, x:x + width].astype(np.float32)
    expected = cv2.resize(expected, SIZE, interpolation=cv2.INTER_AREA) >= 0.5
    overlap = np.logical_and(mask, expected).sum() / np.logical_or(mask, expected).sum()
    assert overlap > 0.9
    assert np.all(frames[:, mask == 0] == 0)
    # The sector is not empty: speckle and code bars survive inside the mask.
    assert frames[:, mask == 1].mean() > 20


def test_mask_none_keeps_all_pixels(good_store, videos, tmp_path):
    build_store(videos["good"], tmp_path / "s.h5", preprocess(mask="none"))
    frames, _, mask, _ = read_store(tmp_path / "s.h5")
    masked_frames, _, auto_mask, _ = good_store
    assert np.all(mask == 1)
    assert frames.shape == masked_frames.shape
    # Inside the auto mask both stores are equal; outside it only the unmasked store keeps picture content.
    np.testing.assert_array_equal(frames[:, auto_mask == 1], masked_frames[:, auto_mask == 1])
    assert frames[:, auto_mask == 0].max() > 0


def test_polygon_mask_zeroes_outside(videos, tmp_path):
    x, y, width, height = LAYOUT.sector
    # The left half of the crop box, in source pixels.
    polygon = [[x, y], [x + width // 2, y], [x + width // 2, y + height], [x, y + height]]
    build_store(videos["good"], tmp_path / "s.h5", preprocess(mask=polygon))
    frames, _, mask, _ = read_store(tmp_path / "s.h5")
    assert np.all(mask[:, :SIZE[0] // 2] == 1)
    assert np.all(mask[:, SIZE[0] // 2:] == 0)
    assert np.all(frames[:, :, SIZE[0] // 2:] == 0)
    assert frames[:, :, :SIZE[0] // 2].max() > 200


def test_stride_keeps_every_nth_frame(good_store, videos, tmp_path):
    build_store(videos["good"], tmp_path / "s.h5", preprocess(stride=4))
    frames, timestamps, _, attrs = read_store(tmp_path / "s.h5")
    kept = list(range(0, FRAME_COUNT, 4))
    assert [synthetic.read_index(f, stored_box(attrs)) for f in frames] == kept
    np.testing.assert_array_equal(timestamps, good_store[1][kept])
    assert attrs["frame_count_decoded"] == FRAME_COUNT
    assert json.loads(attrs["preprocess"])["stride"] == 4


def test_auto_crop_finds_sector_box(videos, tmp_path):
    build_store(videos["good"], tmp_path / "s.h5", preprocess(crop="auto"))
    frames, _, _, attrs = read_store(tmp_path / "s.h5")
    x, y, width, height = (int(v) for v in attrs["crop_box"])
    sx, sy, swidth, sheight = LAYOUT.sector
    assert abs(x - sx) <= 8
    assert abs(y - sy) <= 8
    assert abs(x + width - (sx + swidth)) <= 8
    assert abs(y + height - (sy + sheight)) <= 8
    assert [synthetic.read_index(f, stored_box(attrs)) for f in frames] == list(range(FRAME_COUNT))


def test_store_attributes(good_store, videos):
    _, _, _, attrs = good_store
    assert attrs["status"] == "ok"
    assert attrs["reason"] == ""
    assert attrs["source_path"] == str(videos["good"])
    assert attrs["source_size"] == videos["good"].stat().st_size
    assert attrs["source_mtime"] == pytest.approx(videos["good"].stat().st_mtime)
    assert attrs["fps"] == pytest.approx(30000 / 1001)
    assert (attrs["width"], attrs["height"]) == (LAYOUT.width, LAYOUT.height)
    assert json.loads(attrs["preprocess"])["size"] == SIZE
    assert attrs["echoflow_version"]
    assert attrs["video_id"] == "good"


def test_store_chunks_and_compression(videos, tmp_path):
    build_store(videos["good"], tmp_path / "s.h5", preprocess())
    with h5py.File(tmp_path / "s.h5", "r") as store:
        assert store["frames"].chunks[0] <= 4
        assert store["frames"].compression in ("gzip", "lzf")


def test_store_chunks_decompress_with_zlib(videos, tmp_path):
    """Chunks written directly must be plain zlib streams, as HDF5's deflate filter expects."""
    import zlib

    build_store(videos["good"], tmp_path / "s.h5", preprocess(mask="none"))
    with h5py.File(tmp_path / "s.h5", "r") as store:
        frames = store["frames"]
        _, raw = frames.id.read_direct_chunk((3, 0, 0))
        assert np.array_equal(np.frombuffer(zlib.decompress(raw), np.uint8).reshape(frames.shape[1:]), frames[3])


def test_reduce_frame_matches_area_resize():
    """The halve-bilinear-halve reduction stays within a grey level of one area resize of the whole crop."""
    rng = np.random.default_rng(7)
    picture = cv2.GaussianBlur(rng.integers(0, 256, (1080, 1920), np.uint8), (0, 0), 2.0)
    picture = cv2.add(picture, np.tile(np.arange(1920, dtype=np.uint8)[None] // 8, (1080, 1)))
    box, size = Box(480, 120, 1130, 810), (128, 128)
    reference = cv2.resize(picture[120:930, 480:1610], size, interpolation=cv2.INTER_AREA)
    reduced = reduce_frame(picture, True, effective_box(box, size), size)
    difference = np.abs(reduced.astype(int) - reference)
    assert reduced.shape == (128, 128)
    assert difference.mean() < 1.0
    assert np.percentile(difference, 99) <= 5


@pytest.mark.parametrize(("box", "size", "expected"), [
    (Box(480, 120, 1130, 810), (128, 128), Box(480, 120, 1130, 810)),  # halved once: even sizes are kept
    (Box(0, 0, 1131, 811), (128, 128), Box(0, 0, 1130, 810)),
    (Box(0, 0, 1031, 1030), (64, 64), Box(0, 0, 1024, 1024)),  # halved three times
    (Box(0, 0, 200, 150), (128, 128), Box(0, 0, 200, 150)),  # smaller than twice the size: no halving
])
def test_effective_box_trims_only_for_halving(box, size, expected):
    assert effective_box(box, size) == expected


def test_store_opens_read_only(good_store, videos, tmp_path):
    build_store(videos["good"], tmp_path / "s.h5", preprocess())
    with open_store(tmp_path / "s.h5") as store:
        with pytest.raises((OSError, ValueError)):
            store.create_dataset("extra", data=[1])


# Bad videos: each case gives an error naming the file and what was found.

def make_bad(kind, folder, good):
    target = folder / f"{kind}.mp4"
    if kind == "not_a_video":
        target.write_text("this is a text file, not a video\n")
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "truncated":
        source = synthetic.write_video(folder / "long.mp4", 150, LAYOUT, faststart=True)
        synthetic.truncate(source, target, 0.5)
    elif kind == "truncated_at_packet":
        source = synthetic.write_video(folder / "long.mp4", 150, LAYOUT, faststart=True)
        synthetic.truncate_at_packet(source, target, 100)
    elif kind == "truncated_index":
        source = synthetic.write_video(folder / "long_end_index.mp4", 60, LAYOUT, faststart=False)
        synthetic.truncate(source, target, 0.6)
    elif kind == "zero_frames":
        synthetic.without_keyframes(good, target)
    elif kind == "missing_fps":
        # MPEG-TS carries no frame rate; with irregular frame times FFmpeg cannot derive an average one.
        times = [0.0, 0.02, 0.07, 0.09, 0.16, 0.18, 0.25]
        source = synthetic.write_video(folder / "irregular.mp4", len(times), LAYOUT, timestamps_s=times)
        synthetic.remux(source, target, container_format="mpegts")
    elif kind == "small_frame":
        synthetic.write_video(target, 10, synthetic.Layout(width=160, height=120, sector=(20, 10, 120, 100)))
    return target


BAD_CASES = {
    "not_a_video": ["not a readable video"],
    "empty": ["empty"],
    "truncated": ["truncated", "after", "frames", "last frame decoded at"],
    "truncated_at_packet": ["the stream ended after 100 of the 150 frames", "last frame decoded at"],
    "truncated_index": ["not a readable video", "moov"],
    "zero_frames": ["no frame could be decoded"],
    "missing_fps": ["no frame rate"],
    "small_frame": ["160x120", "smaller than the crop box", "preprocess.crop"],
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_video_fails_with_reason(kind, videos, tmp_path):
    video = make_bad(kind, tmp_path, videos["good"])
    output = tmp_path / "out.h5"
    with pytest.raises(VideoError) as raised:
        build_store(video, output, preprocess())
    message = str(raised.value)
    assert str(video) in message
    for words in BAD_CASES[kind]:
        assert words in message
    assert "on_bad_video" in message
    assert not output.exists()
    assert not list(tmp_path.glob(".out.h5*"))


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_video_excluded_store(kind, videos, tmp_path):
    video = make_bad(kind, tmp_path, videos["good"])
    output = tmp_path / "out.h5"
    attrs = build_store(video, output, preprocess(on_bad_video="exclude"), video_id=kind)
    frames, timestamps, mask, stored = read_store(output)
    assert frames.shape == (0, SIZE[1], SIZE[0])
    assert timestamps.shape == (0,)
    assert mask.shape == (SIZE[1], SIZE[0])
    assert stored["status"] == "excluded"
    assert stored["reason"] == attrs["reason"]
    for words in BAD_CASES[kind]:
        assert words in stored["reason"]
    assert stored["source_path"] == str(video)


def test_truncated_excluded_counts_frames(videos, tmp_path):
    video = make_bad("truncated", tmp_path, videos["good"])
    build_store(video, tmp_path / "out.h5", preprocess(on_bad_video="exclude"))
    _, _, _, attrs = read_store(tmp_path / "out.h5")
    assert 0 < attrs["frame_count_decoded"] < 150
    assert attrs["frame_count_header"] == 150


def test_qc_table_lists_every_video(videos, tmp_path):
    good = tmp_path / "good.h5"
    bad = tmp_path / "bad.h5"
    build_store(videos["good"], good, preprocess())
    build_store(make_bad("not_a_video", tmp_path, videos["good"]), bad, preprocess(on_bad_video="exclude"))
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(
        "video_id\tparticipant\tsession\tvideo\tannotation\tstatus\treason\tn_segments\tannotated_s\n"
        f"good\tP1\tT1\t{videos['good']}\tg.json\tok\t\t1\t1.0\n"
        f"bad\tP2\tT1\tbad.mp4\tb.json\tok\t\t1\t1.0\n"
        "gone\tP3\tT1\tgone.mp4\t\texcluded\tno annotation (.json) in the session folder\t0\t0\n")
    table = video_qc_table(manifest, [good, bad]).set_index("video_id")
    assert table.loc["good", "status"] == "ok"
    assert table.loc["good", "frames_decoded"] == FRAME_COUNT
    assert table.loc["good", "duration_s"] == pytest.approx(FRAME_COUNT * 1001 / 30000, abs=1e-3)
    assert table.loc["bad", "status"] == "excluded"
    assert "not a readable video" in table.loc["bad", "reason"]
    assert table.loc["gone", "stage"] == "manifest"
    assert table.loc["gone", "reason"] == "no annotation (.json) in the session folder"


def test_reader_stops_when_consumer_stops(videos):
    before = threading.active_count()
    stats = DecodeStats()
    frames = reduced_frames(videos["good"], Box(60, 30, 200, 180), Settings.from_config(preprocess()), 1, stats)
    next(frames)
    frames.close()
    assert threading.active_count() == before
    assert stats.frames_decoded < FRAME_COUNT

"""Bad inputs: each gives its documented error or QC exclusion, and the raw tree stays byte-identical.

One raw tree contains every bad-data case in its own participant folder, next to good videos. One snakemake run
builds the manifest, and a second builds the labels of every ok video with --keep-going, so a case that
fails its own job leaves the others running. Config cases run ``snakemake --dry-run`` on one changed config.
"""

import json
import os
import re
import stat
from fractions import Fraction
from pathlib import Path

import av
import pandas as pd
import pytest

import echoflow.config as echoflow_config
import synthetic
import workflow_runs as runs
from echoflow.via import write_project

pytestmark = pytest.mark.workflow

LAYOUT = synthetic.Layout()
FRAMES = 30  # 1 s at 29.97 fps
FPS = Fraction(30000, 1001)


def base_config() -> dict:
    config = runs.tiny_config("raw")
    config["preprocess"].update(crop=LAYOUT.crop, size=[32, 24], mask="none")
    config["annotations"]["positive_values"] = ["4CV"]
    return config


def write_good(folder: Path, name: str = "echo.mp4", seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return synthetic.write_video(folder / name, FRAMES, LAYOUT, fps=FPS, seed=seed)


def write_times(path: Path, video_name: str, times: list[list[float]], value: str = "4CV") -> None:
    """Write a VIA project whose segments have exactly the given [start, end] pairs, in the given order."""
    write_project(path, video_name, [(0.1 * i, 0.1 * i + 0.05) for i in range(len(times))], value=value)
    project = json.loads(path.read_text(encoding="utf-8"))
    for entry, z in zip(project["metadata"].values(), times):
        entry["z"] = z
    path.write_text(json.dumps(project), encoding="utf-8")


def zero_frame_mp4(path: Path) -> None:
    """Write an mp4 container header for an H.264 stream without encoding any frame."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = LAYOUT.width, LAYOUT.height, "yuv420p"
        container.start_encoding()


def case_folder(raw: Path, participant: str) -> Path:
    folder = raw / participant / "T1"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def make_corrupt(raw, participant):
    folder = case_folder(raw, participant)
    source = write_good(raw / ".scratch", f"{participant}.mp4", seed=3)
    data = bytearray(source.read_bytes())
    # Overwrite everything after the header boxes with noise, so the container opens but frames do not decode.
    for index in range(2048, len(data)):
        data[index] = (index * 7919) % 251
    (folder / "echo.mp4").write_bytes(bytes(data))
    write_project(folder / "echo-4CV.json", "echo.mp4", [(0.2, 0.6)])


def make_truncated(raw, participant):
    folder = case_folder(raw, participant)
    source = write_good(raw / ".scratch", f"{participant}.mp4", seed=4)
    (folder / "echo.mp4").write_bytes(source.read_bytes()[:1500])
    write_project(folder / "echo-4CV.json", "echo.mp4", [(0.2, 0.6)])


def make_zero_frames(raw, participant):
    folder = case_folder(raw, participant)
    zero_frame_mp4(folder / "echo.mp4")
    write_project(folder / "echo-4CV.json", "echo.mp4", [(0.2, 0.6)])


def make_text_as_mp4(raw, participant):
    folder = case_folder(raw, participant)
    (folder / "echo.mp4").write_text("This is a text file, not a video.\n", encoding="utf-8")
    write_project(folder / "echo-4CV.json", "echo.mp4", [(0.2, 0.6)])


def make_with_json(text):
    def make(raw, participant):
        folder = case_folder(raw, participant)
        write_good(folder)
        (folder / "echo-4CV.json").write_text(text, encoding="utf-8")
    return make


def make_with_times(times, value="4CV"):
    def make(raw, participant):
        folder = case_folder(raw, participant)
        write_good(folder)
        write_times(folder / "echo-4CV.json", "echo.mp4", times, value)
    return make


def make_two_videos(raw, participant):
    folder = case_folder(raw, participant)
    write_good(folder, "echo.mp4")
    write_good(folder, "echo-cont.mp4", seed=1)
    write_project(folder / "echo-4CV.json", "echo.mp4", [(0.2, 0.6)])


def make_named(name):
    def make(raw, participant):
        folder = case_folder(raw, participant)
        write_good(folder, f"{name}.mp4")
        write_project(folder / f"{name}-4CV.json", f"{name}.mp4", [(0.2, 0.6)])
    return make


JSON_WITHOUT_METADATA = json.dumps({"project": {"pname": "x"}, "attribute": {}, "file": {"1": {"fname": "echo.mp4"}}})

# Participant folder -> (function that writes the case, expected outcome). The outcome kinds:
#   ("excluded", text): the manifest excludes the video, and its reason contains text.
#   ("frames_error", text): the video's frames job fails, and its log contains text.
#   ("interval", status, text): labels are written, and the interval has this status and note text.
#   ("qc_segment", text): labels are written, and a segment note in the QC annotation table contains text.
#   ("intervals", n): labels are written with n merged intervals, sorted by start.
#   ("ok", None): labels are written.
DATA_CASES = {
    "corrupt": (make_corrupt, ("frames_error", "echo.mp4")),
    "truncated": (make_truncated, ("frames_error", "echo.mp4")),
    "zero-frames": (make_zero_frames, ("frames_error", "echo.mp4")),
    "text-as-mp4": (make_text_as_mp4, ("frames_error", "echo.mp4")),
    "bad-json": (make_with_json("{\"project\": "), ("excluded", "not valid JSON")),
    "json-list": (make_with_json("[1, 2]"), ("excluded", "expected a VIA 3 project object")),
    "no-metadata": (make_with_json(JSON_WITHOUT_METADATA), ("excluded", "missing or invalid 'metadata' object")),
    "reversed": (make_with_times([[0.6, 0.2]]), ("excluded", "not after its start")),
    "negative": (make_with_times([[-0.5, 0.4]]), ("excluded", "negative time")),
    "empty-segment": (make_with_times([[0.4, 0.4]]), ("excluded", "not after its start")),
    "text-times": (make_with_times([["a", 0.4]]), ("excluded", "two numbers in seconds")),
    "beyond-end": (make_with_times([[0.5, 9.0]]), ("interval", "clipped", "after the video end")),
    "after-end": (make_with_times([[5.0, 9.0]]), ("interval", "excluded", "")),
    "overlapping": (make_with_times([[0.1, 0.5], [0.3, 0.8]]), ("intervals", 1)),
    "unsorted": (make_with_times([[0.6, 0.8], [0.1, 0.3]]), ("intervals", 2)),
    "unknown-label": (make_with_times([[0.1, 0.5]], value="probe"), ("qc_segment", "not in annotations.positive_values")),
    "two-videos": (make_two_videos, ("excluded", "2 videos in one session folder")),
    "with spaces": (make_named("echo with spaces"), ("ok", None)),
    "unicodé": (make_named("échö-vidéo"), ("ok", None)),
    "tags<>&": (make_named("echo <>&"), ("ok", None)),
    # Snakemake 9 expands "<name>" in input paths as a path variable, so the manifest excludes such names.
    "angle-name": (make_named("a<b>&c"), ("excluded", "reads as a path variable")),
}


def manifest_rows(workdir: Path, participant: str) -> pd.DataFrame:
    table = pd.read_csv(workdir / "results/manifest.tsv", sep="\t", dtype=str, keep_default_na=False)
    return table[table["participant"] == participant]


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory):
    """Build the tree, then run the manifest and the labels of every ok video.

    Returns the working folder, the labels run and the raw tree's digests before and after both runs.
    """
    workdir = tmp_path_factory.mktemp("bad-inputs")
    runs.write_workflow(workdir)
    raw = workdir / "raw"
    for number in range(1, 4):
        folder = case_folder(raw, f"good{number}")
        write_good(folder, seed=10 + number)
        write_project(folder / "echo-4CV.json", "echo.mp4", [(0.2, 0.6)])
    for participant, (make, _) in DATA_CASES.items():
        make(raw, participant)
    for scratch in (raw / ".scratch").iterdir():
        scratch.unlink()
    (raw / ".scratch").rmdir()
    runs.write_config(workdir, base_config())
    before = runs.tree_digest(raw)

    manifest_run = runs.run_snakemake(workdir, ["results/manifest.tsv"])
    assert manifest_run.returncode == 0, manifest_run.tail()
    table = pd.read_csv(workdir / "results/manifest.tsv", sep="\t", dtype=str, keep_default_na=False)
    ok_ids = table.loc[table["status"] == "ok", "video_id"].tolist()
    labels_run = runs.run_snakemake(workdir, [f"results/labels/{video_id}.tsv" for video_id in ok_ids],
                                    ["--keep-going"])
    return {"workdir": workdir, "before": before, "after": runs.tree_digest(raw), "labels_run": labels_run}


@pytest.mark.parametrize("participant", list(DATA_CASES))
def test_bad_data_case(bad_tree, participant):
    workdir = bad_tree["workdir"]
    outcome = DATA_CASES[participant][1]
    rows = manifest_rows(workdir, participant)
    assert not rows.empty, f"{participant} is missing from the manifest"
    kind = outcome[0]

    if kind == "excluded":
        assert set(rows["status"]) == {"excluded"}
        assert all(outcome[1] in reason for reason in rows["reason"]), rows["reason"].tolist()
        assert not any((workdir / "results/frames").glob(f"{rows.iloc[0]['video_id']}*"))
        return

    assert rows["status"].tolist() == ["ok"], rows["reason"].tolist()
    video_id = rows.iloc[0]["video_id"]
    labels = workdir / f"results/labels/{video_id}.tsv"
    if kind == "frames_error":
        assert not labels.exists()
        assert not (workdir / f"results/frames/{video_id}.h5").exists()
        assert f"video_id={video_id}" in bad_tree["labels_run"].output
        log = (workdir / f"logs/frames/{video_id}.log").read_text(encoding="utf-8")
        assert outcome[1] in log
        return

    assert labels.exists(), bad_tree["labels_run"].tail()
    intervals = pd.read_csv(workdir / f"results/labels/{video_id}.intervals.tsv", sep="\t", keep_default_na=False)
    if kind == "interval":
        assert intervals["status"].tolist() == [outcome[1]]
        assert outcome[2] in intervals.iloc[0]["note"]
    elif kind == "intervals":
        assert len(intervals) == outcome[1]
        assert intervals["start_s"].is_monotonic_increasing
    elif kind == "qc_segment":
        segments = pd.read_csv(workdir / "results/qc/annotations.tsv", sep="\t", dtype=str, keep_default_na=False)
        notes = segments.loc[segments["video_id"] == video_id, "note"].tolist()
        assert any(outcome[1] in note for note in notes), notes
        assert pd.read_csv(labels, sep="\t")["label"].sum() == 0


def test_bad_data_leaves_raw_tree_unchanged(bad_tree):
    assert bad_tree["after"] == bad_tree["before"]


def test_bad_data_fails_only_bad_jobs(bad_tree):
    run = bad_tree["labels_run"]
    assert run.returncode != 0
    failing = {participant for participant, (_, outcome) in DATA_CASES.items() if outcome[0] == "frames_error"}
    workdir = bad_tree["workdir"]
    for participant in failing:
        video_id = manifest_rows(workdir, participant).iloc[0]["video_id"]
        assert "Error in rule frames" in run.output
        assert not (workdir / f"results/labels/{video_id}.tsv").exists()
    labelled = [participant for participant, (_, outcome) in DATA_CASES.items()
                if outcome[0] not in ("excluded", "frames_error")]
    assert len(list((workdir / "results/labels").glob("*.intervals.tsv"))) == 3 + len(labelled)


def test_read_only_raw_tree(tmp_path):
    workdir = tmp_path / "work"
    runs.write_workflow(workdir)
    raw = workdir / "raw"
    for number in range(1, 4):
        folder = case_folder(raw, f"P{number}")
        write_good(folder, seed=number)
        write_project(folder / "echo-4CV.json", "echo.mp4", [(0.2, 0.6)])
    runs.write_config(workdir, base_config())
    before = runs.tree_digest(raw)
    modes = {path: path.stat().st_mode for path in [raw, *raw.rglob("*")]}
    for path in modes:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        run = runs.run_snakemake(workdir, ["results/labels/P1_T1.tsv", "results/labels/P2_T1.tsv",
                                           "results/labels/P3_T1.tsv"])
        after = runs.tree_digest(raw)
        modes_after = {path: path.stat().st_mode for path in modes}
    finally:
        for path, mode in modes.items():
            os.chmod(path, mode)
    assert run.returncode == 0, run.tail()
    # Tests run as root, who may write despite the mode, so the checksums show that nothing was written.
    assert after == before
    assert all(mode & stat.S_IWUSR == 0 for mode in modes_after.values())


# Config cases: (change, text the error message must contain).


def set_key(*keys_and_value):
    *keys, value = keys_and_value

    def change(config):
        section = config
        for key in keys[:-1]:
            section = section[key]
        section[keys[-1]] = value
    return change


def delete_key(*keys):
    def change(config):
        section = config
        for key in keys[:-1]:
            section = section[key]
        del section[keys[-1]]
    return change


CONFIG_CASES = {
    "type": (set_key("preprocess", "size", "large"), "preprocess.size"),
    "item-type": (set_key("experiments", "tiny", "batch_size", 8.5), "batch_size"),
    "enum-model": (set_key("experiments", "tiny", "model", "resnet"), "mobilenet_v1"),
    "enum-policy": (set_key("preprocess", "on_bad_video", "skip"), "on_bad_video"),
    "range-seed": (set_key("split", "seed", -1), "split.seed"),
    "range-learning-rate": (set_key("experiments", "tiny", "learning_rate", 0), "learning_rate"),
    "unknown-key": (set_key("preprocess", "colour", True), "colour"),
    "unknown-top-key": (set_key("evaluaton", {}), "evaluaton"),
    "missing-key": (delete_key("split"), "split"),
    "missing-model": (delete_key("experiments", "tiny", "model"), "model"),
    "fractions-sum": (set_key("split", "fractions", {"train": 0.5, "val": 0.2, "test": 0.2}), "add up to"),
    "unknown-sampling": (set_key("experiments", "tiny", "sampling", "dense"), "dense"),
}


def check_config(config: dict) -> None:
    """Validate a config as rules/common.smk does when snakemake starts."""
    echoflow_config.validate(config, echoflow_config.load_schema(runs.REPOSITORY / "config/schema.yaml"))
    echoflow_config.experiments(config)


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_invalid_config_message(case):
    change, expected = CONFIG_CASES[case]
    config = base_config()
    change(config)
    with pytest.raises(echoflow_config.ConfigError, match=re.escape(expected)):
        check_config(config)


def test_base_config_valid():
    check_config(base_config())


# Each snakemake start costs several seconds, so three cases (one per kind of check) run end to end.
@pytest.mark.parametrize("case", ["type", "unknown-key", "unknown-sampling"])
def test_invalid_config_stops_snakemake(tmp_path, case):
    change, expected = CONFIG_CASES[case]
    runs.write_workflow(tmp_path)
    raw = case_folder(tmp_path / "raw", "P1")
    (raw / "echo.mp4").write_bytes(b"")
    config = base_config()
    change(config)
    runs.write_config(tmp_path, config)
    before = runs.tree_digest(tmp_path / "raw")

    run = runs.run_snakemake(tmp_path, ["results/manifest.tsv"], ["--dry-run"])

    assert run.returncode != 0
    assert "Invalid configuration" in run.output, run.tail()
    assert expected in run.output, run.tail()
    assert run.jobs == []
    assert runs.tree_digest(tmp_path / "raw") == before

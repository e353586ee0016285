"""Rerun contract: which jobs Snakemake runs after one change to a finished run, and recovery from failures.

Every test copies the same finished run (tests/workflow_runs.py), makes one change and runs snakemake again.
"""

import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import h5py
import pandas as pd
import psutil
import pytest
import torch

import workflow_runs as runs
from echoflow.checkpoint import load_model
from echoflow.via import read_project, write_project

pytestmark = pytest.mark.workflow

# Jobs below the per-video stages that depend on every video's labels or on the model.
MODEL_STAGES = {"export", "latency", "evaluate", "timelines", "select_best", "report", "all"}


@pytest.fixture
def finished(tmp_path_factory, tmp_path):
    """Return a private copy of the finished run."""
    return runs.clone(runs.finished_run(tmp_path_factory), tmp_path / "work")


def manifest(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(workdir / "results/manifest.tsv", sep="\t", dtype=str, keep_default_na=False)


def ok_videos(workdir: Path) -> list[str]:
    table = manifest(workdir)
    return table.loc[table["status"] == "ok", "video_id"].tolist()


def video_in_split(workdir: Path, split: str) -> pd.Series:
    """Return the manifest row of the first ok video whose participant is in ``split``."""
    splits = pd.read_csv(workdir / "results/splits.tsv", sep="\t", dtype=str)
    members = set(splits.loc[splits["split"] == split, "participant"])
    table = manifest(workdir)
    rows = table[(table["status"] == "ok") & table["participant"].isin(members)]
    return rows.iloc[0]


def job_counts(run: runs.Run) -> Counter:
    return Counter(rule for rule, _ in run.jobs)


def test_nothing_changed_runs_nothing(finished):
    run = runs.run_snakemake(finished)
    assert run.returncode == 0, run.tail()
    assert run.jobs == []
    assert "Nothing to be done" in run.output


def test_deleted_store_rebuilt_on_request(finished):
    video_id = ok_videos(finished)[0]
    (finished / f"results/frames/{video_id}.h5").unlink()

    untouched = runs.run_snakemake(finished, extra_args=["--dry-run"])
    requested = runs.run_snakemake(finished, targets=[f"results/frames/{video_id}.h5"])
    after = runs.run_snakemake(finished, extra_args=["--dry-run"])

    # The files made from the store are still there, so nothing needs the store until it is requested.
    assert untouched.returncode == 0, untouched.tail()
    assert untouched.jobs == []
    assert requested.returncode == 0, requested.tail()
    assert requested.rules == {"frames"}
    assert requested.wildcard_values("frames", "video_id") == {video_id}
    # The rebuilt store is newer than the labels made from it, so its downstream jobs rerun next.
    assert after.returncode == 0, after.tail()
    assert after.wildcard_values("labels", "video_id") == {video_id}
    assert "frames" not in after.rules


def test_annotation_edit_reruns_its_labels(finished):
    row = video_in_split(finished, "train")
    path = finished / row["annotation"]
    intervals = read_project(path).intervals
    shortened = [(start, end - 0.4) for start, end in intervals]
    write_project(path, Path(row["video"]).name, shortened)

    run = runs.run_snakemake(finished)

    assert run.returncode == 0, run.tail()
    assert run.wildcard_values("labels", "video_id") == {row["video_id"]}
    assert run.count("frames") == 0
    assert run.count("segments") == 1
    assert run.wildcard_values("segments", "split") == {"train"}
    expected = {"manifest", "labels", "qc", "segments", "segment_summary", "train"} | MODEL_STAGES
    assert run.rules == expected
    assert "split" not in run.rules


def test_learning_rate_reruns_training_only(finished):
    config = runs.read_config(finished)
    config["experiments"]["tiny"]["learning_rate"] = 0.002
    runs.write_config(finished, config)

    run = runs.run_snakemake(finished)

    assert run.returncode == 0, run.tail()
    assert run.rules == {"train"} | MODEL_STAGES
    assert job_counts(run)["train"] == 1
    for rule in ("train", "export", "latency", "evaluate", "timelines"):
        assert run.wildcard_values(rule, "experiment") == {"tiny"}, rule
    model, checkpoint = load_model(finished / "results/models/tiny/model.pt")
    assert checkpoint["experiment"]["learning_rate"] == 0.002


def test_preprocess_size_reruns_every_video(finished):
    config = runs.read_config(finished)
    config["preprocess"]["size"] = [24, 24]
    runs.write_config(finished, config)
    videos = set(ok_videos(finished))

    # A dry run lists the same jobs as a real run here, because the manifest checkpoint is up to date.
    run = runs.run_snakemake(finished, extra_args=["--dry-run"])

    assert run.returncode == 0, run.tail()
    assert run.wildcard_values("frames", "video_id") == videos
    assert run.wildcard_values("labels", "video_id") == videos
    assert run.count("segments") == 3
    assert run.rules == {"frames", "labels", "qc", "segments", "segment_summary", "train"} | MODEL_STAGES


def test_new_video_decodes_only_itself(finished):
    row = video_in_split(finished, "train")
    participant = row["participant"]
    sessions = set(manifest(finished).query("participant == @participant")["session"])
    session = next(f"T{number}" for number in range(2, 10) if f"T{number}" not in sessions)
    folder = finished / "raw" / participant / session
    folder.mkdir(exist_ok=True)
    video_name = f"{participant}-{session[1:]} echo.mp4"
    shutil.copy2(finished / row["video"], folder / video_name)
    write_project(folder / f"{participant}-{session[1:]}-4CV.json", video_name,
                  read_project(finished / row["annotation"]).intervals)
    new_id = f"{participant}_{session}"

    run = runs.run_snakemake(finished)

    assert run.returncode == 0, run.tail()
    assert new_id in ok_videos(finished)
    assert run.wildcard_values("frames", "video_id") == {new_id}
    assert run.wildcard_values("labels", "video_id") == {new_id}
    assert run.wildcard_values("segments", "split") == {"train"}
    assert run.rules == {"manifest", "frames", "labels", "qc", "segments", "segment_summary", "train"} | MODEL_STAGES
    assert "split" not in run.rules


def test_script_edit_reruns_its_rule(finished):
    script = finished / "workflow/scripts/segment_summary.py"
    with open(script, "a", encoding="utf-8") as handle:
        handle.write("# edited\n")

    run = runs.run_snakemake(finished)

    assert run.returncode == 0, run.tail()
    # The summary table is read only by the report.
    assert run.rules == {"segment_summary", "report", "all"}


def test_rules_read_config_only_as_params():
    """Inside rule bodies the config is read only in params, threads and resources.

    Params are what Snakemake compares on a rerun, so a config value read elsewhere (e.g. in a script through
    snakemake.config) would not rerun the rule when it changes. Threads and resources do not change outputs.
    """
    offenders = []
    for path in sorted((runs.REPOSITORY / "rules").glob("*.smk")):
        in_rule, directive = False, None
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line and not line[0].isspace():
                in_rule = line.startswith(("rule ", "checkpoint "))
                continue
            if in_rule and line.startswith("    ") and not line.startswith("     "):
                directive = line.strip().split(":")[0]
            uses_config = "config[" in line or "config.get(" in line
            if in_rule and uses_config and directive not in ("params", "threads", "resources"):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []
    scripts = runs.REPOSITORY / "workflow/scripts"
    readers = [p.name for p in sorted(scripts.glob("*.py")) if "snakemake.config" in p.read_text(encoding="utf-8")]
    assert readers == []


# Failures and recovery.


def bad_copy(source: Path, target: Path, keep_bytes: int = 4096) -> None:
    """Write the first ``keep_bytes`` of ``source`` to ``target``: an mp4 cut off before its frames."""
    target.write_bytes(source.read_bytes()[:keep_bytes])


def test_corrupt_video_fails_alone_then_recovers(finished):
    table = manifest(finished)
    rows = table[table["status"] == "ok"]
    donor = rows.iloc[0]
    good_participant, bad_participant = donor["participant"], rows.iloc[-1]["participant"]
    sessions = {participant: set(table.query("participant == @participant")["session"])
                for participant in (good_participant, bad_participant)}

    def add_session(participant, write_video):
        session = next(f"T{number}" for number in range(3, 10) if f"T{number}" not in sessions[participant])
        folder = finished / "raw" / participant / session
        folder.mkdir(exist_ok=True)
        video_name = f"{participant}-{session[1:]} echo.mp4"
        write_video(folder / video_name)
        write_project(folder / f"{participant}-{session[1:]}-4CV.json", video_name,
                      read_project(finished / donor["annotation"]).intervals)
        return f"{participant}_{session}", folder / video_name

    good_id, _ = add_session(good_participant, lambda path: shutil.copy2(finished / donor["video"], path))
    bad_id, bad_video = add_session(bad_participant, lambda path: bad_copy(finished / donor["video"], path))

    failed = runs.run_snakemake(finished, extra_args=["--keep-going"])

    assert failed.returncode != 0
    assert "Error in rule frames" in failed.output
    assert bad_id in failed.output
    assert (finished / f"results/labels/{good_id}.tsv").exists()
    assert not (finished / f"results/frames/{bad_id}.h5").exists()
    log = (finished / f"logs/frames/{bad_id}.log").read_text(encoding="utf-8")
    assert bad_video.name in log

    shutil.copy2(finished / donor["video"], bad_video)
    fixed = runs.run_snakemake(finished)

    assert fixed.returncode == 0, fixed.tail()
    assert fixed.wildcard_values("frames", "video_id") == {bad_id}
    assert fixed.wildcard_values("labels", "video_id") == {bad_id}
    assert "manifest" in fixed.rules
    assert {"segments", "segment_summary", "report"} <= fixed.rules
    assert (finished / "results/eval_report.html").exists()


def find_script_process(parent: psutil.Process, script: str) -> psutil.Process | None:
    """Return the descendant process whose command line runs ``script`` (a rule script's file name)."""
    for child in parent.children(recursive=True):
        try:
            if any(part.endswith(script) for part in child.cmdline()):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def kill_when(process, script: str, ready, timeout_s: float = 300.0) -> int:
    """SIGKILL the job running ``script`` once ``ready()`` is true, then the snakemake process; return the job's PID."""
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"snakemake ended before a job running {script} was killed"
        job = find_script_process(parent, script)
        if job is not None and ready():
            os.kill(job.pid, signal.SIGKILL)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
            return job.pid
        time.sleep(0.02)
    raise AssertionError(f"no job running {script} within {timeout_s} s")


def test_killed_frames_job_recovers(finished):
    config = runs.read_config(finished)
    config["preprocess"]["size"] = [24, 24]
    runs.write_config(finished, config)

    frames = finished / "results/frames"
    process = runs.start_snakemake(finished, targets=["results/qc/videos.tsv"])
    # Kill while a store is half written: atomic_output writes it as .<name>.partial-<pid> first.
    kill_when(process, "frames.py", ready=lambda: any(frames.glob(".*.partial-*")))
    # A killed snakemake leaves its lock on the working folder.
    unlock = runs.run_snakemake(finished, extra_args=["--unlock"])
    assert unlock.returncode == 0, unlock.tail()

    rerun = runs.run_snakemake(finished, targets=["results/qc/videos.tsv"], extra_args=["--rerun-incomplete"])

    assert rerun.returncode == 0, rerun.tail()
    assert rerun.count("frames") >= 1
    for video_id in ok_videos(finished):
        with h5py.File(finished / f"results/frames/{video_id}.h5", "r") as store:
            assert store.attrs["status"] == "ok"
            assert store["frames"].shape[1:] == (24, 24)
            assert store["frames"].shape[0] == store["timestamps_ms"].shape[0] > 0
    # The rerun of the killed job's store deletes the partial file that the killed job left behind.
    partial = [path.name for path in frames.glob(".*.partial-*")]
    assert partial == []


def test_killed_training_resumes(finished):
    config = runs.read_config(finished)
    config["experiments"]["tiny"].update(learning_rate=0.002, max_epochs=6, patience=6)
    runs.write_config(finished, config)
    state = finished / "results/models/tiny.resume/state.pt"

    process = runs.start_snakemake(finished, targets=["results/models/tiny/model.pt"])
    kill_when(process, "train.py", ready=state.exists)
    assert state.exists()
    unlock = runs.run_snakemake(finished, extra_args=["--unlock"])
    assert unlock.returncode == 0, unlock.tail()

    rerun = runs.run_snakemake(finished, targets=["results/models/tiny/model.pt"], extra_args=["--rerun-incomplete"])

    assert rerun.returncode == 0, rerun.tail()
    assert rerun.rules == {"train"}
    log = (finished / "logs/train/tiny.log").read_text(encoding="utf-8")
    assert "resuming from" in log
    model, checkpoint = load_model(finished / "results/models/tiny/model.pt")
    assert checkpoint["experiment"]["max_epochs"] == 6
    assert isinstance(model, torch.nn.Module)
    history = pd.read_csv(finished / "results/models/tiny/history.tsv", sep="\t")
    assert history["epoch"].tolist() == list(range(1, len(history) + 1))
    assert not state.exists()

"""Run the workflow through profiles/slurm on a real SLURM cluster and compare with a local run.

Needs a SLURM controller on 127.0.0.1 (``.ci/slurm-up.sh`` starts a one-node cluster). Without one the
tests marked ``slurm`` are skipped, except with CI=true, where they fail. The settings that differ from a
real site (partition, account, the node's CPUs, memory and GPUs, status polling with squeue) are applied
as a second profile built from profiles/slurm/config.yaml, so every other profile setting is used as
written.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from echoflow.via import write_project
from synthetic import Layout, truncate, write_video

REPO = Path(__file__).resolve().parents[1]
CONTROLLER_ADDRESS = ("127.0.0.1", 6817)
SNAKEMAKE_TIMEOUT_S = 1500

# Every stage up to the clip sets; the local run and the runs with a bad video stop here.
SEGMENT_TARGETS = ["results/manifest.tsv", "results/splits.tsv", "results/segments/default/summary.tsv"]
# The SLURM run goes on to training, evaluation and the report.
REPORT_TARGETS = [*SEGMENT_TARGETS, "results/eval_report.html"]
# Output of a rule added to the workflow copy that records a job's HDF5_USE_FILE_LOCKING.
JOB_ENVIRONMENT = "job_environment.txt"
JOB_ENVIRONMENT_RULE = f"""

rule job_environment:
    output:
        "{JOB_ENVIRONMENT}",
    shell:
        "printf %s ${{{{HDF5_USE_FILE_LOCKING-unset}}}} > {{output}}"
"""
# Files that must be byte-identical between the local and the SLURM run.
COMPARED_FILES = [
    "results/manifest.tsv",
    "results/splits.tsv",
    "results/segments/default/train.h5",
    "results/segments/default/val.h5",
    "results/segments/default/test.h5",
    "results/segments/default/summary.tsv",
]
CLIP_SETS = [name for name in COMPARED_FILES if name.startswith("results/segments/")]

PARTICIPANTS = [f"01NVb-003-{number:03d}" for number in (101, 102, 103, 104, 105, 106)]
VIDEO_IDS = [f"{participant}_T1" for participant in PARTICIPANTS]
BAD_VIDEO_ID = VIDEO_IDS[2]
VIDEO_FRAMES = 240  # 8 s at 29.97 fps
FOUR_CHAMBER_INTERVALS = [(2.0, 5.0)]
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) ")


@dataclass(frozen=True)
class Cluster:
    partition: str
    cpus: int
    memory_mb: int
    gpus: int


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    state: str
    rule: str
    wildcards: str


@dataclass(frozen=True)
class Run:
    workdir: Path
    returncode: int
    output: str
    jobs: list[SlurmJob]


def controller_answers() -> bool:
    try:
        with socket.create_connection(CONTROLLER_ADDRESS, timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    """Describe the default partition and node of the running cluster, or skip without one."""
    if shutil.which("sbatch") is None or not controller_answers():
        message = f"no SLURM controller on {CONTROLLER_ADDRESS[0]}:{CONTROLLER_ADDRESS[1]}; start one with .ci/slurm-up.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)

    partitions = subprocess.run(["sinfo", "-h", "-o", "%P"], check=True, capture_output=True, text=True).stdout
    default = [name.rstrip("*") for name in partitions.split() if name.endswith("*")]
    assert default, f"sinfo lists no default partition: {partitions!r}"

    node = subprocess.run(["sinfo", "-h", "-N", "-p", default[0], "-o", "%c %m %G"], check=True,
                          capture_output=True, text=True).stdout.splitlines()[0].split()
    gpus = re.search(r"gpu:(?:[^:,]+:)?(\d+)", node[2])
    return Cluster(default[0], int(node[0]), int(node[1]), int(gpus.group(1)) if gpus else 0)


def write_ci_profile(cluster: Cluster, folder: Path) -> Path:
    """Write a profile that fits profiles/slurm to the test cluster; given after it, its keys win.

    The partition placeholders become the default partition. The account is dropped because the test
    cluster has no accounting database, so the plugin finds no account to guess and submits without one.
    Each job gets half the node's CPUs and at most half its memory, so two jobs run side by side. GPU
    requests stay when the node has a GPU.
    """
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    memory_mb = min(4000, cluster.memory_mb // 2)
    threads = max(1, cluster.cpus // 2)

    default_resources = dict(profile["default-resources"])
    default_resources.pop("slurm_account")
    default_resources["slurm_partition"] = cluster.partition
    default_resources["mem_mb"] = memory_mb

    set_resources = {}
    for rule, resources in profile["set-resources"].items():
        resources = dict(resources, mem_mb=memory_mb)
        if "slurm_partition" in resources:
            resources["slurm_partition"] = cluster.partition
        if cluster.gpus == 0:
            for key in ("gpu", "gpu_model", "gres"):
                resources.pop(key, None)
        set_resources[rule] = resources

    overrides = {
        "default-resources": default_resources,
        "set-resources": set_resources,
        "set-threads": {rule: min(count, threads) for rule, count in profile["set-threads"].items()},
        # Without accounting, sacct returns no jobs, but squeue lists finished jobs for MinJobAge seconds.
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 2,
        "latency-wait": 5,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(overrides, sort_keys=False))
    return folder


def write_raw_tree(root: Path) -> Path:
    """Write one short 320x240 capture and its VIA project per participant, in the real tree layout."""
    for index, participant in enumerate(PARTICIPANTS):
        session = root / participant / "T1"
        session.mkdir(parents=True)
        video = write_video(session / f"{participant}-1 echo.mp4", VIDEO_FRAMES, seed=index)
        write_project(session / f"{participant}-1-4CV.json", video.name, FOUR_CHAMBER_INTERVALS)
    return root


def video_path(raw_dir: Path, video_id: str) -> Path:
    participant = video_id.split("_")[0]
    return raw_dir / participant / "T1" / f"{participant}-1 echo.mp4"


def small_config(raw_dir: Path) -> dict:
    """Return the default config shrunk to the small tree: tiny frames, one short experiment."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["raw_dir"] = str(raw_dir)
    config["preprocess"].update(crop=Layout().crop, size=[32, 32], mask="none", on_bad_video="fail")
    config["sampling"]["default"].update(clips_per_interval=2, max_background_s=3.0)
    experiment = dict(config["experiments"]["mobilenet_v1"], batch_size=8, max_epochs=1, patience=1, augment=False)
    config["experiments"] = {"tiny": experiment}
    config["evaluation"].update(bootstrap=20, latency_repeats=5)
    return config


def copy_workflow(folder: Path, config: dict) -> Path:
    """Copy the workflow to ``folder`` with ``config`` as its default config, and return its Snakefile.

    The copied Snakefile gains the rule ``job_environment``, which writes the job's HDF5_USE_FILE_LOCKING.

    A config file given on the command line is merged into the default config, so it cannot remove the
    default experiments. ``--replace-workflow-config`` would, but Snakemake 9.27 does not pass it on to
    the jobs it submits to SLURM, which then see the merged config. A copy whose default config is the
    small one is the same code with the same config in every job.
    """
    for name in ("rules", "workflow", "envs", "profiles/default"):
        shutil.copytree(REPO / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "config").mkdir()
    shutil.copy2(REPO / "config/schema.yaml", folder / "config/schema.yaml")
    (folder / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakefile = folder / "Snakefile"
    snakefile.write_text((REPO / "Snakefile").read_text() + JOB_ENVIRONMENT_RULE)
    return snakefile


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def submitted_jobs(output: str) -> list[SlurmJob]:
    """Look up each SLURM job that a run submitted in the cluster's own job list.

    The plugin names the rule and wildcards in the job comment (rule_<rule>_wildcards_<values>). The
    cluster lists finished jobs for MinJobAge seconds (an hour on the cluster of .ci/slurm-up.sh), so this
    is called right after the run.
    """
    job_ids = SUBMITTED.findall(output)
    if not job_ids:
        return []
    listing = subprocess.run(["squeue", "--states=all", "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%k"],
                             check=True, capture_output=True, text=True).stdout
    jobs = []
    for line in listing.splitlines():
        job_id, state, comment = line.split("|", 2)
        match = re.fullmatch(r"rule_(.+?)(?:_wildcards_(.*))?", comment)
        assert match, f"SLURM job {job_id} has the comment {comment!r}, expected rule_<rule>[_wildcards_<values>]"
        jobs.append(SlurmJob(job_id, state, match.group(1), match.group(2) or ""))
    assert len(jobs) == len(job_ids), f"squeue lists {len(jobs)} of the submitted jobs {job_ids}"
    return jobs


def job_details(job_id: str) -> dict[str, str]:
    """Return the key=value fields that scontrol shows for a job."""
    text = subprocess.run(["scontrol", "show", "job", job_id], check=True, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def run_snakemake(workdir: Path, snakefile: Path, options: list[str], targets: list[str]) -> Run:
    """Run the workflow in ``workdir`` and append its output to ``workdir``/snakemake.out."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [
        "timeout", "-k", "10", str(SNAKEMAKE_TIMEOUT_S),
        sys.executable, "-m", "snakemake",
        "--snakefile", str(snakefile),
        "--directory", str(workdir),
        *options,
        *targets,
    ]
    # The workflow itself must set HDF5_USE_FILE_LOCKING for its jobs, so the run starts without it.
    environment = {name: value for name, value in os.environ.items() if name != "HDF5_USE_FILE_LOCKING"}
    result = subprocess.run(command, cwd=REPO, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    with open(workdir / "snakemake.out", "a", encoding="utf-8") as log:
        log.write(result.stdout)
    uses_slurm = any("profiles/slurm" in option for option in options)
    return Run(workdir, result.returncode, result.stdout, submitted_jobs(result.stdout) if uses_slurm else [])


def run_on_slurm(cluster: Cluster, workdir: Path, snakefile: Path, targets: list[str]) -> Run:
    ci_profile = write_ci_profile(cluster, workdir.parent / f"{workdir.name}-profile")
    options = ["--profile", str(REPO / "profiles/slurm"), "--profile", str(ci_profile)]
    return run_snakemake(workdir, snakefile, options, targets)


@pytest.fixture(scope="module")
def small_setup(cluster, tmp_path_factory):
    """Write the small raw tree and workflow copy; depends on ``cluster`` so that it skips without one."""
    root = tmp_path_factory.mktemp("slurm")
    raw_dir = write_raw_tree(root / "raw")
    snakefile = copy_workflow(root / "workflow", small_config(raw_dir))
    return root, raw_dir, snakefile


@pytest.fixture(scope="module")
def local_run(small_setup) -> Run:
    root, _, snakefile = small_setup
    run = run_snakemake(root / "local", snakefile, ["--cores", "2"], SEGMENT_TARGETS)
    assert run.returncode == 0, f"local run failed:\n{tail(run.output)}"
    return run


@pytest.fixture(scope="module")
def slurm_run(cluster, small_setup) -> Run:
    root, _, snakefile = small_setup
    run = run_on_slurm(cluster, root / "cluster", snakefile, [*REPORT_TARGETS, JOB_ENVIRONMENT])
    assert run.returncode == 0, f"SLURM run failed:\n{tail(run.output)}"
    return run


def workflow_rules() -> set[str]:
    result = subprocess.run([sys.executable, "-m", "snakemake", "--list-rules"], cwd=REPO, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"snakemake --list-rules failed:\n{tail(result.stderr)}"
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def test_profile_names_existing_rules():
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    rules = workflow_rules()
    for section in ("set-resources", "set-threads"):
        unknown = set(profile[section]) - rules
        assert not unknown, f"profiles/slurm/config.yaml {section} names rules the workflow lacks: {sorted(unknown)}"


@pytest.mark.slurm
def test_slurm_outputs_match_local(local_run, slurm_run):
    for name in COMPARED_FILES:
        local_file = local_run.workdir / name
        slurm_file = slurm_run.workdir / name
        assert local_file.is_file(), f"local run wrote no {name}"
        assert slurm_file.is_file(), f"SLURM run wrote no {name}"
        assert slurm_file.read_bytes() == local_file.read_bytes(), f"{name} differs between the local and the SLURM run"


@pytest.mark.slurm
def test_slurm_run_writes_report(slurm_run):
    report = slurm_run.workdir / "results/eval_report.html"
    assert report.is_file(), f"SLURM run wrote no {report}"
    assert "<html" in report.read_text(encoding="utf-8").lower()
    assert (slurm_run.workdir / "results/eval/tiny/metrics.json").is_file()


@pytest.mark.slurm
def test_slurm_jobs_completed_per_rule(slurm_run):
    assert slurm_run.jobs, f"the run submitted no SLURM job:\n{tail(slurm_run.output)}"
    failed = [job for job in slurm_run.jobs if job.state != "COMPLETED"]
    assert not failed, f"jobs that did not complete: {failed}"

    rules = {job.rule for job in slurm_run.jobs}
    assert {"manifest", "split", "segments", "segment_summary", "train", "evaluate", "report"} <= rules
    for rule in ("frames", "labels"):
        video_ids = sorted(job.wildcards for job in slurm_run.jobs if job.rule == rule)
        assert video_ids == sorted(VIDEO_IDS), f"{rule} jobs ran for {video_ids}"


@pytest.mark.slurm
def test_train_job_gets_gpu(cluster, slurm_run):
    if cluster.gpus == 0:
        pytest.skip("the test node has no GPU, so the GPU request was dropped")
    train_jobs = [job for job in slurm_run.jobs if job.rule == "train"]
    assert len(train_jobs) == 1
    details = job_details(train_jobs[0].job_id)
    assert details.get("TresPerJob", "").endswith("gpu:1"), f"train job fields: {details}"


@pytest.mark.slurm
def test_slurm_job_disables_hdf5_locking(slurm_run):
    assert "job_environment" in {job.rule for job in slurm_run.jobs}
    assert (slurm_run.workdir / JOB_ENVIRONMENT).read_text() == "FALSE"


@pytest.mark.slurm
def test_slurm_job_logs_under_snakemake(slurm_run):
    log_dir = slurm_run.workdir / ".snakemake/slurm_logs"
    for job in slurm_run.jobs:
        pattern = rf"SLURM jobid {job.job_id} \(log: {re.escape(str(log_dir))}/rule_{job.rule}/[^ ]*{job.job_id}\.log\)"
        assert re.search(pattern, slurm_run.output), f"no log path under {log_dir} for job {job}"


@pytest.fixture(scope="module")
def bad_video_runs(cluster, small_setup, local_run):
    """Run on a tree with one truncated video, then again after the video is replaced by a good copy."""
    root, raw_dir, _ = small_setup
    bad_raw = root / "bad-raw"
    shutil.copytree(raw_dir, bad_raw)
    truncate(video_path(raw_dir, BAD_VIDEO_ID), video_path(bad_raw, BAD_VIDEO_ID), fraction=0.5)
    snakefile = copy_workflow(root / "bad-workflow", small_config(bad_raw))

    workdir = root / "bad"
    failed = run_on_slurm(cluster, workdir, snakefile, SEGMENT_TARGETS)
    shutil.copyfile(video_path(raw_dir, BAD_VIDEO_ID), video_path(bad_raw, BAD_VIDEO_ID))
    fixed = run_on_slurm(cluster, workdir, snakefile, SEGMENT_TARGETS)
    return failed, fixed


@pytest.mark.slurm
def test_bad_video_fails_its_job_only(bad_video_runs):
    failed, _ = bad_video_runs
    assert failed.returncode != 0, f"the run with a truncated video succeeded:\n{tail(failed.output)}"
    assert "Error in rule frames" in failed.output
    assert BAD_VIDEO_ID in failed.output

    bad_jobs = [job for job in failed.jobs if job.rule == "frames" and job.wildcards == BAD_VIDEO_ID]
    assert bad_jobs, f"no frames job for {BAD_VIDEO_ID} was submitted"
    assert {job.state for job in bad_jobs} == {"FAILED"}
    other_jobs = [job for job in failed.jobs if job not in bad_jobs]
    assert all(job.state == "COMPLETED" for job in other_jobs), f"other jobs: {other_jobs}"

    # With keep-going, every other video still gets its frame store and labels.
    for video_id in VIDEO_IDS:
        if video_id != BAD_VIDEO_ID:
            assert (failed.workdir / f"results/frames/{video_id}.h5").is_file()
            assert (failed.workdir / f"results/labels/{video_id}.tsv").is_file()


@pytest.mark.slurm
def test_failed_job_log_kept(bad_video_runs):
    failed, _ = bad_video_runs
    job = next(job for job in failed.jobs if job.rule == "frames" and job.wildcards == BAD_VIDEO_ID)
    log = failed.workdir / f".snakemake/slurm_logs/rule_frames/{BAD_VIDEO_ID}/{job.job_id}.log"
    assert log.is_file(), f"the SLURM log of failed job {job.job_id} was not kept at {log}"
    assert "decoding failed" in log.read_text(errors="replace")


@pytest.mark.slurm
def test_rerun_submits_failed_video_only(bad_video_runs, local_run):
    _, fixed = bad_video_runs
    assert fixed.returncode == 0, f"the rerun after replacing the video failed:\n{tail(fixed.output)}"
    assert all(job.state == "COMPLETED" for job in fixed.jobs), f"rerun jobs: {fixed.jobs}"

    video_jobs = {(job.rule, job.wildcards) for job in fixed.jobs if job.rule in ("frames", "labels")}
    assert video_jobs == {("frames", BAD_VIDEO_ID), ("labels", BAD_VIDEO_ID)}

    # Only the clip set of the split that contains the repaired video depends on it. The manifest reads
    # the raw tree, so replacing a file reruns it too. The split does not change and is not rerun.
    splits = dict(line.split("\t") for line in (fixed.workdir / "results/splits.tsv").read_text().splitlines()[1:])
    bad_split = splits[BAD_VIDEO_ID.split("_")[0]]
    segment_jobs = {job.wildcards for job in fixed.jobs if job.rule == "segments"}
    assert segment_jobs == {f"default_{bad_split}"}
    assert {job.rule for job in fixed.jobs} <= {"manifest", "frames", "labels", "segments", "segment_summary"}

    # The repaired tree has the same videos as the clean one, so the clip sets match the local run.
    for name in CLIP_SETS:
        assert (fixed.workdir / name).read_bytes() == (local_run.workdir / name).read_bytes(), f"{name} differs"

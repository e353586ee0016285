"""Time ``snakemake --dry-run`` on a finished workflow with many videos.

Builds a raw tree of small synthetic H.264 videos (tests/synthetic.py, 96x64 pixels, 2 s at 5 fps) with one
VIA project each, runs the workflow to the end once, then times dry runs of the finished workflow. The dry
run plans every job, so its time is what each snakemake start costs before any job runs.

Usage: python benchmarks/dag.py [--videos 200] [--workdir /tmp/echoflow-dag] [--repeats 3] [--reuse]
Prints name=value lines, ending with dryrun_seconds=<median> and jobs=<jobs of the full run>.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "tests"))

import synthetic  # noqa: E402
import workflow_runs as runs  # noqa: E402
from echoflow.via import write_project  # noqa: E402

LAYOUT = synthetic.Layout(width=96, height=64, sector=(16, 4, 64, 56))
FPS = Fraction(5)
FRAMES = 10


def build_tree(raw: Path, videos: int) -> None:
    """Write ``videos`` videos, two sessions per participant, each with a 4CV interval from 0.4 s to 1.2 s."""
    for index in range(videos):
        participant, session = f"P{index // 2:03d}", f"T{index % 2 + 1}"
        folder = raw / participant / session
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{participant}-{session[1:]} echo.mp4"
        synthetic.write_video(folder / name, FRAMES, LAYOUT, fps=FPS, seed=index, threads=1)
        write_project(folder / f"{participant}-{session[1:]}-4CV.json", name, [(0.4, 1.2)])


def config() -> dict:
    settings = runs.tiny_config("raw")
    settings["preprocess"].update(crop=LAYOUT.crop, size=[32, 32], mask="none")
    settings["experiments"]["tiny"].update(max_epochs=1, batch_size=32)
    return settings


def timed(command: list[str], workdir: Path) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``command`` and return its wall time in seconds and its result."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=runs.environment())
    return time.perf_counter() - start, result


def children_cpu_seconds() -> float:
    """Return the user plus system CPU time of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build_and_run(workdir: Path, videos: int, cores: int) -> int:
    """Write a new working folder and raw tree, run the workflow to the end and return its number of jobs."""
    shutil.rmtree(workdir, ignore_errors=True)
    runs.make_workdir(workdir, config=config())
    start = time.perf_counter()
    build_tree(workdir / "raw", videos)
    print(f"tree_seconds={time.perf_counter() - start:.1f}")

    planned_seconds, planned = timed(runs.snakemake_command(workdir, extra_args=["--dry-run"]), workdir)
    if planned.returncode != 0:
        sys.exit(planned.stdout[-3000:] + planned.stderr[-3000:])
    # Before the manifest exists, a dry run lists the jobs up to the manifest checkpoint only.
    print(f"dryrun_from_scratch_seconds={planned_seconds:.2f}")

    run_seconds, full = timed(runs.snakemake_command(workdir, cores=cores), workdir)
    if full.returncode != 0:
        sys.exit(full.stdout[-3000:] + full.stderr[-3000:])
    print(f"run_seconds={run_seconds:.1f}")
    jobs = len(runs.parse_jobs(full.stdout + full.stderr))
    (workdir / "jobs.txt").write_text(str(jobs), encoding="utf-8")
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200, help="number of videos in the raw tree")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/echoflow-dag"), help="working folder (replaced)")
    parser.add_argument("--repeats", type=int, default=3, help="number of timed dry runs; the median is printed")
    parser.add_argument("--cores", type=int, default=2, help="--cores of the full run")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a finished working folder from an earlier call and only refresh its workflow code")
    arguments = parser.parse_args()

    workdir = arguments.workdir
    if arguments.reuse:
        for part in runs.WORKFLOW_PARTS:
            target = workdir / part
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
        runs.write_workflow(workdir)
        runs.write_config(workdir, config())
        arguments.videos = len(list((workdir / "raw").rglob("*.mp4")))
    else:
        build_and_run(workdir, arguments.videos, arguments.cores)

    # Wall time is what a user waits, but other jobs on the machine inflate it; CPU time varies less.
    durations, cpu_durations = [], []
    for _ in range(arguments.repeats):
        cpu_start = children_cpu_seconds()
        seconds, dry = timed(runs.snakemake_command(workdir, extra_args=["--dry-run"]), workdir)
        cpu_durations.append(children_cpu_seconds() - cpu_start)
        if dry.returncode != 0 or "Nothing to be done" not in dry.stdout + dry.stderr:
            sys.exit("the dry run of the finished workflow planned jobs:\n" + (dry.stdout + dry.stderr)[-3000:])
        durations.append(seconds)
    print(f"videos={arguments.videos}")
    print("dryrun_runs=" + ",".join(f"{seconds:.2f}" for seconds in durations))
    print(f"dryrun_cpu_seconds={statistics.median(cpu_durations):.2f}")
    print(f"dryrun_seconds={statistics.median(durations):.2f}")
    jobs_file = workdir / "jobs.txt"
    print(f"jobs={jobs_file.read_text(encoding='utf-8') if jobs_file.exists() else 'unknown'}")


if __name__ == "__main__":
    main()

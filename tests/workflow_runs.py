"""Helpers for end-to-end tests that run the real workflow with snakemake in temporary folders.

A working folder contains a copy of the workflow code (Snakefile, rules/, workflow/, config/, envs/), a user raw tree
under ``raw/`` (generated with the demo tree generator, so the tree can be edited) and a config with
``raw_dir: raw``. The config replaces the copy's config/config.yaml rather than being passed with --configfile,
because Snakemake merges a --configfile into the defaults key by key, which would keep the default experiments.

Because every path is relative to the folder, a finished folder can be copied with :func:`clone` and the
copy is again a finished run, including Snakemake's metadata in ``.snakemake/``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from echoflow import demo

REPOSITORY = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ("Snakefile", "rules", "workflow", "config", "envs")

# The minimum demo tree: 6 participants, 12-13 s at 5 fps (13 videos, 11 annotated, about 800 frames).
SMALL_DEMO = {"seed": 11, "participants": 6, "duration_s": [12, 13], "fps": 5}

# A small experiment and short evaluation: a run with one such experiment took 57 s on 2 cores (100 s with other
# jobs running).
TINY_EXPERIMENT = {
    "model": "mobilenet_v1",
    "model_args": {"width_mult": 0.25},
    "sampling": "default",
    "optimizer": "adam",
    "learning_rate": 0.001,
    "momentum": 0.9,
    "weight_decay": 0.0001,
    "batch_size": 8,
    "max_epochs": 2,
    "patience": 2,
    "augment": False,
    "seed": 7,
}


def tiny_config(raw_dir: str = "raw") -> dict:
    """Return a complete config for a fast run on the small demo tree (32x32 frames, 2-frame clips)."""
    return {
        "raw_dir": raw_dir,
        "annotations": {"positive_values": [], "empty_project": "exclude"},
        "preprocess": {"crop": {"x": 480, "y": 120, "width": 1130, "height": 810}, "size": [32, 32],
                       "mask": "auto", "stride": 1, "on_bad_video": "fail"},
        "split": {"seed": 1234, "fractions": {"train": 0.70, "val": 0.15, "test": 0.15}, "folds": 0},
        "sampling": {"default": {"seed": 99, "frames_per_clip": 2, "stride": 1, "max_background_s": 6.0,
                                 "clips_per_interval": 3, "min_clip_frames": 2, "short_intervals": "pad",
                                 "balance": "downsample", "sliding_window": None}},
        # Two experiments, so a test can check that changing one leaves the other alone.
        "experiments": {"tiny": dict(TINY_EXPERIMENT), "tiny_b": dict(TINY_EXPERIMENT, seed=8)},
        "sweep": {},
        "evaluation": {"seed": 5, "bootstrap": 20, "latency_repeats": 5, "latency_threads": 1,
                       "select_metric": "val_loss"},
    }


@dataclass
class Run:
    """Result of one snakemake invocation."""

    returncode: int
    output: str
    jobs: list[tuple[str, dict]] = field(default_factory=list)

    @property
    def rules(self) -> set[str]:
        """Names of the rules that had at least one job."""
        return {rule for rule, _ in self.jobs}

    def count(self, rule: str) -> int:
        """Return how many jobs of ``rule`` ran."""
        return sum(1 for name, _ in self.jobs if name == rule)

    def wildcard_values(self, rule: str, name: str) -> set[str]:
        """Return the values of wildcard ``name`` over the jobs of ``rule``."""
        return {wildcards[name] for job_rule, wildcards in self.jobs if job_rule == rule and name in wildcards}

    def tail(self, characters: int = 4000) -> str:
        """Return the end of the output, for assertion messages."""
        return self.output[-characters:]


def write_workflow(workdir: Path) -> None:
    """Copy the workflow code of the repository into ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        source = REPOSITORY / part
        if source.is_dir():
            shutil.copytree(source, workdir / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, workdir / part)


def write_config(workdir: Path, config: dict) -> Path:
    """Write ``config`` as the working folder's config/config.yaml."""
    path = workdir / "config" / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def read_config(workdir: Path) -> dict:
    """Return the config of a working folder."""
    return yaml.safe_load((workdir / "config" / "config.yaml").read_text(encoding="utf-8"))


def make_workdir(workdir: Path, raw_source: Path | None = None, config: dict | None = None) -> Path:
    """Create a working folder with the workflow code, a copy of ``raw_source`` as ``raw/`` and a config."""
    write_workflow(workdir)
    if raw_source is not None:
        shutil.copytree(raw_source, workdir / "raw", symlinks=True)
    write_config(workdir, config if config is not None else tiny_config())
    return workdir


def generate_raw_tree(target: Path, settings: dict | None = None) -> Path:
    """Generate a demo tree at ``target`` (it is a plain folder afterwards, used as a user's raw tree)."""
    demo.generate_tree(target, settings or SMALL_DEMO, workers=2)
    return target


def clone(source: Path, target: Path) -> Path:
    """Copy a working folder with modification times and ``.snakemake/`` metadata, so it stays finished."""
    shutil.copytree(source, target, symlinks=True)
    return target


# Snakemake 9 prints one block per job before it starts: "rule <name>:" (or "localrule"/"checkpoint"),
# indented fields, and "wildcards: a=1, b=2" for rules with wildcards. A dry run prints the same blocks.
JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) ([\w.-]+):\s*$")
WILDCARDS_LINE = re.compile(r"^\s+wildcards: (.*)$")
JOB_FIELD = re.compile(r"^\s+\w+: ")


def parse_jobs(output: str) -> list[tuple[str, dict]]:
    """Return (rule, wildcards) for every job block in snakemake's output, in the printed order."""
    jobs: list[tuple[str, dict]] = []
    current = None
    for line in output.splitlines():
        header = JOB_HEADER.match(line)
        if header:
            current = (header.group(1), {})
            jobs.append(current)
            continue
        if current is None:
            continue
        wildcards = WILDCARDS_LINE.match(line)
        if wildcards:
            for pair in wildcards.group(1).split(", "):
                name, _, value = pair.partition("=")
                current[1][name] = value
        elif not JOB_FIELD.match(line):
            current = None
    return jobs


def snakemake_command(workdir: Path, targets=(), extra_args=(), cores: int = 2) -> list[str]:
    """Return the snakemake command line for a run inside ``workdir``."""
    return [sys.executable, "-m", "snakemake", "-s", "Snakefile", "--cores", str(cores), "--printshellcmds", *extra_args, *targets]


def environment() -> dict:
    """Return the environment for a snakemake subprocess: the repository's package first on the path."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPOSITORY), path) if p)}


def run_snakemake(workdir: Path, targets=(), extra_args=(), timeout: int = 900) -> Run:
    """Run snakemake in ``workdir`` and return its exit code, combined output and the jobs it started."""
    result = subprocess.run(snakemake_command(workdir, targets, extra_args), cwd=workdir, capture_output=True,
                            text=True, timeout=timeout, env=environment())
    output = result.stdout + result.stderr
    return Run(result.returncode, output, parse_jobs(output))


def start_snakemake(workdir: Path, targets=(), extra_args=()) -> subprocess.Popen:
    """Start snakemake in ``workdir`` without waiting; its output goes to ``workdir/snakemake.out``."""
    log = open(workdir / "snakemake.out", "w", encoding="utf-8")
    return subprocess.Popen(snakemake_command(workdir, targets, extra_args), cwd=workdir, stdout=log,
                            stderr=subprocess.STDOUT, env=environment())


def tree_digest(root: Path) -> dict[str, str]:
    """Map every path under ``root`` (folders too) to the sha256 of its bytes, or "dir" for a folder."""
    digest = {}
    for folder, folders, names in os.walk(root):
        for name in folders:
            digest[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                digest[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return digest


_FINISHED: dict[str, Path] = {}


def finished_run(tmp_path_factory) -> Path:
    """Return a working folder with a complete run on the small demo tree, built once per test session.

    Tests must not change it: copy it with :func:`clone` first.
    """
    if "base" not in _FINISHED:
        root = tmp_path_factory.mktemp("finished")
        raw = generate_raw_tree(root / "raw-source")
        workdir = make_workdir(root / "work", raw)
        run = run_snakemake(workdir)
        assert run.returncode == 0, run.tail()
        _FINISHED["base"] = workdir
        _FINISHED["raw"] = raw
    return _FINISHED["base"]


def small_raw_tree(tmp_path_factory) -> Path:
    """Return the small demo tree of the finished run (read-only: copy it before changing it)."""
    finished_run(tmp_path_factory)
    return _FINISHED["raw"]

"""Generate the demo tree into a temporary folder and print its cost as name=value lines.

Usage: python benchmarks/demo.py [--workers 2] [--config config/config.yaml]

Run it on an idle machine, because other processes on the same cores inflate wall_s and, less so, cpu_s.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import yaml

from echoflow.demo import file_checksums, generate_tree

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """Return user + system CPU time of this process and its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=ROOT / "config" / "config.yaml", help="workflow config file")
    parser.add_argument("--workers", type=int, default=2, help="encoder processes")
    arguments = parser.parse_args()
    with open(arguments.config, encoding="utf-8") as handle:
        demo = yaml.safe_load(handle).get("demo", {})

    with tempfile.TemporaryDirectory(prefix="echoflow-demo-") as folder:
        root = Path(folder) / "raw"
        start_wall, start_cpu = time.perf_counter(), cpu_seconds()
        plan = generate_tree(root, demo, workers=arguments.workers)
        wall, cpu = time.perf_counter() - start_wall, cpu_seconds() - start_cpu
        files = file_checksums(root)
        size = sum((root / relative).stat().st_size for _, relative in files)

    print(f"workers={arguments.workers}")
    print(f"load_average_1min={os.getloadavg()[0]:.1f}")
    print(f"videos={len(plan.videos)}")
    print(f"files={len(files)}")
    print(f"wall_s={wall:.1f}")
    print(f"cpu_s={cpu:.1f}")
    print(f"tree_mb={size / 1e6:.1f}")


if __name__ == "__main__":
    main()

"""Measure training steps/s per architecture and the cost of feeding them from a segment set.

For each architecture of config/config.yaml's experiments, the same number of optimizer steps runs twice:
fed by echoflow.training (reading the HDF5 segment set, shuffling and converting uint8 clips to float
batches), and on float batches already in memory. Prints name=value lines; the last one is
loader_overhead_ratio, the summed loader-fed time over the summed in-memory time.

    python benchmarks/training.py --clips 600 --frames 4 --size 128 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

# As in workflow/scripts/train.py: idle OpenMP threads sleep, which keeps timings sane on shared CPUs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import h5py
import numpy as np
import torch
import torch.nn.functional as F
import yaml

from echoflow import training
from echoflow.augment import Augmentation, augment_batch
from echoflow.models import build
from echoflow.training_settings import resolve_settings

ROOT = Path(__file__).resolve().parents[1]


def write_segment_set(path: Path, clips: int, frames: int, size: int, seed: int) -> None:
    """Write a segment set laid out like the segments rule's: gzip chunks of one clip."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(clips, frames, size, size), dtype=np.uint8)
    # Smooth the noise so gzip compresses it roughly as much as ultrasound frames.
    data = ((data.astype(np.uint16) + np.roll(data, 1, axis=-1) + np.roll(data, 1, axis=-2)) // 3).astype(np.uint8)
    with h5py.File(path, "w") as store:
        store.create_dataset("clips", data=data, chunks=(1, frames, size, size), compression="gzip",
                             compression_opts=4)
        store["labels"] = (np.arange(clips) % 2).astype(np.uint8)
        store.attrs["balance"] = "downsample"
        store.attrs["frames_per_clip"] = frames
        store.attrs["stride"] = 1
        store.attrs["sampling"] = json.dumps({"frames_per_clip": frames})


def step(model, optimizer, clips, labels) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(clips), labels).backward()
    optimizer.step()


def time_loader_fed(model, optimizer, path: Path, steps: int, batch_size: int) -> float:
    """Time reading the set and ``steps`` steps on batches from training.iterate_batches."""
    started = time.perf_counter()
    segments = training.read_segments(path)
    generator = torch.Generator().manual_seed(0)
    done = 0
    while done < steps:
        for clips, labels in training.iterate_batches(segments, batch_size, torch.device("cpu"), generator):
            step(model, optimizer, clips, labels)
            done += 1
            if done == steps:
                break
    return time.perf_counter() - started


def time_in_memory(model, optimizer, batches: list, steps: int) -> float:
    started = time.perf_counter()
    for index in range(steps):
        clips, labels = batches[index % len(batches)]
        step(model, optimizer, clips, labels)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=600, help="clips in the generated segment set")
    parser.add_argument("--frames", type=int, default=4, help="frames per clip (K)")
    parser.add_argument("--size", type=int, default=128, help="frame width and height in pixels")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per timed run")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per feeding; the fastest counts")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"), help="experiments to time")
    parser.add_argument("--only", nargs="*", help="names of the experiments to time (default: all)")
    args = parser.parse_args()

    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    experiments = yaml.safe_load(Path(args.config).read_text())["experiments"]
    loader_total = memory_total = 0.0
    with tempfile.TemporaryDirectory(prefix="echoflow-bench-") as folder:
        path = Path(folder) / "train.h5"
        write_segment_set(path, args.clips, args.frames, args.size, seed=0)
        print(f"segment_set_mb={path.stat().st_size / 1e6:.1f}")
        segments = training.read_segments(path)
        for name, raw in experiments.items():
            if args.only and name not in args.only:
                continue
            settings = resolve_settings(raw)
            batch_size = settings["batch_size"]
            batches = [next(training.iterate_batches(segments, batch_size, torch.device("cpu"),
                                                     torch.Generator().manual_seed(i))) for i in range(4)]
            torch.manual_seed(0)
            model = build(settings["model"], args.frames, **settings["model_args"]).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=settings["learning_rate"])
            time_in_memory(model, optimizer, batches, 2)  # Warm up allocator and kernels.
            loader = min(time_loader_fed(model, optimizer, path, args.steps, batch_size) for _ in range(args.repeats))
            memory = min(time_in_memory(model, optimizer, batches, args.steps) for _ in range(args.repeats))
            started = time.perf_counter()
            for clips, _ in batches:
                augment_batch(clips, Augmentation(), torch.Generator().manual_seed(0))
            augment_seconds = (time.perf_counter() - started) / len(batches)
            loader_total += loader
            memory_total += memory
            print(f"steps_per_s_{name}={args.steps / memory:.2f}")
            print(f"loader_fed_steps_per_s_{name}={args.steps / loader:.2f}")
            print(f"augment_ms_per_batch_{name}={augment_seconds * 1000:.1f}")
    print(f"loader_overhead_ratio={loader_total / memory_total:.3f}")


if __name__ == "__main__":
    main()

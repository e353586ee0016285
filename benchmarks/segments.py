"""Time one epoch of training clips: decoding each clip from its mp4 against reading it from a segment set.

The old way is how the earlier research code fed training, written here from its description. For every
clip it opens the mp4 with cv2.VideoCapture and seeks with CAP_PROP_POS_MSEC to the clip start. Then it
decodes until the clip end and preprocesses every kept frame (crop, grayscale, mask, resize). The new way reads the same clips
from results/segments/<sampling>/<split>.h5 with h5py, in shuffled batches as a training loader would.

Usage:
    python benchmarks/segments.py                      # build the demo tree and segment sets in --workdir first
    python benchmarks/segments.py --results RESULTS    # reuse a results/ folder that has segment sets

Prints name=value lines and ends with speedup=<old seconds / new seconds>.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd

REPOSITORY = Path(__file__).resolve().parents[1]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, help="existing results/ folder; its parent is the folder that "
                        "snakemake ran in, against which the manifest's video paths are resolved")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/echoflow-benchmark-segments"),
                        help="folder to build the demo results in when --results is not given")
    parser.add_argument("--sampling", default="default", help="sampling name (default: %(default)s)")
    parser.add_argument("--split", default="train", help="split whose clips form the epoch (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per batch read from the segment set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the epoch's clip order")
    parser.add_argument("--check", type=int, default=8,
                        help="clips whose old-way frames are compared with the segment set (default: %(default)s)")
    return parser.parse_args()


def build_results(workdir: Path, sampling: str) -> Path:
    """Run the workflow with the default (demo) config up to the segment sets and return the results folder."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPOSITORY / "Snakefile"), "--directory", str(workdir),
               "--cores", "2", f"results/segments/{sampling}/summary.tsv"]
    print("building:", " ".join(command), file=sys.stderr)
    subprocess.run(command, check=True)
    return workdir / "results"


class OldLoader:
    """Decode clips from the source mp4 files the way the earlier research code did."""

    def __init__(self, results: Path, frames_per_clip: int, stride: int):
        self.results = results
        self.workdir = results.parent
        self.frames_per_clip = frames_per_clip
        self.stride = stride
        manifest = pd.read_csv(results / "manifest.tsv", sep="\t", dtype=str, keep_default_na=False)
        self.videos = dict(zip(manifest["video_id"], manifest["video"]))
        self.stores: dict[str, dict] = {}

    def store_settings(self, video_id: str) -> dict:
        """Read the crop box, mask, output size, decode stride and frame times that the frame store used."""
        if video_id not in self.stores:
            with h5py.File(self.results / "frames" / f"{video_id}.h5", "r") as store:
                x, y, width, height = (int(value) for value in store.attrs["crop_box"])
                preprocess = json.loads(store.attrs["preprocess"])
                mask = store["mask"][:]
                self.stores[video_id] = {
                    "box": (x, y, width, height),
                    "size": tuple(preprocess["size"]),
                    "decode_stride": int(preprocess.get("stride", 1)),
                    # The old code computed the mask once per video at source resolution.
                    "mask": cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST),
                    "timestamps_ms": store["timestamps_ms"][:],
                }
        return self.stores[video_id]

    def preprocess(self, frame: np.ndarray, settings: dict) -> np.ndarray:
        x, y, width, height = settings["box"]
        cropped = frame[y:y + height, x:x + width]
        gray = cv2.cvtColor(cropped, cv2.COLOR_BGR2GRAY)
        masked = gray * settings["mask"]
        return cv2.resize(masked, settings["size"], interpolation=cv2.INTER_AREA)

    def load(self, video_id: str, start_frame: int) -> np.ndarray:
        """Return one clip [K, H, W] starting at the stored frame ``start_frame``."""
        settings = self.store_settings(video_id)
        step = self.stride * settings["decode_stride"]
        wanted = {index * step for index in range(self.frames_per_clip)}
        capture = cv2.VideoCapture(str(self.workdir / self.videos[video_id]))
        capture.set(cv2.CAP_PROP_POS_MSEC, float(settings["timestamps_ms"][start_frame]))
        frames = []
        for position in range(max(wanted) + 1):
            ok, frame = capture.read()
            if not ok:
                break
            if position in wanted:
                frames.append(self.preprocess(frame, settings))
        capture.release()
        while len(frames) < self.frames_per_clip:  # Clip ran past the video end: repeat the last frame.
            frames.append(frames[-1])
        return np.stack(frames)


def time_old_way(loader: OldLoader, video_ids: list[str], start_frames: np.ndarray, order: np.ndarray,
                 check: int) -> tuple[float, list[np.ndarray]]:
    """Load every clip in ``order`` the old way; return seconds and the first ``check`` clips."""
    kept = []
    started = time.perf_counter()
    for position, index in enumerate(order):
        clip = loader.load(video_ids[index], int(start_frames[index]))
        if position < check:
            kept.append(clip)
    return time.perf_counter() - started, kept


def time_segment_set(path: Path, order: np.ndarray, batch_size: int) -> float:
    """Read every clip in ``order`` from the segment set in batches; return seconds."""
    started = time.perf_counter()
    with h5py.File(path, "r") as segment_set:
        clips = segment_set["clips"]
        labels = segment_set["labels"]
        for first in range(0, len(order), batch_size):
            batch = np.sort(order[first:first + batch_size])
            # One read per clip: with h5py 3.16, clips[list] was about ten times slower than this on the
            # demo set, because h5py turns a list of indices into one large point selection.
            data = np.stack([clips[index] for index in batch])
            _ = labels[batch]
            assert data.shape[0] == len(batch)
    return time.perf_counter() - started


def main() -> None:
    arguments = parse_arguments()
    results = arguments.results or build_results(arguments.workdir, arguments.sampling)
    path = results / "segments" / arguments.sampling / f"{arguments.split}.h5"
    with h5py.File(path, "r") as segment_set:
        video_ids = segment_set["video_id"].asstr()[:].tolist()
        start_frames = segment_set["start_frame"][:]
        frames_per_clip = int(segment_set.attrs["frames_per_clip"])
        stride = int(segment_set.attrs["stride"])
        clip_shape = segment_set["clips"].shape[1:]
    if not video_ids:
        raise SystemExit(f"{path} has no clips; choose another --split or --sampling.")
    order = np.random.default_rng(arguments.seed).permutation(len(video_ids))

    loader = OldLoader(results, frames_per_clip, stride)
    old_seconds, old_clips = time_old_way(loader, video_ids, start_frames, order, arguments.check)
    set_seconds = time_segment_set(path, order, arguments.batch_size)

    with h5py.File(path, "r") as segment_set:
        reference = [segment_set["clips"][int(index)] for index in order[:len(old_clips)]]
    difference = np.mean([np.abs(old.astype(np.int16) - new).mean() for old, new in zip(old_clips, reference)])

    print(f"segment_set={path}")
    print(f"clips={len(video_ids)}")
    print(f"clip_shape={'x'.join(str(side) for side in clip_shape)}")
    print(f"batch_size={arguments.batch_size}")
    print(f"old_seconds={old_seconds:.3f}")
    print(f"old_ms_per_clip={1000 * old_seconds / len(video_ids):.2f}")
    print(f"set_seconds={set_seconds:.4f}")
    print(f"set_ms_per_clip={1000 * set_seconds / len(video_ids):.3f}")
    print(f"old_vs_set_mean_abs_difference={difference:.2f}")
    print(f"speedup={old_seconds / set_seconds:.1f}")


if __name__ == "__main__":
    main()

"""Run one experiment's model over every frame of the test videos and write timelines and VIA projects."""

import os

from echoflow.checkpoint import read
from echoflow.latency import onnx_runner
from echoflow.logs import log_to_file
from echoflow.timeline import TimelineSettings, split_videos, write_timelines

log = log_to_file(snakemake.log[0])
# The ONNX export, which the export rule checked against the checkpoint, is several times faster than eager
# PyTorch on the CPU.
forward = onnx_runner(snakemake.input.onnx, threads=max(1, min(snakemake.threads, os.cpu_count() or 1)))
preprocess = read(snakemake.input.model)["preprocess"]

videos = split_videos(snakemake.input.manifest, snakemake.input.splits, "test")
log.info("test videos: %s", ", ".join(videos["video_id"]) or "none")
frames_dir = os.path.dirname(snakemake.input.frames[0]) if snakemake.input.frames else "results/frames"
labels_dir = os.path.dirname(snakemake.input.labels[0]) if snakemake.input.labels else "results/labels"
write_timelines(forward, snakemake.wildcards.experiment, videos, frames_dir, labels_dir,
                int(preprocess["frames_per_clip"]), int(preprocess.get("clip_stride", 1)),
                TimelineSettings.from_config(snakemake.params.timeline), snakemake.output.table,
                snakemake.output.arrays, snakemake.output.via)

"""Run one experiment's model over every frame of the test videos and write timelines and VIA projects."""

import os

import torch

from echoflow.checkpoint import load_model
from echoflow.logs import log_to_file
from echoflow.timeline import TimelineSettings, split_videos, write_timelines

log = log_to_file(snakemake.log[0])
torch.set_num_threads(max(1, min(snakemake.threads, os.cpu_count() or 1)))
model, checkpoint = load_model(snakemake.input.model)


def forward(batch):
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy()


videos = split_videos(snakemake.input.manifest, snakemake.input.splits, "test")
log.info("test videos: %s", ", ".join(videos["video_id"]) or "none")
frames_dir = os.path.dirname(snakemake.input.frames[0]) if snakemake.input.frames else "results/frames"
labels_dir = os.path.dirname(snakemake.input.labels[0]) if snakemake.input.labels else "results/labels"
write_timelines(forward, snakemake.wildcards.experiment, videos, frames_dir, labels_dir,
                int(checkpoint["preprocess"]["frames_per_clip"]), int(checkpoint["preprocess"].get("clip_stride", 1)),
                TimelineSettings.from_config(snakemake.params.timeline), snakemake.output.table,
                snakemake.output.arrays, snakemake.output.via)

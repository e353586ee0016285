"""Decode one video into its frame store results/frames/{video_id}.h5."""

import os

from echoflow.frames import build_store
from echoflow.logs import log_to_file

log = log_to_file(snakemake.log[0])
threads = min(snakemake.threads, os.cpu_count() or 1)
log.info("decoding %s with %d threads, preprocess %s", snakemake.input.video, threads, snakemake.params.preprocess)
attrs = build_store(snakemake.input.video, snakemake.output.store, snakemake.params.preprocess, threads=threads,
                    video_id=snakemake.wildcards.video_id)
log.info("status %s, %d frames decoded, crop box %s%s", attrs["status"], attrs["frame_count_decoded"],
         list(attrs["crop_box"]), f", reason: {attrs['reason']}" if attrs["reason"] else "")

"""Write results/segments/{sampling}/{split}.h5: the sampled clips of one split."""

from pathlib import Path

import pandas as pd

from echoflow.logs import log_to_file
from echoflow.segments import Sampling, VideoInput, build_segment_set

log = log_to_file(snakemake.log[0])
split = snakemake.wildcards.split
sampling = Sampling.from_config(snakemake.params.sampling)
participants = snakemake.params.videos
videos = [
    VideoInput(Path(frames).stem, participants[Path(frames).stem], Path(frames), Path(labels), Path(intervals))
    for frames, labels, intervals in zip(snakemake.input.frames, snakemake.input.labels, snakemake.input.intervals)
]
members = set(participants.values())
splits = pd.read_csv(snakemake.input.splits, sep="\t", dtype=str, keep_default_na=False)
written = set(splits.loc[splits["split"] == split, "participant"])
if written != members:
    raise RuntimeError(
        f"{snakemake.input.splits} puts {sorted(written)} in split {split}, but the workflow planned this job "
        f"for {sorted(members)}. Delete {snakemake.input.splits} and run snakemake again.")
width, height = snakemake.params.size
log.info("sampling %s (%s), split %s: %d participant(s), %d video(s)", snakemake.wildcards.sampling,
         sampling.to_json(), split, len(members), len(videos))
counts = build_segment_set(videos, members, sampling, snakemake.wildcards.sampling, split, snakemake.output.clips,
                           frame_shape=(height, width))
log.info("wrote %s: %d background and %d 4CV clips", snakemake.output.clips, counts["background"], counts["4CV"])

"""Write results/qc/videos.tsv: the status of every video after decoding."""

from echoflow.atomic import atomic_output
from echoflow.frames import video_qc_table
from echoflow.logs import log_to_file

log = log_to_file(snakemake.log[0])
table = video_qc_table(snakemake.input.manifest, snakemake.input.stores)
with atomic_output(snakemake.output.videos) as temporary:
    table.to_csv(temporary, sep="\t", index=False)
log.info("videos by status: %s", table["status"].value_counts().to_dict())

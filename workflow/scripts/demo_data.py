"""Generate the demo raw tree and write its checksum list (the rule's output)."""

import os

from echoflow.demo import generate_tree, write_checksums
from echoflow.logs import log_to_file

log = log_to_file(snakemake.log[0])
workers = max(1, min(snakemake.threads, os.cpu_count() or 1))
plan = generate_tree(snakemake.params.raw_dir, snakemake.params.demo, workers=workers)
write_checksums(snakemake.params.raw_dir, snakemake.output.stamp)
log.info("wrote %s: %d videos, %d ignored files, %d empty session folders", snakemake.output.stamp,
         len(plan.videos), len(plan.ignored_files), len(plan.empty_folders))

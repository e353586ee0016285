"""Write results/segments/{sampling}/summary.tsv: clip counts per class and split."""

from echoflow.atomic import atomic_output
from echoflow.logs import log_to_file
from echoflow.segments import summarize

log = log_to_file(snakemake.log[0])
table = summarize(dict(zip(snakemake.params.splits, snakemake.input.sets)))
with atomic_output(snakemake.output.summary) as temporary:
    table.to_csv(temporary, sep="\t", index=False)
log.info("clip counts:\n%s", table.to_string(index=False))

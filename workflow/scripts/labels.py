"""Write the per-frame labels and the interval table of one video."""

from echoflow.labels import build_labels
from echoflow.logs import log_to_file

log = log_to_file(snakemake.log[0])
settings = snakemake.params.annotations
summary = build_labels(
    snakemake.input.annotation,
    snakemake.input.store,
    snakemake.output.labels,
    snakemake.output.intervals,
    positive_values=settings.get("positive_values", []),
    empty_project=settings.get("empty_project", "exclude"),
)
log.info("%d frames, %d labelled 4CV; intervals by status: %s", summary["frames"], summary["frames_4cv"],
         summary["intervals"])

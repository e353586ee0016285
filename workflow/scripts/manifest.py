"""Write results/manifest.tsv and the QC tables of discovery."""

from echoflow.atomic import atomic_output
from echoflow.discovery import build_manifest
from echoflow.logs import log_to_file

log = log_to_file(snakemake.log[0])
settings = snakemake.params.annotations
manifest, segments, ignored = build_manifest(
    snakemake.params.raw_dir,
    positive_values=settings.get("positive_values", []),
    empty_project=settings.get("empty_project", "exclude"),
)
for table, target in ((segments, snakemake.output.annotations), (ignored, snakemake.output.ignored),
                      (manifest, snakemake.output.manifest)):
    with atomic_output(target) as temporary:
        table.to_csv(temporary, sep="\t", index=False)
counts = manifest["status"].value_counts().to_dict()
log.info("videos: %s; ignored files: %d", counts, len(ignored))
for row in manifest[manifest["status"] != "ok"].itertuples():
    log.info("excluded %s: %s", row.video_id, row.reason)

"""Write results/splits.tsv: the participant-level train/val/test assignment."""

from echoflow.atomic import atomic_output
from echoflow.logs import log_to_file
from echoflow.split import assign_splits

log = log_to_file(snakemake.log[0])
participants = snakemake.params.participants
settings = snakemake.params.split
table = assign_splits(participants, settings["fractions"], settings["seed"], settings.get("folds", 0))
with atomic_output(snakemake.output.splits) as temporary:
    table.to_csv(temporary, sep="\t", index=False)

for name, group in table.groupby("split", sort=False):
    with_4cv = sum(participants[participant] for participant in group["participant"])
    log.info("%s: %d participant(s), %d with 4CV: %s", name, len(group), with_4cv,
             ", ".join(group["participant"]))

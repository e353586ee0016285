"""Choose the best experiment on the validation split and copy its export to results/best_model/."""

import os

from echoflow.export import install_best, select_best
from echoflow.logs import log_to_file

log = log_to_file(snakemake.log[0])
experiments = snakemake.params.experiments
metric = snakemake.params.select_metric
candidates = {name: {"checkpoint": checkpoint, "history": history}
              for name, checkpoint, history in zip(experiments, snakemake.input.models, snakemake.input.histories)}
best, table = select_best(candidates, metric)
log.info("validation %s per experiment:\n%s", metric, table.to_string(index=False))
# The exports are listed experiment by experiment in config order, three files each.
export_dir = os.path.dirname(snakemake.input.exports[3 * experiments.index(best)])
install_best(best, export_dir, os.path.dirname(snakemake.output.readme), table, metric)
log.info("best experiment: %s", best)

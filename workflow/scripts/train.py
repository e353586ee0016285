"""Train one experiment: results/models/{experiment}/model.pt and history.tsv."""

import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning. Set before torch loads OpenMP: on a machine shared with
# other jobs, spinning threads made a 2-thread step up to 20 times slower than a 1-thread one.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from echoflow.logs import log_to_file
from echoflow.training import TrainingJob, run

log = log_to_file(snakemake.log[0])
job = TrainingJob(
    train_path=Path(snakemake.input.train),
    val_path=Path(snakemake.input.val),
    model_path=Path(snakemake.output.model),
    history_path=Path(snakemake.output.history),
    resume_path=Path(snakemake.params.resume),
    experiment_name=snakemake.wildcards.experiment,
    settings=snakemake.params.experiment,
    sampling=snakemake.params.sampling,
    preprocess=snakemake.params.preprocess,
    threads=snakemake.threads,
)
log.info("experiment %s: %s", job.experiment_name, job.settings)
run(job)

"""Train one experiment: results/models/{experiment}/model.pt and history.tsv."""

from pathlib import Path

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

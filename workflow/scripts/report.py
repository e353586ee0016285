"""Render results/eval_report.html from the evaluation outputs."""

from pathlib import Path

from echoflow.logs import log_to_file
from echoflow.report import ExperimentFiles, ReportInputs, write_report

log = log_to_file(snakemake.log[0])
files = snakemake.input
experiments = {
    name: ExperimentFiles(Path(metrics), Path(predictions), Path(history), Path(timelines), Path(traces))
    for name, metrics, predictions, history, timelines, traces in zip(
        snakemake.params.experiments, files.metrics, files.predictions, files.histories, files.timelines,
        files.traces)
}
inputs = ReportInputs(
    manifest=Path(files.manifest), ignored=Path(files.ignored), annotations=Path(files.annotations),
    videos=Path(files.videos), splits=Path(files.splits),
    summaries=dict(zip(snakemake.params.samplings, map(Path, files.summaries))),
    sample_sets=dict(zip(snakemake.params.samplings, map(Path, files.samples))),
    experiments=experiments, selection=Path(files.selection), best_readme=Path(files.best_readme),
    config=snakemake.params.config, source_dir=Path(snakemake.scriptdir),
)
write_report(inputs, snakemake.output.html)

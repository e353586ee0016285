# The HTML report: one self-contained file that summarises data, models, test metrics and timelines.


def report_inputs(wildcards):
    """Return every file the report reads, grouped as the report script expects."""
    samplings = used_samplings()
    return {
        "manifest": "results/manifest.tsv",
        "ignored": "results/qc/ignored_files.tsv",
        "annotations": "results/qc/annotations.tsv",
        "videos": "results/qc/videos.tsv",
        "splits": "results/splits.tsv",
        "summaries": [f"results/segments/{sampling}/summary.tsv" for sampling in samplings],
        "samples": [f"results/segments/{sampling}/train.h5" for sampling in samplings],
        "metrics": expand("results/eval/{experiment}/metrics.json", experiment=EXPERIMENTS),
        "predictions": expand("results/eval/{experiment}/predictions.tsv", experiment=EXPERIMENTS),
        "histories": expand("results/models/{experiment}/history.tsv", experiment=EXPERIMENTS),
        "timelines": expand("results/eval/{experiment}/timelines.tsv", experiment=EXPERIMENTS),
        "traces": expand("results/eval/{experiment}/timelines.npz", experiment=EXPERIMENTS),
        "selection": "results/best_model/selection.tsv",
        "best_readme": "results/best_model/README.txt",
    }


rule report:
    input:
        unpack(report_inputs),
    output:
        html="results/eval_report.html",
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/out/report/report.tsv"
    params:
        # The whole configuration is printed in the report's provenance section.
        config=config,
        experiments=list(EXPERIMENTS),
        samplings=used_samplings(),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/report.yaml"
    script:
        "../workflow/scripts/report.py"

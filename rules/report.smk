# The HTML report: one self-contained file that summarises data, models, test metrics and timelines.


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
        code=package_code("report.py"),
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

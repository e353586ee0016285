# Evaluation: export and verify each checkpoint, time it, score it on the test split, run it over whole
# test videos, and pick the best experiment on the validation split.


rule export:
    input:
        model="results/models/{experiment}/model.pt",
    output:
        torchscript="results/export/{experiment}/model.ts",
        onnx="results/export/{experiment}/model.onnx",
        preprocess="results/export/{experiment}/preprocess.json",
        verification="results/export/{experiment}/verification.json",
    log:
        "logs/export/{experiment}.log",
    benchmark:
        "benchmarks/out/export/{experiment}.tsv"
    params:
        code=package_code("export.py"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/export.py"


rule latency:
    input:
        model="results/models/{experiment}/model.pt",
        torchscript="results/export/{experiment}/model.ts",
        onnx="results/export/{experiment}/model.onnx",
        frames=ok_frame_stores,
    output:
        latency="results/eval/{experiment}/latency.json",
    log:
        "logs/latency/{experiment}.log",
    benchmark:
        "benchmarks/out/latency/{experiment}.tsv"
    params:
        code=package_code("latency.py"),
        repeats=EVALUATION["latency_repeats"],
        threads=EVALUATION["latency_threads"],
    # Reserving every core of a local run keeps other jobs of the workflow from sharing the CPU while the
    # model is timed; the script itself uses params.threads. Processes outside the workflow can still
    # interfere, so latency.json records the load average next to the times.
    threads: max(EVALUATION["latency_threads"], workflow.cores)
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/latency.py"


rule evaluate:
    input:
        model="results/models/{experiment}/model.pt",
        test=lambda wildcards: f"results/segments/{experiment_sampling(wildcards.experiment)}/test.h5",
        latency="results/eval/{experiment}/latency.json",
    output:
        metrics="results/eval/{experiment}/metrics.json",
        predictions="results/eval/{experiment}/predictions.tsv",
    log:
        "logs/evaluate/{experiment}.log",
    benchmark:
        "benchmarks/out/evaluate/{experiment}.tsv"
    params:
        code=package_code("evaluate.py"),
        bootstrap=EVALUATION["bootstrap"],
        seed=EVALUATION["seed"],
    threads: 2
    resources:
        mem_mb=lambda wildcards, input: int(1500 + 4 * input.size_mb),
        runtime=20,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/evaluate.py"


rule timelines:
    input:
        unpack(timeline_inputs),
    output:
        table="results/eval/{experiment}/timelines.tsv",
        arrays="results/eval/{experiment}/timelines.npz",
        via=directory("results/eval/{experiment}/via"),
    log:
        "logs/timelines/{experiment}.log",
    benchmark:
        "benchmarks/out/timelines/{experiment}.tsv"
    params:
        code=package_code("timelines.py"),
        timeline=EVALUATION["timeline"],
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/timelines.py"


rule select_best:
    input:
        models=expand("results/models/{experiment}/model.pt", experiment=EXPERIMENTS),
        histories=expand("results/models/{experiment}/history.tsv", experiment=EXPERIMENTS),
        exports=expand("results/export/{experiment}/{name}", experiment=EXPERIMENTS,
                       name=["model.ts", "model.onnx", "preprocess.json"]),
    output:
        torchscript="results/best_model/model.ts",
        onnx="results/best_model/model.onnx",
        preprocess="results/best_model/preprocess.json",
        readme="results/best_model/README.txt",
        selection="results/best_model/selection.tsv",
    log:
        "logs/select_best.log",
    params:
        code=package_code("select_best.py"),
        experiments=list(EXPERIMENTS),
        select_metric=EVALUATION["select_metric"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/select_best.py"


rule evaluate_all:
    """Evaluate, time and export every experiment and choose the best one, without the report."""
    input:
        expand("results/eval/{experiment}/{name}", experiment=EXPERIMENTS,
               name=["metrics.json", "predictions.tsv", "timelines.tsv"]),
        "results/best_model/README.txt",
    localrule: True

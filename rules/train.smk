# Training: one job per experiment (sweeps expanded), reading the train and val clip sets of its sampling.
#
# A killed job resumes from results/models/{experiment}.resume/state.pt, which lies outside the declared
# outputs because Snakemake deletes the outputs of a failed job.


rule train:
    input:
        unpack(train_inputs),
    output:
        model="results/models/{experiment}/model.pt",
        history="results/models/{experiment}/history.tsv",
    log:
        "logs/train/{experiment}.log",
    benchmark:
        "benchmarks/out/train/{experiment}.tsv"
    params:
        code=package_code("train.py"),
        experiment=train_settings,
        sampling=lambda wildcards: config["sampling"][experiment_sampling(wildcards.experiment)],
        preprocess=config["preprocess"],
        resume="results/models/{experiment}.resume/state.pt",
    threads: 2
    resources:
        # Clip sets are gzip-compressed HDF5 and are decompressed into memory.
        mem_mb=lambda wildcards, input: int(2000 + 8 * input.size_mb),
        runtime=lambda wildcards: 30 + 15 * train_settings(wildcards)["max_epochs"],
        # GPUs to request; the SLURM executor plugin (2.x) turns gpu=N into --gpus=N.
        # Override with --set-resources train:gpu=1 (plus gpu_model=... if the cluster needs it).
        gpu=0,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/train.py"


rule train_all:
    """Train every experiment without evaluating."""
    input:
        expand("results/models/{experiment}/model.pt", experiment=EXPERIMENTS),
    localrule: True

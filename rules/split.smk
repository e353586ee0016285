# Participant-level split. The rule reads no file: manifest_ready only orders it after the manifest
# checkpoint, and the participants and whether each has 4CV are passed as params. So editing an
# annotation's times (which rewrites the manifest) reruns the split only when a participant gains or
# loses all its 4CV segments, or a participant is added or removed.


rule split:
    input:
        manifest_ready,
    output:
        splits="results/splits.tsv",
    log:
        "logs/split.log",
    params:
        participants=split_participants,
        split={
            "seed": config["split"].get("seed", 0),
            "fractions": config["split"].get("fractions", {"train": 0.70, "val": 0.15, "test": 0.15}),
            "folds": config["split"].get("folds", 0),
        },
    threads: 1
    resources:
        mem_mb=300,
        runtime=5,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/split.py"

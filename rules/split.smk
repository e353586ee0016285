# Participant-level split. The rule reads no file: manifest_ready only orders it after the manifest
# checkpoint, and the participants and whether each has 4CV are passed as params. So editing an
# annotation's times (which rewrites the manifest) reruns the split only when a participant gains or
# loses all its 4CV segments, or a participant is added or removed.
# The segment sets compute the same assignment from the same params (split_assignment in common.smk),
# so each set lists only the videos of its own split as input without the split being a checkpoint.


rule split:
    input:
        manifest_ready,
    output:
        splits="results/splits.tsv",
    log:
        "logs/split.log",
    params:
        code=package_code("split.py"),
        participants=split_participants,
        split=split_settings(),
    threads: 1
    resources:
        mem_mb=300,
        runtime=5,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/split.py"

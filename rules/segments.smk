# Segment (clip) sets: fixed-length clips of 4CV and background frames per sampling and split.

# Input functions (segment_inputs, split_video_participants) and the list of needed files for downstream
# rules (segment_sets, segment_summaries, used_samplings) are in rules/common.smk.


rule segments:
    input:
        unpack(segment_inputs),
    output:
        clips="results/segments/{sampling}/{split}.h5",
    log:
        "logs/segments/{sampling}_{split}.log",
    benchmark:
        "benchmarks/out/segments/{sampling}_{split}.tsv"
    params:
        code=package_code("segments.py"),
        sampling=sampling_settings,
        videos=split_video_participants,
        # Frame size of an empty split's file, whose split has no frame store to take it from.
        size=config["preprocess"].get("size", [128, 128]),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/segments.py"


rule segment_summary:
    input:
        sets=expand("results/segments/{{sampling}}/{split}.h5", split=SPLIT_NAMES),
    output:
        summary="results/segments/{sampling}/summary.tsv",
    log:
        "logs/segment_summary/{sampling}.log",
    params:
        code=package_code("segment_summary.py"),
        splits=SPLIT_NAMES,
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/segment_summary.py"

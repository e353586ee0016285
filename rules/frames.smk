# Frame stores, per-frame labels and the decoding QC table.
#
# frames reads only the video, and labels reads only the annotation and the store's timestamps, so editing
# an annotation reruns labels without decoding the video again.


rule frames:
    input:
        video=video_path,
    output:
        store="results/frames/{video_id}.h5",
    log:
        "logs/frames/{video_id}.log",
    benchmark:
        "benchmarks/out/frames/{video_id}.tsv"
    params:
        code=package_code("frames.py"),
        preprocess=config["preprocess"],
    threads: 2
    # Measured on the 2-core development machine with the demo tree (20-32 s of 1920x1080 H.264): 2-4 s and
    # 115 MB peak per video. Memory does not grow with video length, because frames are streamed to the store.
    # NOTE: runtime allows about an hour of video at 150 frames/s; raise it for longer captures.
    resources:
        mem_mb=500,
        runtime=15,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/frames.py"


rule labels:
    input:
        annotation=annotation_path,
        store="results/frames/{video_id}.h5",
    output:
        labels="results/labels/{video_id}.tsv",
        intervals="results/labels/{video_id}.intervals.tsv",
    log:
        "logs/labels/{video_id}.log",
    params:
        code=package_code("labels.py"),
        annotations=config["annotations"],
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/labels.py"


rule qc:
    input:
        manifest="results/manifest.tsv",
        stores=lambda wildcards: expand("results/frames/{video_id}.h5", video_id=ok_video_ids()),
    output:
        videos="results/qc/videos.tsv",
    log:
        "logs/qc.log",
    params:
        code=package_code("qc.py"),
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/qc.py"

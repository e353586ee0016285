# Discovery and QC: pair each video with its annotation and record what is used, excluded or ignored.


checkpoint manifest:
    input:
        unpack(raw_tree_inputs),
    output:
        manifest="results/manifest.tsv",
        annotations="results/qc/annotations.tsv",
        ignored="results/qc/ignored_files.tsv",
    log:
        "logs/manifest.log",
    params:
        code=package_code("manifest.py"),
        raw_dir=str(RAW_DIR),
        tree=raw_tree_fingerprint(),
        annotations=config["annotations"],
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/manifest.py"

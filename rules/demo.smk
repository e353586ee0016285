# Built-in demo tree: synthetic capture videos with real ultrasound frames, generated from a seed.


rule demo_data:
    output:
        # Checksum list of every file in resources/demo/raw/, written after the tree is complete.
        stamp=DEMO_STAMP,
    log:
        "logs/demo_data.log",
    benchmark:
        "benchmarks/out/demo_data/demo_data.tsv"
    params:
        code=package_code("demo_data.py"),
        demo=config.get("demo", {}),
        # The tree is the folder beside the stamp: resources/demo/raw.
        raw_dir=lambda wildcards, output: os.path.splitext(output.stamp)[0],
    threads: 2
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/demo_data.py"

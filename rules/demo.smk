# Built-in demo tree: synthetic capture videos with real ultrasound frames, generated from a seed.


rule demo_data:
    output:
        stamp=DEMO_STAMP,
    log:
        "logs/demo_data.log",
    params:
        demo=config.get("demo", {}),
        raw_dir=str(echoflow_config.DEMO_RAW_DIR),
    threads: 2
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/demo_data.py"

checkpoint prepare_model:
    output:
        manifest="resources/models/{model}.json",
    log:
        "logs/{model}/prepare_model.log",
    benchmark:
        "logs/{model}/benchmarks/prepare_model.tsv"
    conda:
        "../envs/model.yaml"
    resources:
        mem_mb=3000,
    params:
        spec=config["model"],
        revision=config["model_settings"]["revision"],
        model_dir=model_dir,
    script:
        "../scripts/prepare_model.py"

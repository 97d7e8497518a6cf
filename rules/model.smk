rule prepare_model:
    output:
        manifest="resources/models/{model}.json",
    params:
        spec=config["model"],
        revision=config["model_settings"]["revision"],
        model_dir=model_dir,
    log:
        "logs/{model}/prepare_model.log",
    benchmark:
        "logs/{model}/benchmarks/prepare_model.tsv"
    resources:
        mem_mb=3000,
    script:
        "../scripts/prepare_model.py"

# On the submitting host under SLURM (`localrule`): it may need the network that compute nodes lack.
# So do tables, figures and the PEFT export: they are seconds long.
checkpoint prepare_model:
    output:
        manifest="resources/models/{model}.json",
    log:
        "logs/{model}/prepare_model.log",
    benchmark:
        "logs/{model}/benchmarks/prepare_model.tsv"
    localrule: True
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


rule output_head:
    input:
        model=model_manifest,
    output:
        "results/{model}/head.safetensors",
    log:
        "logs/{model}/output_head.log",
    benchmark:
        "logs/{model}/benchmarks/output_head.tsv"
    priority: ROOT_PRIORITY
    conda:
        "../envs/model.yaml"
    resources:
        mem_mb=2000,
    params:
        model_settings=config["model_settings"],
    script:
        "../scripts/output_head.py"

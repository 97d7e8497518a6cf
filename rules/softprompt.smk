rule teacher_targets:
    input:
        unpack(model_and_teacher),
    output:
        "results/{model}/targets/{behavior}/target.parquet",
        "results/{model}/targets/{behavior}/unprompted.parquet",
    log:
        "logs/{model}/targets/{behavior}.log",
    benchmark:
        "logs/{model}/benchmarks/targets/{behavior}.tsv"
    priority: discovery_chain
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(3000),
    params:
        sources=reference_sources,
        model_settings=config["model_settings"],
        # every soft-prompt job of the behaviour reads its first positions (training.positions)
        logprobs={"positions": config["training"]["positions"]},
    script:
        "../scripts/logprobs.py"


rule train_softprompt:
    input:
        unpack(soft_prompt_inputs),
    output:
        prompt="results/{model}/softprompt/{behavior}/{variant}-seed{seed}.safetensors",
        curve="results/{model}/softprompt/{behavior}/{variant}-seed{seed}.train.csv",
    log:
        "logs/{model}/softprompt/{behavior}/{variant}-seed{seed}.log",
    benchmark:
        "logs/{model}/benchmarks/softprompt/{behavior}/{variant}-seed{seed}.tsv"
    priority: discovery_chain
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(4000),
    params:
        behavior=get_behavior,
        training=training_params,
        model_settings=config["model_settings"],
    script:
        "../scripts/train_softprompt.py"


rule evaluate_softprompt:
    input:
        unpack(soft_prompt_inputs),
        prompt=soft_prompt_file,
    output:
        scores="results/{model}/softprompt/{behavior}/{variant}-seed{seed}.eval.parquet",
        samples="results/{model}/softprompt/{behavior}/{variant}-seed{seed}.samples.parquet",
    log:
        "logs/{model}/softprompt/{behavior}/{variant}-seed{seed}.eval.log",
    benchmark:
        "logs/{model}/benchmarks/softprompt/{behavior}/{variant}-seed{seed}.eval.tsv"
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(3500),
    params:
        behavior=get_behavior,
        training=evaluation_params,
        model_settings=config["model_settings"],
        teacher=config["teacher"],
    script:
        "../scripts/evaluate_softprompt.py"


rule export_peft:
    input:
        model=model_manifest,
        prompt=soft_prompt_file,
    output:
        config="results/{model}/peft/{behavior}/{variant}-seed{seed}/adapter_config.json",
        weights="results/{model}/peft/{behavior}/{variant}-seed{seed}/adapter_model.safetensors",
    log:
        "logs/{model}/peft/{behavior}/{variant}-seed{seed}.log",
    localrule: True
    conda:
        "../envs/model.yaml"
    script:
        "../scripts/export_peft.py"


rule training_table:
    input:
        scores=trained_outputs(
            "results/{model}/softprompt/{behavior}/{variant}-seed{seed}.eval.parquet"
        ),
        samples=trained_outputs(
            "results/{model}/softprompt/{behavior}/{variant}-seed{seed}.samples.parquet"
        ),
        curves=trained_outputs(
            "results/{model}/softprompt/{behavior}/{variant}-seed{seed}.train.csv"
        ),
    output:
        table="results/tables/training.csv",
        frames="results/tables/training_frames.csv",
        curves="results/tables/training_curves.csv",
        samples="results/tables/training_samples.csv",
    log:
        "logs/tables/training.log",
    localrule: True
    conda:
        "../envs/fit.yaml"
    script:
        "../scripts/training_table.py"


rule figure_training:
    input:
        table="results/tables/training.csv",
        curves="results/tables/training_curves.csv",
    output:
        closure=report(
            "results/figures/training.png",
            caption="../reports/training.rst",
            category="Training soft prompts",
            labels={"phase": "training", "figure": "KL closure per behaviour"},
        ),
        curves=report(
            "results/figures/training_curves.png",
            caption="../reports/training_curves.rst",
            category="Training soft prompts",
            labels={"phase": "training", "figure": "training curves"},
        ),
    log:
        "logs/figures/training.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/figure_training.py"

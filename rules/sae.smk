# Feature-level reading (reports/sae*.rst, seed 001): an activation store of the model's own chat text
# (scatter: one generation job per shard), a top-k SAE per layer (or a pretrained one from sae-lens),
# then each soft prompt read through every layer's SAE against random tokens and its instruction.


rule sae_activations:
    input:
        model=model_manifest,
        messages=config["messages"]["file"],
        instructions=config["sae"]["corpus"]["instructions"],
    output:
        store="results/{model}/sae/activations/shard-{shard}.safetensors",
        docs="results/{model}/sae/activations/shard-{shard}.docs.parquet",
    log:
        "logs/{model}/sae/activations/shard-{shard}.log",
    benchmark:
        "logs/{model}/benchmarks/sae/activations/shard-{shard}.tsv"
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(4000),
    params:
        layers=config["sae"]["layers"],
        corpus=config["sae"]["corpus"],
        messages=config["messages"],
        model_settings=config["model_settings"],
    script:
        "../scripts/sae_activations.py"


rule train_sae:
    input:
        model=model_manifest,
        shards=sae_shards,
    output:
        weights="results/{model}/sae/layer{layer}/sae_weights.safetensors",
        cfg="results/{model}/sae/layer{layer}/cfg.json",
        curve="results/{model}/sae/layer{layer}/curve.parquet",
        features="results/{model}/sae/layer{layer}/features.parquet",
        contexts="results/{model}/sae/layer{layer}/contexts.parquet",
    log:
        "logs/{model}/sae/layer{layer}.log",
    benchmark:
        "logs/{model}/benchmarks/sae/layer{layer}.tsv"
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(3000),
    params:
        sae={
            k: v
            for k, v in config["sae"].items()
            if k in ("train", "pretrained", "contexts")
        },
        device=config["model_settings"]["device"],
    script:
        "../scripts/train_sae.py"


rule read_sae:
    input:
        unpack(sae_inputs),
        prompt=soft_prompt_file,
    output:
        "results/{model}/sae/reading/{behavior}/{variant}-seed{seed}.parquet",
    log:
        "logs/{model}/sae/reading/{behavior}/{variant}-seed{seed}.log",
    benchmark:
        "logs/{model}/benchmarks/sae/reading/{behavior}/{variant}-seed{seed}.tsv"
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(3000),
    params:
        behavior=get_behavior,
        training=training_params,
        random_draws=config["sae"]["random_draws"],
        model_settings=config["model_settings"],
    script:
        "../scripts/read_sae.py"


rule sae_table:
    input:
        unpack(sae_table_inputs),
    output:
        sae="results/tables/sae.csv",
        training="results/tables/sae_training.csv",
        features="results/tables/sae_features.csv",
        manifold="results/tables/sae_manifold.csv",
    log:
        "logs/tables/sae.log",
    localrule: True
    conda:
        "../envs/fit.yaml"
    script:
        "../scripts/sae_table.py"


rule figure_sae:
    input:
        sae="results/tables/sae.csv",
    output:
        errors=report(
            "results/figures/sae.png",
            caption="../reports/sae.rst",
            category="Reading soft prompts with SAEs",
            labels={"phase": "sae", "figure": "reconstruction error per layer"},
        ),
        jaccard=report(
            "results/figures/sae_jaccard.png",
            caption="../reports/sae_jaccard.rst",
            category="Reading soft prompts with SAEs",
            labels={"phase": "sae", "figure": "feature overlap with the instruction"},
        ),
    log:
        "logs/figures/sae.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/figure_sae.py"

rule logprobs_dictionary:
    input:
        unpack(model_and_teacher),
        dictionary=config["dictionary"]["file"],
    output:
        expand(
            "results/{{model}}/logprobs/{{behavior}}/atom-{atom}.parquet", atom=ATOMS
        ),
    log:
        "logs/{model}/logprobs/{behavior}/dictionary.log",
    benchmark:
        "logs/{model}/benchmarks/logprobs/{behavior}/dictionary.tsv"
    priority: discovery_chain
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(2000),
    params:
        sources=dictionary_sources,
        model_settings=config["model_settings"],
        logprobs=config["logprobs"],
    script:
        "../scripts/logprobs.py"


rule logprobs_reference:
    input:
        unpack(model_and_teacher),
    output:
        "results/{model}/logprobs/{behavior}/target.parquet",
        "results/{model}/logprobs/{behavior}/unprompted.parquet",
    log:
        "logs/{model}/logprobs/{behavior}/reference.log",
    benchmark:
        "logs/{model}/benchmarks/logprobs/{behavior}/reference.tsv"
    priority: discovery_chain
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(2000),
    params:
        sources=reference_sources,
        model_settings=config["model_settings"],
        logprobs=config["logprobs"],
    script:
        "../scripts/logprobs.py"


rule logprobs_noise:
    input:
        unpack(model_and_teacher),
    output:
        expand("results/{{model}}/logprobs/{{behavior}}/{source}.parquet", source=NOISE),
    log:
        "logs/{model}/logprobs/{behavior}/noise.log",
    benchmark:
        "logs/{model}/benchmarks/logprobs/{behavior}/noise.tsv"
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(2000),
    params:
        sources=noisy_sources,
        model_settings=config["model_settings"],
        logprobs=config["logprobs"],
    script:
        "../scripts/logprobs.py"


rule atom_exclusions:
    input:
        dictionary=config["dictionary"]["file"],
    output:
        "results/{model}/exclusion/{behavior}.parquet",
    log:
        "logs/{model}/exclusion/{behavior}.log",
    priority: DISCOVERY_PRIORITY
    conda:
        "../envs/fit.yaml"
    resources:
        mem_mb=1500,
    params:
        behavior=get_behavior,
        atoms=fit_atoms,
        exclusion=config["exclusion"],
    script:
        "../scripts/atom_exclusions.py"


rule fit_phase0:
    input:
        unpack(fit_inputs),
    output:
        "results/{model}/fits/{behavior}/target.parquet",
    log:
        "logs/{model}/fits/{behavior}/target.log",
    benchmark:
        "logs/{model}/benchmarks/fits/{behavior}/target.tsv"
    conda:
        "../envs/fit.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        atoms=fit_atoms,
        poe=config["poe"],
        exclusion=config["exclusion"],
        decomposed="target",
    script:
        "../scripts/fit.py"


rule fit_noise:
    input:
        unpack(noise_fit_inputs),
    output:
        "results/{model}/fits/{behavior}/noise-seed{seed}.parquet",
    log:
        "logs/{model}/fits/{behavior}/noise-seed{seed}.log",
    benchmark:
        "logs/{model}/benchmarks/fits/{behavior}/noise-seed{seed}.tsv"
    conda:
        "../envs/fit.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        atoms=fit_atoms,
        poe=config["poe"],
        noise=noise_of_seed,
    script:
        "../scripts/fit_noise.py"


rule phase0_table:
    input:
        expand(
            "results/{model}/fits/{behavior}/target.parquet",
            model=MODEL,
            behavior=BEHAVIORS,
        ),
    output:
        table="results/tables/phase0.csv",
        path="results/tables/phase0_path.csv",
    log:
        "logs/tables/phase0.log",
    localrule: True
    conda:
        "../envs/fit.yaml"
    script:
        "../scripts/phase0_table.py"


rule phase05_table:
    input:
        expand(
            "results/{model}/fits/{behavior}/noise-seed{seed}.parquet",
            model=MODEL,
            behavior=config["noise"]["behaviors"],
            seed=config["noise"]["seeds"],
        ),
    output:
        "results/tables/phase05.csv",
    log:
        "logs/tables/phase05.log",
    localrule: True
    conda:
        "../envs/fit.yaml"
    script:
        "../scripts/phase05_table.py"


rule figure_phase0:
    input:
        "results/tables/phase0.csv",
    output:
        report(
            "results/figures/phase0.png",
            caption="../reports/phase0.rst",
            category="Phase 0: recovering a known hard prompt",
            labels={"phase": "0", "figure": "recovered weights"},
        ),
    log:
        "logs/figures/phase0.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/figure_phase0.py"


rule figure_phase05:
    input:
        "results/tables/phase05.csv",
    output:
        report(
            "results/figures/phase05.png",
            caption="../reports/phase05.rst",
            category="Phase 0.5: noise on the hard prompt",
            labels={"phase": "0.5", "figure": "explained-KL vs noise"},
        ),
    log:
        "logs/figures/phase05.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/figure_phase05.py"


rule logprobs_softprompt:
    input:
        unpack(model_and_teacher),
        prompt=soft_prompt_file,
    output:
        "results/{model}/logprobs/{behavior}/soft-{variant}-seed{seed}.parquet",
        "results/{model}/logprobs/{behavior}/control-{variant}-seed{seed}.parquet",
    log:
        "logs/{model}/logprobs/{behavior}/soft-{variant}-seed{seed}.log",
    benchmark:
        "logs/{model}/benchmarks/logprobs/{behavior}/soft-{variant}-seed{seed}.tsv"
    priority: discovery_chain
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(3000),
    params:
        sources=soft_source,
        model_settings=config["model_settings"],
        logprobs=config["logprobs"],
    script:
        "../scripts/logprobs.py"


rule fit_phase1:
    input:
        unpack(phase1_fit_inputs),
    output:
        "results/{model}/fits/{behavior}/{kind}-{variant}-seed{seed}.parquet",
    log:
        "logs/{model}/fits/{behavior}/{kind}-{variant}-seed{seed}.log",
    benchmark:
        "logs/{model}/benchmarks/fits/{behavior}/{kind}-{variant}-seed{seed}.tsv"
    priority: discovery_chain
    conda:
        "../envs/fit.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        atoms=fit_atoms,
        poe=config["poe"],
        exclusion=config["exclusion"],
        decomposed=lambda wc: prompt_key(wc.variant, wc.seed, wc.kind),
    script:
        "../scripts/fit.py"


rule phase1_table:
    input:
        trained_outputs(
            "results/{model}/fits/{behavior}/soft-{variant}-seed{seed}.parquet",
            PHASE1_SEEDS,
        ),
        discovery_outputs(
            "results/{model}/fits/{behavior}/control-{variant}-seed{seed}.parquet"
        ),
    output:
        table="results/tables/phase1.csv",
        path="results/tables/phase1_path.csv",
    log:
        "logs/tables/phase1.log",
    localrule: True
    conda:
        "../envs/fit.yaml"
    script:
        "../scripts/phase1_table.py"


rule figure_phase1:
    input:
        table="results/tables/phase1.csv",
        path="results/tables/phase1_path.csv",
    output:
        weights=report(
            "results/figures/phase1.png",
            caption="../reports/phase1.rst",
            category="Phase 1: decomposing trained soft prompts",
            labels={"phase": "1", "figure": "top signed weights"},
        ),
        path=report(
            "results/figures/phase1_path.png",
            caption="../reports/phase1_path.rst",
            category="Phase 1: decomposing trained soft prompts",
            labels={"phase": "1", "figure": "explained-KL vs nonzeros"},
        ),
    log:
        "logs/figures/phase1.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/figure_phase1.py"


rule weights_table:
    input:
        unpack(weights_inputs),
    output:
        "results/tables/weights.csv",
    log:
        "logs/tables/weights.log",
    localrule: True
    conda:
        "../envs/fit.yaml"
    params:
        behaviors={b: behavior(config, b) for b in BEHAVIORS},
        dictionary=DICTIONARY.to_dict(orient="records"),
    script:
        "../scripts/weights_table.py"


rule figure_weights:
    input:
        "results/tables/weights.csv",
    output:
        report(
            "results/figures/weights.png",
            caption="../reports/weights.rst",
            category="Teachers made of weights",
            labels={"phase": "1", "figure": "LoRA and steering teachers"},
        ),
    log:
        "logs/figures/weights.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/figure_weights.py"

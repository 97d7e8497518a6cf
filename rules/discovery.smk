# Dictionaries beyond the hand-written list (reports/dictionary*.rst): a pool of templated, generated
# (Phase 2) and read candidates per behaviour, screened in shards (scatter; each candidate scored once
# against every Phase 1 soft prompt's leave-one-out residual); each prompt's pursuit gathers and fits.


rule propose_instructions:
    input:
        model=model_manifest,
    output:
        "results/{model}/discovery/proposals.parquet",
    log:
        "logs/{model}/discovery/proposals.log",
    benchmark:
        "logs/{model}/benchmarks/discovery/proposals.tsv"
    priority: DISCOVERY_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(3000),
    params:
        proposer=config["discovery"]["proposer"],
        model_settings=config["model_settings"],
    script:
        "../scripts/propose_instructions.py"


rule candidate_pool:
    input:
        unpack(pool_inputs),
    output:
        "results/{model}/discovery/{behavior}/pool.parquet",
    log:
        "logs/{model}/discovery/{behavior}/pool.log",
    priority: DISCOVERY_PRIORITY
    localrule: True
    conda:
        "../envs/fit.yaml"
    params:
        behavior=get_behavior,
        pool=config["discovery"]["pool"],
        exclusion=config["exclusion"],
    script:
        "../scripts/candidate_pool.py"


rule screen_pool:
    input:
        unpack(screen_inputs),
    output:
        "results/{model}/discovery/{behavior}/screen-{shard}.parquet",
    log:
        "logs/{model}/discovery/{behavior}/screen-{shard}.log",
    benchmark:
        "logs/{model}/benchmarks/discovery/{behavior}/screen-{shard}.tsv"
    priority: DISCOVERY_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(4000),
    params:
        atoms=fit_atoms,
        seed=config["discovery"]["pool"]["seed"],
        screen=SCREEN,
        model_settings=config["model_settings"],
        positions=config["logprobs"]["positions"],
    script:
        "../scripts/screen_pool.py"


rule pursue_dictionary:
    input:
        unpack(pursuit_inputs),
    output:
        "results/{model}/discovery/{behavior}/{kind}-{variant}-seed{seed}.parquet",
    log:
        "logs/{model}/discovery/{behavior}/{kind}-{variant}-seed{seed}.log",
    benchmark:
        "logs/{model}/benchmarks/discovery/{behavior}/{kind}-{variant}-seed{seed}.tsv"
    priority: DISCOVERY_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(4000),
    params:
        behavior=get_behavior,
        atoms=fit_atoms,
        screen=config["discovery"]["screen"],
        pursuit=config["discovery"]["pursuit"],
        poe=config["poe"],
        exclusion=config["exclusion"],
        model_settings=config["model_settings"],
        positions=config["logprobs"]["positions"],
    script:
        "../scripts/pursue_dictionary.py"


rule dictionary_table:
    input:
        pursuits=discovery_outputs(
            "results/{model}/discovery/{behavior}/soft-{variant}-seed{seed}.parquet"
        ),
        fits=discovery_outputs(
            "results/{model}/fits/{behavior}/soft-{variant}-seed{seed}.parquet"
        ),
        pools=expand(
            "results/{model}/discovery/{behavior}/pool.parquet",
            model=MODEL,
            behavior=DISCOVER,
        ),
    output:
        table="results/tables/dictionary.csv",
        path="results/tables/dictionary_path.csv",
        atoms="results/tables/dictionary_atoms.csv",
    log:
        "logs/tables/dictionary.log",
    localrule: True
    conda:
        "../envs/fit.yaml"
    params:
        behaviors={b: behavior(config, b) for b in DISCOVER},
        dictionary=DICTIONARY.to_dict(orient="records"),
    script:
        "../scripts/dictionary_table.py"


rule figure_dictionary:
    input:
        table="results/tables/dictionary.csv",
        path="results/tables/dictionary_path.csv",
        atoms="results/tables/dictionary_atoms.csv",
    output:
        curves=report(
            "results/figures/dictionary.png",
            caption="../reports/dictionary.rst",
            category="Discovering dictionaries",
            labels={"figure": "explained-KL vs dictionary size and nonzeros"},
        ),
        atoms=report(
            "results/figures/dictionary_atoms.png",
            caption="../reports/dictionary_atoms.rst",
            category="Discovering dictionaries",
            labels={"figure": "top discovered atoms"},
        ),
    log:
        "logs/figures/dictionary.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/figure_dictionary.py"


rule recovery_table:
    input:
        fits=trained_outputs(
            "results/{model}/fits/{behavior}/soft-{variant}-seed{seed}.parquet",
            seeds=PHASE1_SEEDS,
        ),
        # each teacher's own decomposition (Phase 0), read like a soft prompt's
        teachers=expand(
            "results/{model}/fits/{behavior}/target.parquet",
            model=MODEL,
            behavior=BEHAVIORS,
        ),
        # each discovered soft prompt's control: random directions with its norms, read the same way
        controls=discovery_outputs(
            "results/{model}/fits/{behavior}/control-{variant}-seed{seed}.parquet"
        ),
        pursuits=discovery_outputs(
            "results/{model}/discovery/{behavior}/soft-{variant}-seed{seed}.parquet"
        )
        + control_discovery_outputs(
            "results/{model}/discovery/{behavior}/{kind}-{variant}-seed{seed}.parquet"
        ),
        stages=read_outputs(
            "results/{model}/reading/{behavior}/{variant}-seed{seed}.stages.parquet"
        ),
        verbalise=read_outputs(
            "results/{model}/reading/{behavior}/{variant}-seed{seed}.verbalise.parquet"
        ),
        scores=trained_outputs(
            "results/{model}/softprompt/{behavior}/{variant}-seed{seed}.eval.parquet"
        ),
        pools=expand(
            "results/{model}/discovery/{behavior}/pool.parquet",
            model=MODEL,
            behavior=DISCOVER,
        ),
    output:
        "results/tables/recovery.csv",
    log:
        "logs/tables/recovery.log",
    localrule: True
    conda:
        "../envs/fit.yaml"
    params:
        behaviors={b: behavior(config, b) for b in BEHAVIORS},
        dictionary=DICTIONARY.to_dict(orient="records"),
    script:
        "../scripts/recovery_table.py"


rule figure_recovery:
    input:
        "results/tables/recovery.csv",
    output:
        report(
            "results/figures/recovery.png",
            caption="../reports/recovery.rst",
            category="Discovering dictionaries",
            labels={"figure": "plug-in recovery"},
        ),
    log:
        "logs/figures/recovery.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/figure_recovery.py"

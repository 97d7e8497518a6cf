# Reading trained soft prompts (reports/reading*.rst): projection + HotFlip repair, geometry and
# robustness, self-verbalisation. One job of each kind per soft prompt; each depends only on its own
# block of the `reading` config, so tuning the search does not redo the verbalisation.


rule read_softprompt:
    input:
        unpack(soft_prompt_inputs),
        prompt=soft_prompt_file,
    output:
        stages="results/{model}/reading/{behavior}/{variant}-seed{seed}.stages.parquet",
        search="results/{model}/reading/{behavior}/{variant}-seed{seed}.search.csv",
    log:
        "logs/{model}/reading/{behavior}/{variant}-seed{seed}.log",
    benchmark:
        "logs/{model}/benchmarks/reading/{behavior}/{variant}-seed{seed}.tsv"
    priority: discovery_chain
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(3500),
    params:
        behavior=get_behavior,
        training=training_params,
        reading=lambda wc: {"search": config["reading"]["search"]},
        model_settings=config["model_settings"],
    script:
        "../scripts/read_softprompt.py"


rule geometry_softprompt:
    input:
        unpack(soft_prompt_inputs),
        prompt=soft_prompt_file,
    output:
        geometry="results/{model}/reading/{behavior}/{variant}-seed{seed}.geometry.parquet",
        robustness="results/{model}/reading/{behavior}/{variant}-seed{seed}.robustness.parquet",
    log:
        "logs/{model}/reading/{behavior}/{variant}-seed{seed}.geometry.log",
    benchmark:
        "logs/{model}/benchmarks/reading/{behavior}/{variant}-seed{seed}.geometry.tsv"
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(3500),
    params:
        behavior=get_behavior,
        training=training_params,
        reading=lambda wc: {"robustness": config["reading"]["robustness"]},
        model_settings=config["model_settings"],
    script:
        "../scripts/geometry_softprompt.py"


rule verbalise_softprompt:
    input:
        unpack(soft_prompt_inputs),
        prompt=soft_prompt_file,
    output:
        "results/{model}/reading/{behavior}/{variant}-seed{seed}.verbalise.parquet",
    log:
        "logs/{model}/reading/{behavior}/{variant}-seed{seed}.verbalise.log",
    benchmark:
        "logs/{model}/benchmarks/reading/{behavior}/{variant}-seed{seed}.verbalise.tsv"
    priority: discovery_chain
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(3000),
    params:
        behavior=get_behavior,
        training=training_params,
        reading=lambda wc: {"verbalisation": config["reading"]["verbalisation"]},
        model_settings=config["model_settings"],
    script:
        "../scripts/verbalise_softprompt.py"


rule token_geometry:
    input:
        model=model_manifest,
    output:
        "results/{model}/reading/tokens.parquet",
    log:
        "logs/{model}/reading/tokens.log",
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(3000),
    params:
        reading=lambda wc: {"robustness": config["reading"]["robustness"]},
        model_settings=config["model_settings"],
    script:
        "../scripts/token_geometry.py"


rule reading_table:
    input:
        stages=read_outputs(
            "results/{model}/reading/{behavior}/{variant}-seed{seed}.stages.parquet"
        ),
        search=read_outputs(
            "results/{model}/reading/{behavior}/{variant}-seed{seed}.search.csv"
        ),
        geometry=read_outputs(
            "results/{model}/reading/{behavior}/{variant}-seed{seed}.geometry.parquet"
        ),
        robustness=read_outputs(
            "results/{model}/reading/{behavior}/{variant}-seed{seed}.robustness.parquet"
        ),
        verbalise=read_outputs(
            "results/{model}/reading/{behavior}/{variant}-seed{seed}.verbalise.parquet"
        ),
        tokens=expand("results/{model}/reading/tokens.parquet", model=MODEL),
    output:
        reading="results/tables/reading.csv",
        search="results/tables/reading_search.csv",
        geometry="results/tables/geometry.csv",
        robustness="results/tables/robustness.csv",
        verbalisation="results/tables/verbalisation.csv",
    log:
        "logs/tables/reading.log",
    localrule: True
    conda:
        "../envs/fit.yaml"
    script:
        "../scripts/reading_table.py"


rule figure_reading:
    input:
        reading="results/tables/reading.csv",
        search="results/tables/reading_search.csv",
        geometry="results/tables/geometry.csv",
        robustness="results/tables/robustness.csv",
        verbalisation="results/tables/verbalisation.csv",
    output:
        reading=report(
            "results/figures/reading.png",
            caption="../reports/reading.rst",
            category="Reading soft prompts",
            labels={"phase": "reading", "figure": "projection and repair"},
        ),
        geometry=report(
            "results/figures/geometry.png",
            caption="../reports/geometry.rst",
            category="Reading soft prompts",
            labels={"phase": "reading", "figure": "geometry"},
        ),
        robustness=report(
            "results/figures/robustness.png",
            caption="../reports/robustness.rst",
            category="Reading soft prompts",
            labels={"phase": "reading", "figure": "robustness"},
        ),
        verbalisation=report(
            "results/figures/verbalisation.png",
            caption="../reports/verbalisation.rst",
            category="Reading soft prompts",
            labels={"phase": "reading", "figure": "self-verbalisation"},
        ),
    log:
        "logs/figures/reading.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/figure_reading.py"

rule costs_table:
    input:
        all_but_costs,
    output:
        costs="results/tables/costs.csv",
        rules="results/tables/costs_rules.csv",
        profile="results/tables/costs_profile.yaml",
    log:
        "logs/tables/costs.log",
    localrule: True
    conda:
        "../envs/fit.yaml"
    params:
        benchmarks=f"logs/{MODEL}/benchmarks",
    script:
        "../scripts/costs_table.py"


rule figure_costs:
    input:
        "results/tables/costs.csv",
    output:
        report(
            "results/figures/costs.png",
            caption="../reports/costs.rst",
            category="Costs",
            labels={"phase": "costs", "figure": "job-seconds and memory per stage"},
        ),
    log:
        "logs/figures/costs.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/figure_costs.py"


rule results_page:
    input:
        expand(
            "results/tables/{table}.csv",
            table=[
                "training",
                "phase0",
                "phase05",
                "phase1",
                "dictionary",
                "recovery",
                "reading",
                "sae",
                "weights",
                "costs",
            ],
        ),
    output:
        "results/RESULTS.md",
    log:
        "logs/tables/results_page.log",
    localrule: True
    conda:
        "../envs/fit.yaml"
    params:
        configs=run_configs(workflow.configfiles),  # each once, relative to the run
    script:
        "../scripts/results_page.py"

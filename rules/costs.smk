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

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "reports/workflow.rst"


include: "rules/common.smk"
include: "rules/model.smk"
include: "rules/teacher.smk"
include: "rules/softprompt.smk"
include: "rules/decompose.smk"
include: "rules/reading.smk"
include: "rules/discovery.smk"
include: "rules/sae.smk"
include: "rules/costs.smk"


# Seconds-long jobs, and prepare_model (it may need the network): on the submitting host under SLURM.
localrules:
    all,
    prepare_model,
    export_peft,
    phase0_table,
    phase05_table,
    phase1_table,
    training_table,
    figure_phase0,
    figure_phase05,
    figure_phase1,
    figure_training,
    reading_table,
    figure_reading,
    candidate_pool,
    dictionary_table,
    figure_dictionary,
    sae_table,
    figure_sae,


rule all:
    default_target: True
    input:
        get_final_output(),

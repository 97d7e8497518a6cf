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
include: "rules/stages.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
    localrule: True

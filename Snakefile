from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "reports/workflow.rst"


include: "rules/common.smk"
include: "rules/model.smk"
include: "rules/teacher.smk"
include: "rules/softprompt.smk"
include: "rules/decompose.smk"


rule all:
    default_target: True
    input:
        get_final_output(),

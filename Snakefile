from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/model.smk"
include: "rules/teacher.smk"


rule all:
    input:
        get_final_output(),
    default_target: True

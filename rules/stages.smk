# Stage targets: `snakemake --cores all decompose` builds that stage's figures and what they need.
for stage, figures in STAGES.items():

    rule:
        name:
            stage
        input:
            figures,
        localrule: True

import yaml

from softlens.costs import by_rule, profile_resources, read_benchmarks
from softlens.io import atomic_path
from softlens.workflow import start_job

start_job(snakemake)
costs = read_benchmarks(snakemake.params.benchmarks)
costs.to_csv(snakemake.output.costs, index=False)
per_rule = by_rule(costs)
per_rule.to_csv(snakemake.output.rules, index=False)
with atomic_path(snakemake.output.profile) as tmp:
    tmp.write_text(
        "# set-resources measured on this run (peak x 1.5, slowest job x 2); see README: costs\n"
        + yaml.safe_dump({"set-resources": profile_resources(per_rule)}, sort_keys=True)
    )

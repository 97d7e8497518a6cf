from softlens.costs import by_rule, read_benchmarks
from softlens.workflow import start_job

start_job(snakemake)
costs = read_benchmarks(snakemake.params.benchmarks)
costs.to_csv(snakemake.output.costs, index=False)
by_rule(costs).to_csv(snakemake.output.rules, index=False)

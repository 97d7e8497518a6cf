"""The costs table: benchmark files gathered by stage and rule, and a cluster profile sized from
them."""

import pandas as pd

from softlens.costs import by_rule, by_stage, profile_resources, read_benchmarks

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"


def _bench(path, seconds, rss, rule=None, threads=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    if rule is None:
        path.write_text(f"{HEADER}\n{seconds}\t0:00:01\t{rss}\t0\t0\t0\t0\t0\t0\t0\n")
    else:
        path.write_text(
            f"{HEADER}\tjobid\trule_name\twildcards\tthreads\n"
            f"{seconds}\t0:00:01\t{rss}\t0\t0\t0\t0\t0\t0\t0\t1\t{rule}\t"
            f"{{'behavior': 'x'}}\t{threads}\n"
        )


def test_benchmarks_are_gathered_per_job_with_stage_rule_and_threads(tmp_path):
    _bench(tmp_path / "fits/spanish/target.tsv", 100.0, 1500.0, "fit_phase0")
    _bench(tmp_path / "fits/concise/target.tsv", 60.0, 900.0, "fit_phase0")
    _bench(
        tmp_path / "logprobs/spanish/dictionary.tsv",
        150.0,
        2000.0,
        "logprobs_dictionary",
        threads=2,
    )
    _bench(tmp_path / "prepare_model.tsv", 27.0, 800.0)  # without --benchmark-extended
    costs = read_benchmarks(tmp_path)
    assert len(costs) == 4 and set(costs["stage"]) == {"fits", "logprobs", "prepare_model"}
    assert costs.set_index("rule").loc["prepare_model", "threads"] == 1
    stages = by_stage(costs).set_index("stage")
    assert stages.loc["logprobs", "job_seconds"] == 300.0 and stages.loc["fits", "jobs"] == 2
    assert stages.index[0] == "logprobs"  # sorted by core time
    rules = by_rule(costs).set_index("rule")
    assert (
        rules.loc["fit_phase0", "max_seconds"] == 100.0
        and rules.loc["fit_phase0", "max_rss_mb"] == 1500.0
    )


def test_profile_resources_add_headroom_and_round_up():
    per_rule = pd.DataFrame(
        {
            "stage": ["fits"],
            "rule": ["fit_phase0"],
            "jobs": [2],
            "max_seconds": [100.0],
            "max_rss_mb": [1500.0],
            "threads": [1],
        }
    )
    assert profile_resources(per_rule) == {"fit_phase0": {"mem_mb": 2500, "runtime": 5}}
    per_rule["max_seconds"] = 1000.0
    assert profile_resources(per_rule)["fit_phase0"]["runtime"] == 35  # 2 x 1000 s = 33.3 min -> 35


def test_no_benchmarks_give_an_empty_table(tmp_path):
    assert read_benchmarks(tmp_path).empty

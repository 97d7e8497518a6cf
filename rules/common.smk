import re
from pathlib import Path

from softlens.config import (
    UNPROMPTED,
    behavior,
    behavior_source,
    check_config_files,
    dictionary_atoms,
    load_dictionary,
    model_tag,
    noise_sources,
    prompt_key,
    sort_keys,
    validate_config,
    with_derived_teachers,
)
from snakemake.resources import Resource

from softlens.results_page import run_configs
from softlens.training_settings import prompt_params
from softlens.workflow import gpus_for, machine_memory_mb

# Config first: nothing below runs on an invalid config.
# a key written twice: YAML would keep the last silently
check_config_files(workflow.configfiles)
validate_config(config)  # against softlens/schema.yaml, the one home of every default
# Params compare by value and by order: sorted keys make the order of a config's keys irrelevant.
config.update(sort_keys(config))

MODEL = model_tag(config["model"])
# A distilled behaviour's spec names the adapter its rule writes; a contrastive one its source's steering.
with_derived_teachers(config, MODEL)
BEHAVIORS = [b["name"] for b in config["behaviors"]]
STEERED = [b["name"] for b in config["behaviors"] if b.get("steering")]
INSTRUCTED = [b["name"] for b in config["behaviors"] if b.get("instruction")]
DICTIONARY = load_dictionary(config["dictionary"])
ATOMS = list(DICTIONARY["atom"])
NOISE = {n: s for n, s in noise_sources(config).items() if s["sigma"] > 0}
TRAINED = config["training"]["behaviors"] or BEHAVIORS
VARIANTS = config["training"]["variants"]
SEEDS = config["training"]["seeds"]
PHASE1_SEEDS = config["phase1"]["seeds"] or SEEDS
READ = config["reading"]["behaviors"] or TRAINED
READ_SEEDS = config["reading"]["seeds"] or SEEDS
READ_VARIANTS = config["reading"]["variants"] or VARIANTS
SAE_READ = config["sae"]["behaviors"] or TRAINED
SAE_SEEDS = config["sae"]["seeds"] or SEEDS
# No OOM by default: a local run shares this machine's memory among its jobs by their declared mem_mb
# (a job never starts while the others' declared memory would push the total past it), unless
# `--resources mem_mb=...` says otherwise. Cluster jobs are sized by their profile instead.
if workflow.local_exec and "mem_mb" not in workflow.global_resources:
    workflow.register_resource("mem_mb", Resource("mem_mb", machine_memory_mb()))
DISCOVER = config["discovery"]["behaviors"] or [b for b in TRAINED if b in INSTRUCTED]
DISCOVER_VARIANTS = config["discovery"]["variants"] or VARIANTS
DISCOVER_CONTROLS = config["discovery"]["controls"]
# Scheduling (README: where the time goes). Every behaviour's chain starts at its teacher (or steering
# vector) and every fit needs the output head: those go first (Snakemake does not raise a job's
# ancestors to its priority, and among equal priorities it prefers large inputs, so the head waited).
# The discovery pursuit ends the DAG's longest chain (teacher -> soft prompt -> reading -> pool ->
# screen -> pursuit): its jobs go next, and the rest fill the other cores. Every CPU job takes one
# thread: a two-thread job waits for both cores, and the one-thread jobs around it kept it waiting.
ROOT_PRIORITY, DISCOVERY_PRIORITY = 20, 10
SHARDS = list(range(config["discovery"]["screen"]["shards"]))
# the screen's own settings: `top` is how many screened candidates the pursuit takes, so a change
# of it reruns the pursuits, not the screens
SCREEN = {k: v for k, v in config["discovery"]["screen"].items() if k != "top"}
GPU = gpus_for(config["model_settings"]["device"])


def model_resources(mem_mb):
    """Resources of every job that runs the model (its host memory, in MB) and, where the device is a
    GPU, one GPU on the cluster's GPU partition (SLURM: --gpus=1 there; locally `--resources gpu=1`
    runs one at a time). The one place the workflow asks for a GPU."""
    gpu = {"slurm_partition": config["cluster"]["gpu_partition"]} if GPU else {}
    return {"mem_mb": mem_mb, "gpu": GPU, **gpu}


wildcard_constraints:
    seed=r"\d+",
    shard=r"\d+",
    layer=r"\d+",
    model=re.escape(MODEL),
    behavior="|".join(map(re.escape, BEHAVIORS + [UNPROMPTED])),
    variant="prepend|contextualised",
    kind="soft|control",


def discovery_chain(wildcards):
    """The priority of a job that the discovery pursuits wait on (its behaviour, variant and seed)."""
    w = dict(wildcards.items())
    on = (
        w.get("behavior") in DISCOVER
        and w.get("variant", DISCOVER_VARIANTS[0]) in DISCOVER_VARIANTS
        and int(w.get("seed", PHASE1_SEEDS[0])) in PHASE1_SEEDS
        and (w.get("kind", "soft") == "soft" or w.get("behavior") in DISCOVER_CONTROLS)
    )
    return DISCOVERY_PRIORITY if on else 0


def model_manifest(wildcards):
    return f"resources/models/{wildcards.model}.json"


def model_dir(wildcards):
    """Where the embedded model is written (hub and local models stay where they are)."""
    return f"resources/models/{wildcards.model}"


def get_behavior(wildcards):
    """The behaviour's own spec: editing one behaviour invalidates only its branch."""
    return behavior(config, wildcards.behavior)


def teacher_definition(wildcards):
    """The files that define a behaviour's teacher besides its config: steering vector, PEFT adapter."""
    spec = behavior(config, wildcards.behavior)
    inputs = {}
    if wildcards.behavior in STEERED:
        inputs["steering"] = (
            f"results/{wildcards.model}/steering/{wildcards.behavior}.safetensors"
        )
    if spec.get("peft"):
        inputs["peft"] = f"{spec['peft']}/adapter_model.safetensors"
    adapter = spec.get("lora") or spec.get("adapter")  # given, or distilled by a rule
    if adapter:  # the adapter's weights: a new adapter retrains what it taught
        inputs["lora"] = f"{adapter}/adapter_model.safetensors"
    return inputs


def teacher_inputs(wildcards):
    return {
        "model": model_manifest(wildcards),
        "messages": config["messages"]["file"],
        **teacher_definition(wildcards),
    }


def model_and_teacher(wildcards):
    return {
        "model": model_manifest(wildcards),
        "teacher": f"results/{wildcards.model}/teacher/{wildcards.behavior}.parquet",
        **teacher_definition(wildcards),
    }


def soft_prompt_inputs(wildcards):
    """A soft-prompt job's inputs: the model, the behaviour's teacher and its targets, scored on the
    teacher's contexts once per behaviour (the teacher's and the unprompted model's distributions).
    """
    d = f"results/{wildcards.model}/targets/{wildcards.behavior}"
    return {
        **model_and_teacher(wildcards),
        "targets": [f"{d}/target.parquet", f"{d}/unprompted.parquet"],
    }


def training_params(wildcards):
    return prompt_params(config["training"], wildcards.variant)


def evaluation_params(wildcards):
    """Evaluation also scores the prompt inside every configured frame and samples from it."""
    t = config["training"]
    return {
        **training_params(wildcards),
        "frames": t["frames"],
        "samples": t["samples"],
    }


def soft_prompt_file(wildcards):
    return f"results/{wildcards.model}/softprompt/{wildcards.behavior}/{wildcards.variant}-seed{wildcards.seed}.safetensors"


def soft_source(wildcards):
    """A trained soft prompt as a log-prob source, in the bare slot (see reports/phase1.rst), and its
    control: random directions with the same vectors' norms (seeded by the prompt's seed).
    """
    return {
        prompt_key(wildcards.variant, wildcards.seed): {
            "kind": "soft",
            "file": soft_prompt_file(wildcards),
        },
        prompt_key(wildcards.variant, wildcards.seed, "control"): {
            "kind": "soft",
            "file": soft_prompt_file(wildcards),
            "random_seed": 1000 + int(wildcards.seed),
        },
    }


def dictionary_sources(wildcards):
    """Every hand-written prompt, scored as a hard prompt (keyed like the rule's outputs)."""
    return {
        f"atom-{a}": {"kind": "hard", "text": t}
        for a, t in zip(DICTIONARY["atom"], DICTIONARY["prompt"])
    }


def reference_sources(wildcards):
    """The behaviour's own target (instruction, steered model, PEFT prompt) and the unprompted model."""
    target = behavior_source(behavior(config, wildcards.behavior))
    return {"target": target, "unprompted": {"kind": "unprompted"}}


def noisy_sources(wildcards):
    text = behavior(config, wildcards.behavior)["instruction"]
    return {n: {"kind": "noisy", "text": text, **s} for n, s in NOISE.items()}


def fit_atoms(wildcards):
    """The fit's atoms (records: atom, prompt, source, is_target) for this behaviour."""
    atoms = dictionary_atoms(
        behavior(config, wildcards.behavior),
        DICTIONARY,
        config["poe"]["include_unprompted_atom"],
    )
    return atoms.to_dict(orient="records")


def cache_dir(wildcards):
    return f"results/{wildcards.model}/logprobs/{wildcards.behavior}"


def head_file(wildcards):
    """The model's output head: every factored log-prob cache is read with it."""
    return f"results/{wildcards.model}/head.safetensors"


def fit_inputs(wildcards):
    d = cache_dir(wildcards)
    return {
        "head": head_file(wildcards),
        "exclusions": f"results/{wildcards.model}/exclusion/{wildcards.behavior}.parquet",
        "caches": [f"{d}/atom-{a}.parquet" for a in ATOMS]
        + [f"{d}/target.parquet", f"{d}/unprompted.parquet"],
    }


def phase1_fit_inputs(wildcards):
    inputs = fit_inputs(wildcards)
    soft = prompt_key(wildcards.variant, wildcards.seed, wildcards.get("kind", "soft"))
    inputs["caches"] = inputs["caches"] + [f"{cache_dir(wildcards)}/{soft}.parquet"]
    return inputs


def noise_of_seed(wildcards):
    """This job's Phase 0.5 targets: every sigma at one noise seed."""
    return {
        n: s
        for n, s in noise_sources(config).items()
        if s["seed"] == int(wildcards.seed)
    }


def noise_fit_inputs(wildcards):
    inputs = fit_inputs(wildcards)
    inputs["caches"] = inputs["caches"] + [
        f"{cache_dir(wildcards)}/{n}.parquet"
        for n, s in NOISE.items()
        if s["seed"] == int(wildcards.seed)
    ]
    return inputs


# The study's stages, each a target a user can name (`snakemake --cores all train`): its figures.
STAGES = {
    "train": ["results/figures/training.png", "results/figures/training_curves.png"],
    "decompose": [
        "results/figures/weights.png",
        "results/figures/phase0.png",
        "results/figures/phase05.png",
        "results/figures/phase1.png",
        "results/figures/phase1_path.png",
    ],
    "read": [
        "results/figures/reading.png",
        "results/figures/geometry.png",
        "results/figures/robustness.png",
        "results/figures/verbalisation.png",
    ],
    "discover": [
        "results/figures/dictionary.png",
        "results/figures/dictionary_atoms.png",
        "results/figures/recovery.png",
    ],
    "sae": ["results/figures/sae.png", "results/figures/sae_jaccard.png"],
}


def get_final_output():
    return all_but_costs() + ["results/figures/costs.png", "results/RESULTS.md"]


def all_but_costs(wildcards=None):
    """Every final output except the costs table and figure, which gather the others' benchmarks."""
    return (
        expand(
            "results/{model}/teacher/{behavior}.parquet",
            model=MODEL,
            behavior=BEHAVIORS + [UNPROMPTED],
        )
        + [figure for figures in STAGES.values() for figure in figures]
        + expand(
            "results/{model}/peft/{behavior}/{variant}-seed{seed}/adapter_config.json",
            model=MODEL,
            behavior=TRAINED,
            variant=VARIANTS,
            seed=SEEDS,
        )
    )


def trained_outputs(pattern, seeds=SEEDS):
    """`pattern` expanded over the trained soft prompts (behaviour x variant x seed)."""
    return expand(pattern, model=MODEL, behavior=TRAINED, variant=VARIANTS, seed=seeds)


def read_outputs(pattern):
    """`pattern` expanded over the soft prompts that are read (reading.behaviors x variants x seeds)."""
    return expand(
        pattern, model=MODEL, behavior=READ, variant=READ_VARIANTS, seed=READ_SEEDS
    )


def discovery_outputs(pattern, **kwargs):
    """`pattern` expanded over the Phase 1 soft prompts whose dictionaries are discovered."""
    return expand(
        pattern,
        model=MODEL,
        behavior=DISCOVER,
        variant=DISCOVER_VARIANTS,
        seed=PHASE1_SEEDS,
        **kwargs,
    )


def pool_inputs(wildcards):
    """The proposals, and the behaviour's reading outputs when they join its pool."""
    inputs = {"proposals": f"results/{wildcards.model}/discovery/proposals.parquet"}
    if config["discovery"]["pool"]["include_reading"] and wildcards.behavior in READ:
        base = f"results/{wildcards.model}/reading/{wildcards.behavior}"
        runs = [f"{v}-seed{s}" for v in READ_VARIANTS for s in READ_SEEDS]
        inputs["stages"] = [f"{base}/{r}.stages.parquet" for r in runs]
        inputs["verbalise"] = [f"{base}/{r}.verbalise.parquet" for r in runs]
    return inputs


def discovery_targets(wildcards):
    """The behaviour's Phase 1 prompts whose dictionaries are discovered (and, for discovery.controls,
    their random controls): name -> fit file."""
    kinds = ["soft", "control"] if wildcards.behavior in DISCOVER_CONTROLS else ["soft"]
    return {
        prompt_key(
            v, s, k
        ): f"results/{wildcards.model}/fits/{wildcards.behavior}/{prompt_key(v, s, k)}.parquet"
        for v in DISCOVER_VARIANTS
        for s in PHASE1_SEEDS
        for k in kinds
    }


def control_discovery_outputs(pattern):
    """`pattern` (with {kind}) expanded over the discovered prompts' controls that are discovered too."""
    return expand(
        pattern,
        model=MODEL,
        behavior=DISCOVER_CONTROLS,
        variant=DISCOVER_VARIANTS,
        seed=PHASE1_SEEDS,
        kind="control",
    )


def screen_inputs(wildcards):
    d = cache_dir(wildcards)
    return {
        **model_and_teacher(wildcards),
        "pool": f"results/{wildcards.model}/discovery/{wildcards.behavior}/pool.parquet",
        "fits": list(discovery_targets(wildcards).values()),
        "head": head_file(wildcards),
        "caches": fit_inputs(wildcards)["caches"]
        + [f"{d}/{t}.parquet" for t in discovery_targets(wildcards)],
    }


def pursuit_inputs(wildcards):
    return {
        **model_and_teacher(wildcards),
        **phase1_fit_inputs(wildcards),
        "pool": f"results/{wildcards.model}/discovery/{wildcards.behavior}/pool.parquet",
        "screens": expand(
            "results/{model}/discovery/{behavior}/screen-{shard}.parquet",
            shard=SHARDS,
            model=wildcards.model,
            behavior=wildcards.behavior,
        ),
    }


def sae_shards(wildcards):
    return expand(
        "results/{model}/sae/activations/shard-{shard}.safetensors",
        model=wildcards.model,
        shard=range(config["sae"]["corpus"]["shards"]),
    )


def sae_layers(model):
    """The configured layers, or n/4, n/2, 3n/4 of the model (known once it is prepared: a checkpoint)."""
    if config["sae"]["layers"]:
        return sorted(config["sae"]["layers"])
    import json

    from softlens.config import default_layers

    manifest = checkpoints.prepare_model.get(model=model).output.manifest
    depth = json.loads(Path(manifest).read_text()).get("num_layers")
    if depth is None:  # a manifest from before it recorded the depth
        from softlens.models import num_layers

        depth = num_layers(manifest, config["model_settings"]["trust_remote_code"])
    return default_layers(depth)


def sae_inputs(wildcards):
    return {
        "model": model_manifest(wildcards),
        "saes": expand(
            "results/{model}/sae/layer{layer}/sae_weights.safetensors",
            model=wildcards.model,
            layer=sae_layers(wildcards.model),
        ),
    }


def sae_table_inputs(wildcards):
    model = MODEL
    layers = sae_layers(model)
    return {
        "readings": expand(
            "results/{model}/sae/reading/{behavior}/{variant}-seed{seed}.parquet",
            model=model,
            behavior=SAE_READ,
            variant=VARIANTS,
            seed=SAE_SEEDS,
        ),
        "features": expand(
            "results/{model}/sae/layer{layer}/features.parquet",
            model=model,
            layer=layers,
        ),
        "contexts": expand(
            "results/{model}/sae/layer{layer}/contexts.parquet",
            model=model,
            layer=layers,
        ),
    }


def distill_inputs(wildcards):
    """The distilled behaviour's source: the model, its instruction behaviour's teacher table and
    that teacher's targets (rule teacher_targets)."""
    source = behavior(config, wildcards.behavior)["distill"]["from"]
    d = f"results/{wildcards.model}/targets/{source}"
    return {
        "model": model_manifest(wildcards),
        "teacher": f"results/{wildcards.model}/teacher/{source}.parquet",
        "targets": [f"{d}/target.parquet", f"{d}/unprompted.parquet"],
    }


def distill_params(wildcards):
    """The LoRA's settings: the config's distill block and the behaviour's rank."""
    spec = behavior(config, wildcards.behavior)["distill"]
    return dict(sorted({**config["distill"], "rank": spec["rank"]}.items()))


# Soft prompts whose teacher is made of weights (a LoRA, given or distilled) or of activations (a
# steering vector, also the teacher of a contrastive behaviour): the weights table compares them.
WEIGHTED = [
    b["name"]
    for b in config["behaviors"]
    if b["name"] in TRAINED and (b.get("lora") or b.get("distill") or b.get("steering"))
]


def weights_inputs(wildcards):
    return {
        "scores": expand(
            "results/{model}/softprompt/{behavior}/{variant}-seed{seed}.eval.parquet",
            model=MODEL,
            behavior=WEIGHTED,
            variant=VARIANTS,
            seed=PHASE1_SEEDS,
        ),
        "fits": expand(
            "results/{model}/fits/{behavior}/soft-{variant}-seed{seed}.parquet",
            model=MODEL,
            behavior=WEIGHTED,
            variant=VARIANTS,
            seed=PHASE1_SEEDS,
        ),
        "curves": expand(
            "results/{model}/lora/{behavior}/curve.csv",
            model=MODEL,
            behavior=[b for b in WEIGHTED if behavior(config, b).get("distill")],
        ),
        "adapters": [  # a given LoRA's rank is read from its config
            f"{behavior(config, b)['lora']}/adapter_config.json"
            for b in WEIGHTED
            if behavior(config, b).get("lora")
        ],
    }

import re
from pathlib import Path

from softlens.config import (
    UNPROMPTED,
    behavior,
    load_dictionary,
    model_tag,
    noise_sources,
    validate_config,
)

# Config first: nothing below runs on an invalid config.
validate_config(config, Path(workflow.basedir) / "config" / "schema.yaml")

MODEL = model_tag(config["model"])
BEHAVIORS = [b["name"] for b in config["behaviors"]]
STEERED = [b["name"] for b in config["behaviors"] if b.get("steering")]
INSTRUCTED = [b["name"] for b in config["behaviors"] if b.get("instruction")]
DICTIONARY = load_dictionary(config["dictionary"])
ATOMS = list(DICTIONARY["atom"])
NOISE = {n: s for n, s in noise_sources(config).items() if s["sigma"] > 0}


wildcard_constraints:
    seed=r"\d+",
    model=re.escape(MODEL),
    behavior="|".join(map(re.escape, BEHAVIORS + [UNPROMPTED])),


def model_manifest(wildcards):
    return f"resources/models/{wildcards.model}.json"


def model_dir(wildcards):
    """Where the embedded model is written (hub and local models stay where they are)."""
    return f"resources/models/{wildcards.model}"


def get_behavior(wildcards):
    """The behaviour's own spec: editing one behaviour invalidates only its branch."""
    return behavior(config, wildcards.behavior)


def teacher_inputs(wildcards):
    inputs = {
        "model": model_manifest(wildcards),
        "messages": config["messages"]["file"],
    }
    if wildcards.behavior in STEERED:
        inputs["steering"] = (
            f"results/{wildcards.model}/steering/{wildcards.behavior}.safetensors"
        )
    return inputs


def model_and_teacher(wildcards):
    inputs = {
        "model": model_manifest(wildcards),
        "teacher": f"results/{wildcards.model}/teacher/{wildcards.behavior}.parquet",
    }
    if wildcards.behavior in STEERED:
        inputs["steering"] = (
            f"results/{wildcards.model}/steering/{wildcards.behavior}.safetensors"
        )
    return inputs


def dictionary_sources(wildcards):
    """Every hand-written prompt, scored as a hard prompt (keyed like the rule's outputs)."""
    return {
        f"atom-{a}": {"kind": "hard", "text": t}
        for a, t in zip(DICTIONARY["atom"], DICTIONARY["prompt"])
    }


def reference_sources(wildcards):
    """The behaviour's own target (its instruction, or the steered model) and the unprompted model."""
    spec = behavior(config, wildcards.behavior)
    target = (
        {"kind": "hard", "text": spec["instruction"]}
        if spec.get("instruction")
        else {"kind": "steered"}
    )
    return {"target": target, "unprompted": {"kind": "unprompted"}}


def noisy_sources(wildcards):
    text = behavior(config, wildcards.behavior)["instruction"]
    return {n: {"kind": "noisy", "text": text, **s} for n, s in NOISE.items()}


def fit_atoms(wildcards):
    """The fit's atoms (records: atom, prompt, source, is_target) for this behaviour."""
    from softlens.decompose import dictionary_atoms

    atoms = dictionary_atoms(
        behavior(config, wildcards.behavior),
        DICTIONARY,
        config["poe"]["include_unprompted_atom"],
    )
    return atoms.to_dict(orient="records")


def cache_dir(wildcards):
    return f"results/{wildcards.model}/logprobs/{wildcards.behavior}"


def fit_inputs(wildcards):
    d = cache_dir(wildcards)
    return [f"{d}/atom-{a}.parquet" for a in ATOMS] + [
        f"{d}/target.parquet",
        f"{d}/unprompted.parquet",
    ]


def noise_of_seed(wildcards):
    """This job's Phase 0.5 targets: every sigma at one noise seed."""
    return {
        n: s
        for n, s in noise_sources(config).items()
        if s["seed"] == int(wildcards.seed)
    }


def noise_fit_inputs(wildcards):
    return fit_inputs(wildcards) + [
        f"{cache_dir(wildcards)}/{n}.parquet"
        for n, s in NOISE.items()
        if s["seed"] == int(wildcards.seed)
    ]


def get_final_output():
    return expand(
        "results/{model}/teacher/{behavior}.parquet",
        model=MODEL,
        behavior=BEHAVIORS + [UNPROMPTED],
    ) + [
        "results/figures/phase0.png",
        "results/figures/phase05.png",
    ]

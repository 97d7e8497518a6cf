import re
from pathlib import Path

from softlens.config import (
    UNPROMPTED,
    behavior,
    check_steering_layers,
    model_tag,
    validate_config,
)

# Config first: nothing below runs on an invalid config.
validate_config(config, Path(workflow.basedir) / "config" / "schema.yaml")

MODEL = model_tag(config["model"])
BEHAVIORS = [b["name"] for b in config["behaviors"]]
STEERED = [b["name"] for b in config["behaviors"] if b.get("steering")]


wildcard_constraints:
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


def get_final_output():
    return expand(
        "results/{model}/teacher/{behavior}.parquet",
        model=MODEL,
        behavior=BEHAVIORS + [UNPROMPTED],
    )

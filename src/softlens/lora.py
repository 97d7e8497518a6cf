"""Teachers made of weights: a PEFT LoRA adapter on the run's model while the teacher speaks.

The adapter is injected into the model's modules once by PEFT (`PeftModel.from_pretrained`, which
wraps the model in place) and its layers are switched on only inside :func:`lora_active`; outside
it the model is the base model again, so the same loaded model serves as teacher and as student in
one job. It is applied,
not merged into a cached model directory: merging would need a second copy of the weights on disk
per adapter and a model rule per behaviour, and the unmerged adapter is exact (merging in bfloat16
rounds).

An adapter is refused before it is applied when its base model or any of its shapes do not match
the model's, with what differs named (`check_lora`).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

from .config import ConfigError

PREFIX = "base_model.model."  # how PEFT names the wrapped model's modules in a saved adapter


def adapter_config(adapter_dir) -> dict:
    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text())


def _names(model, model_dir) -> set[str]:
    """What an adapter's base_model_name_or_path may say for this model."""
    names = {str(model_dir), Path(str(model_dir)).name}
    recorded = getattr(model.config, "_name_or_path", "") or ""
    names |= {recorded, Path(recorded.split(" (")[0]).name, recorded.split(" (")[0]}
    return {n for n in names if n}


def check_lora(model, adapter_dir, model_dir) -> None:
    """Refuse an adapter made for another base model or with shapes this model's modules lack."""
    from safetensors import safe_open

    cfg = adapter_config(adapter_dir)
    where = f"LoRA adapter {str(adapter_dir)!r}"
    if cfg.get("peft_type") != "LORA":
        raise ConfigError(f"{where} is a {cfg.get('peft_type')!r} adapter, not LORA")
    base = cfg.get("base_model_name_or_path")
    if base and not ({base, Path(base).name} & _names(model, model_dir)):
        raise ConfigError(
            f"{where} was made for base model {base!r}, "
            f"not this run's {Path(str(model_dir)).name!r}"
        )
    with safe_open(str(Path(adapter_dir) / "adapter_model.safetensors"), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for key, shape in sorted(shapes.items()):
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        name = key.removeprefix(PREFIX).split(".lora_")[0]
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"{where} adapts {name!r}, which this model does not have") from None
        want = (
            (shape[0], module.in_features) if ".lora_A." in key else (module.out_features, shape[1])
        )
        if shape != want:
            raise ConfigError(
                f"{where}: {key.removeprefix(PREFIX)} is {shape}, but this model's {name} "
                f"takes {module.in_features} inputs and gives {module.out_features} outputs"
            )


@contextmanager
def lora_active(lm, adapter_dir):
    """The model with the adapter switched on (loaded once per model, checked first)."""
    from peft import PeftModel

    name = "teacher-" + hashlib.sha256(str(Path(adapter_dir).resolve()).encode()).hexdigest()[:10]
    wrapper = lm.adapters.get("peft")
    if wrapper is None or name not in wrapper.peft_config:
        check_lora(lm.model, adapter_dir, lm.path)
        if wrapper is None:
            lm.adapters["peft"] = wrapper = PeftModel.from_pretrained(
                lm.model, str(adapter_dir), adapter_name=name
            )
        else:
            wrapper.load_adapter(str(adapter_dir), adapter_name=name)
        wrapper.to(lm.device)
    wrapper.set_adapter(name)
    wrapper.base_model.enable_adapter_layers()
    try:
        yield
    finally:
        wrapper.base_model.disable_adapter_layers()

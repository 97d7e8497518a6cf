"""LoRA teachers on the tiny model: the adapter changes the model only while the teacher speaks, it
matches PEFT's own model, and an adapter for another model is refused naming what differs."""

from __future__ import annotations

import json

import pytest
import torch

from softlens.config import ConfigError, behavior_source, validate_config
from softlens.job import ModelJob
from softlens.models import load_model
from tiny import tiny_model, tiny_tokenizer, write_teacher

MESSAGES = ["Why is the sky blue?", "What is a fox?", "How do plants make food?", "Hola?"]


def write_lora(model, path, rank=2, seed=0, base=None):
    """A LoRA adapter on q_proj and v_proj with random (nonzero) B, as PEFT saves it."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], lora_dropout=0.0
    )
    peft_model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    peft_model.save_pretrained(path)
    if base is not None:
        cfg_path = path / "adapter_config.json"
        cfg_json = json.loads(cfg_path.read_text())
        cfg_json["base_model_name_or_path"] = base
        cfg_path.write_text(json.dumps(cfg_json))
    peft_model.unload()
    return path


@pytest.fixture(scope="module")
def adapter(sharp_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(sharp_dir)
    return write_lora(model, tmp_path_factory.mktemp("lora") / "adapter", base=str(sharp_dir))


def logits(lm, text="Why is the sky blue?"):
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"].to(lm.device)
    with torch.no_grad():
        return lm.model(input_ids=ids).logits[0, -1].float().cpu()


def test_the_adapter_changes_the_model_only_while_the_teacher_speaks(sharp_dir, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lm = load_model(sharp_dir, {"device": "cpu", "dtype": "float32"})
    before = logits(lm)
    source = behavior_source({"name": "x", "lora": str(adapter)})
    job = ModelJob(model=sharp_dir, settings={"device": "cpu", "dtype": "float32"}, lm=lm)
    with job.activated(source) as (slot, content):
        assert content is None  # the slot stays empty: the behaviour lives in the weights
        during = logits(lm)
    after = logits(lm)
    assert torch.equal(before, after)
    assert (during - before).abs().max() > 1e-2
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sharp_dir), adapter)
    ids = lm.tokenizer("Why is the sky blue?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = reference(input_ids=ids).logits[0, -1].float()
    assert torch.allclose(during, expected, atol=1e-5)  # the import is PEFT's own model


def test_a_lora_teacher_gives_targets_that_differ_from_the_unprompted_model(
    sharp_dir, adapter, tmp_path
):
    import pandas as pd

    from softlens.io import write_table

    teacher = pd.DataFrame(
        {
            "behavior": "x",
            "split": ["train", "train", "test", "test"],
            "message_id": ["a", "b", "c", "d"],
            "user_message": MESSAGES,
            "completion": "",
            "completion_ids": [[5, 6, 7]] * 4,
        }
    )
    write_table(teacher, tmp_path / "teacher.parquet")
    job = ModelJob(
        model=sharp_dir,
        settings={"device": "cpu", "dtype": "float32"},
        behavior={"name": "x", "lora": str(adapter)},
        teacher=tmp_path / "teacher.parquet",
    )
    target, base = job.targets("test", 3)
    assert (target.logp - base.logp).abs().max() > 1e-2
    again, _ = job.targets("test", 3)  # loaded once, switched on again
    assert torch.equal(again.logp, target.logp)


def test_an_adapter_with_other_shapes_or_another_base_model_is_refused(sharp_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    wide = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tiny_tokenizer()),
            hidden_size=96,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    write_lora(wide, tmp_path / "wide", base=str(sharp_dir))
    lm = load_model(sharp_dir, {"device": "cpu", "dtype": "float32"})
    job = ModelJob(model=sharp_dir, settings={"device": "cpu", "dtype": "float32"}, lm=lm)
    with pytest.raises(
        ConfigError,
        match=r"q_proj.lora_A.weight is \(2, 96\), but this model's "
        r"model.layers.0.self_attn.q_proj takes 64 inputs",
    ):
        with job.activated({"kind": "lora", "adapter": str(tmp_path / "wide")}):
            pass
    write_lora(tiny_model(len(tiny_tokenizer())), tmp_path / "other", base="org/another-model")
    with pytest.raises(
        ConfigError, match=r"made for base model 'org/another-model', not this run's"
    ):
        with job.activated({"kind": "lora", "adapter": str(tmp_path / "other")}):
            pass
    assert lm.adapters == {}  # nothing was applied


def test_the_config_refuses_a_lora_that_is_not_a_lora_adapter(default_config, tmp_path, adapter):
    prompt_tuning = tmp_path / "pt"
    prompt_tuning.mkdir()
    (prompt_tuning / "adapter_config.json").write_text('{"peft_type": "PROMPT_TUNING"}')
    (prompt_tuning / "adapter_model.safetensors").write_bytes(b"")
    default_config["behaviors"].append({"name": "weights", "lora": str(prompt_tuning)})
    with pytest.raises(
        ConfigError, match=r"\('weights'\).lora: .* is a 'PROMPT_TUNING' adapter, not LORA"
    ):
        validate_config(default_config)
    default_config["behaviors"][-1] = {"name": "weights", "lora": str(tmp_path / "none")}
    with pytest.raises(ConfigError, match=r"lacks \['adapter_config.json'"):
        validate_config(default_config)
    default_config["behaviors"][-1] = {"name": "weights", "lora": str(adapter)}
    assert validate_config(default_config)["behaviors"][-1]["lora"] == str(adapter)


def test_a_distilled_lora_learns_the_instruction_and_serves_as_a_teacher(sharp_dir, tmp_path):

    from softlens.distill import DistillSettings, distill_lora

    lm = load_model(sharp_dir, {"device": "cpu", "dtype": "float32"})
    messages = [
        f"Tell me about {w}."
        for w in (
            "foxes",
            "the sky",
            "plants",
            "eggs",
            "dogs",
            "bees",
            "gravity",
            "the sea",
            "volcanoes",
            "magnets",
        )
    ]
    write_teacher(lm, messages, 7, tmp_path / "teacher.parquet", tokens=6)
    spec = {"name": "spanish", "instruction": "Respond in Spanish."}
    job = ModelJob(
        model=sharp_dir,
        settings={"device": "cpu", "dtype": "float32"},
        behavior=spec,
        teacher=tmp_path / "teacher.parquet",
        lm=lm,
    )
    settings = DistillSettings(
        rank=4,
        steps=40,
        lr=0.01,
        batch_size=4,
        positions=4,
        target_modules=("q_proj", "v_proj", "o_proj"),
    )
    curve = distill_lora(job=job, settings=settings, out_dir=tmp_path / "lora")
    assert curve["kl"].iloc[-5:].mean() < 0.5 * curve["kl"].iloc[:5].mean()  # it learns
    last = curve.iloc[-1]
    assert last["ci_low"] <= last["kl_closure_test"] <= last["ci_high"]
    # (held-out closure on 3 messages of a random tiny model says little; the real model's is
    # measured by the workflow)
    assert (
        lm.adapters == {}
        and "lora" not in type(lm.model.model.layers[0].self_attn.q_proj).__name__.lower()
    )

    before = logits(lm)
    with job.activated(
        {"kind": "lora", "adapter": str(tmp_path / "lora")}
    ):  # the import: checked, applied
        during = logits(lm)
    assert (during - before).abs().max() > 1e-3
    assert torch.equal(logits(lm), before)


def test_a_killed_distillation_resumes_from_its_checkpoint_and_ends_the_same(
    sharp_dir, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    import softlens.distill as D

    lm = load_model(sharp_dir, {"device": "cpu", "dtype": "float32"})
    write_teacher(lm, MESSAGES * 2, 3, tmp_path / "teacher.parquet", tokens=4)

    def job():  # a fresh process's model and job
        return ModelJob(
            model=sharp_dir,
            settings={"device": "cpu", "dtype": "float32"},
            behavior={"name": "spanish", "instruction": "Respond in Spanish."},
            teacher=tmp_path / "teacher.parquet",
            lm=load_model(sharp_dir, {"device": "cpu", "dtype": "float32"}),
        )

    s = D.DistillSettings(
        rank=2, steps=6, lr=0.01, batch_size=2, positions=3, checkpoint_every=2, seed=1
    )
    save = D.save_checkpoint

    def save_then_die(path, state):  # killed right after the checkpoint at step 4
        save(path, state)
        if state["step"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(D, "save_checkpoint", save_then_die)
    killed = job()
    with pytest.raises(KeyboardInterrupt):
        D.distill_lora(job=killed, settings=s, out_dir=tmp_path / "resumed")
    assert (
        killed.lm.adapters == {}
        and "lora" not in type(killed.lm.model.model.layers[0].self_attn.q_proj).__name__.lower()
    )  # the job's model is left as it was
    assert torch.load(tmp_path / "resumed.ckpt", weights_only=True)["step"] == 4
    monkeypatch.setattr(D, "save_checkpoint", save)

    with pytest.raises(ConfigError, match="different config.*lr"):
        D.distill_lora(
            job=job(),
            settings=D.DistillSettings(**{**s.__dict__, "lr": 0.5}),
            out_dir=tmp_path / "resumed",
        )
    resumed = D.distill_lora(job=job(), settings=s, out_dir=tmp_path / "resumed")
    assert list(resumed["step"]) == list(range(1, 7))  # steps 1-4 came from the checkpoint
    assert not (tmp_path / "resumed.ckpt").exists()
    straight = D.distill_lora(job=job(), settings=s, out_dir=tmp_path / "straight")
    a = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    b = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed["kl"].tolist() == pytest.approx(straight["kl"].tolist(), abs=1e-6)
    assert any(a[k].abs().max() > 0 for k in a if "lora_B" in k)  # it trained

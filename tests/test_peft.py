"""PEFT prompt-tuning interop: a real adapter trained with `peft` is read, placed where PEFT
places it, and ours round-trip through PEFT's own loader."""

from __future__ import annotations

import json

import pytest
import torch

from softlens.io import read_soft_prompt, write_peft_prompt, write_soft_prompt
from softlens.slot import PromptSlot, SoftPrompt
from softlens.sources import activate, behavior_source

MESSAGE = "Why is the sky blue?"


@pytest.fixture(scope="module")
def peft_adapter(tiny_dir, tmp_path_factory):
    """A prompt-tuning adapter trained for a few steps with peft itself (CE on a fixed answer)."""
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_dir),
        PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4),
    )
    ids = tok("Hola, el cielo es azul.", return_tensors="pt")["input_ids"]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("adapters") / "peft-prompt"
    model.save_pretrained(out)
    return out, model.eval()


def ours_before_template(lm, vectors, message, completion):
    slot = PromptSlot(lm.tokenizer, lm.embeddings, "before_template")
    batch = slot.batch(SoftPrompt(vectors), [message], [completion])
    return slot, lm.model(**batch.model_inputs()).logits[0].cpu()  # peft's model stays on the CPU


def test_a_peft_adapter_is_read_and_scored_where_peft_puts_it(tiny_lm, peft_adapter):
    adapter, peft_model = peft_adapter
    vectors, meta = read_soft_prompt(adapter, hidden_size=64)
    assert vectors.shape == (4, 64) and meta["position"] == "before_template"
    completion = tiny_lm.tokenizer("Hola", add_special_tokens=False)["input_ids"]
    slot, ours = ours_before_template(tiny_lm, vectors, MESSAGE, completion)
    text = slot.texts(MESSAGE, has_slot=True)[1]
    ids = torch.tensor([slot.tokenize(text) + completion])
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits[0, -ids.shape[1] :]
    assert torch.allclose(ours[-ids.shape[1] :], theirs, atol=1e-5)


def test_a_peft_behaviour_uses_the_before_template_slot(tiny_lm, peft_adapter):
    adapter, _ = peft_adapter
    source = behavior_source({"name": "imported", "peft": str(adapter)})
    run_slot = PromptSlot.for_model(tiny_lm)  # the run's own slot (user_start)
    with activate(tiny_lm, run_slot, source) as (slot, content):
        assert slot.position == "before_template" and isinstance(content, SoftPrompt)
        assert content.vectors.shape == (4, 64)


def test_our_soft_prompt_exports_to_peft_and_loads_there(tiny_lm, tiny_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    vectors = torch.randn(5, 64)
    write_soft_prompt(tmp_path / "ours.safetensors", vectors, {"slot": "before_template"})
    back, _ = read_soft_prompt(tmp_path / "ours.safetensors", 64)
    write_peft_prompt(tmp_path / "adapter", back, str(tiny_dir), tiny_lm.model.config)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_dir), tmp_path / "adapter"
    ).eval()
    completion = tiny_lm.tokenizer("Hola", add_special_tokens=False)["input_ids"]
    slot, ours = ours_before_template(tiny_lm, vectors, MESSAGE, completion)
    ids = torch.tensor([slot.tokenize(slot.texts(MESSAGE, has_slot=True)[1]) + completion])
    with torch.no_grad():
        theirs = model(input_ids=ids).logits[0, -ids.shape[1] :]
    assert torch.allclose(ours[-ids.shape[1] :], theirs, atol=1e-5)
    again, _ = read_soft_prompt(tmp_path / "adapter", 64)
    assert torch.equal(again, vectors)


def test_bad_soft_prompt_files_get_clear_errors(peft_adapter, tmp_path):
    adapter, _ = peft_adapter
    with pytest.raises(ValueError, match="hidden size is 576: it was made for another model"):
        read_soft_prompt(adapter, hidden_size=576)
    good = tmp_path / "p.safetensors"
    write_soft_prompt(good, torch.randn(4, 64), {})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated.safetensors.*not a readable safetensors file"):
        read_soft_prompt(truncated, 64)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_soft_prompt(tmp_path / "junk.safetensors", 64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_soft_prompt(tmp_path / "missing.safetensors", 64)
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (lora / "adapter_model.safetensors").write_bytes(good.read_bytes())
    with pytest.raises(ValueError, match="not 'PROMPT_TUNING'"):
        read_soft_prompt(lora)

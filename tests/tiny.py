"""A tiny randomly initialised Llama with a ChatML tokenizer, built from a config (no download)."""

from __future__ import annotations

from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Respond in Spanish. Be concise. Explain it like I'm five years old. Talk like a pirate.",
    "What is the capital of France? How do plants make their food? Why is the sky blue?",
    "The quick brown fox jumps over the lazy dog. Hola, el cielo es azul porque la luz se "
    "dispersa.",
    "system user assistant You are a helpful assistant. Arr matey, ye be wantin treasure!",
]


def tiny_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def tiny_model(vocab_size: int, seed: int = 0, layers: int = 4, init_range: float = 0.02):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        initializer_range=init_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    return model.eval()


def write_tiny_model(path: str | Path, seed: int = 0, init_range: float = 0.02) -> Path:
    """The tiny model saved as a transformers directory; a larger `init_range` gives sharper,
    more input-dependent next-token distributions (what training tests need)."""
    path = Path(path)
    tok = tiny_tokenizer()
    model = tiny_model(len(tok), seed, init_range=init_range)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_teacher(
    lm, messages: list[str], train: int, out, instruction="Respond in Spanish.", tokens=5
):
    """The Spanish hard-prompt teacher's table on `messages` (the first `train` train, the rest
    test)."""
    import pandas as pd

    from softlens.io import write_table
    from softlens.slot import HardPrompt, PromptSlot
    from softlens.teacher import GenerationSettings, teacher_table

    msgs = pd.DataFrame(
        {
            "message_id": [f"m{i}" for i in range(len(messages))],
            "user_message": messages,
            "split": ["train"] * train + ["test"] * (len(messages) - train),
        }
    )
    table = teacher_table(
        lm,
        PromptSlot.for_model(lm),
        HardPrompt(instruction),
        msgs,
        "spanish",
        GenerationSettings(max_new_tokens=tokens),
    )
    write_table(table, out)
    return table

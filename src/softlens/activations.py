"""The activation store: residual-stream activations on natural chat text, for training and
reading SAEs.

The text is the model's own: sampled completions to user turns built from the run's messages,
each alone or after one of the corpus's instructions (sae.corpus.instructions: a file of its own,
so editing the PoE dictionary does not redo the store; by default it leaves out the default
behaviours' own instructions, which would otherwise sit in the store verbatim), so the store
covers the user-turn positions a soft prompt occupies and the replies that follow. Activations
are captured by forward hooks while the text is generated (no second pass), from the start of the
user turn on: the system prefix, the same in every conversation, is left out (and with it the
attention-sink first token, whose activations are huge and content-free).

"Layer l" is the output of decoder block l (0-based), as for steering vectors. A shard is one
safetensors file: ``layer{l}`` (N, d) float16 per layer, ``token_ids``, ``doc`` and ``position``
(N,) int32; rows of one document are consecutive and in order, so contexts can be rebuilt from
it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import default_layers  # noqa: F401 (resolved with the config; used below)
from .slot import PromptSlot
from .steering import captured, decoder_layers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorpusSettings:
    tokens: int = 200_000  # over all shards
    shards: int = 4
    max_new_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 1.0  # 1 = plain sampling (nucleus sampling sorts the vocabulary every step)
    batch_size: int = 128
    seed: int = 0


def corpus_prompts(messages: Sequence[str], instructions: Sequence[str], seed: int) -> list[str]:
    """Every message alone and after every instruction, in a seeded order."""
    texts = [m for m in messages] + [f"{i} {m}" for i in instructions for m in messages]
    order = np.random.default_rng(seed).permutation(len(texts))
    return [texts[i] for i in order]


def user_turn_start(slot: PromptSlot) -> int:
    """Tokens before the user's content in a templated conversation (the shared system prefix)."""
    before, _ = PromptSlot(slot.tokenizer, slot.embeddings, "user_start", "").texts("", True)
    return len(slot.tokenize(before))


@torch.no_grad()
def generate_batch(
    lm,
    slot: PromptSlot,
    texts: Sequence[str],
    layers: Sequence[int],
    s: CorpusSettings,
    stops: set[int],
) -> tuple[list[list[int]], list[dict[int, torch.Tensor]]]:
    """Sample replies to `texts` and capture each conversation's activations from the user turn
    on.

    Returns per conversation its token ids (user turn onward, reply cut after its first EOS) and
    {layer: (n, d) float32}. The last sampled token is never fed back, so it is not kept.
    """
    batch = slot.batch(None, list(texts), padding_side="left")
    start = user_turn_start(slot)
    with captured(lm.model, layers) as record:
        new = lm.model.generate(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            max_new_tokens=s.max_new_tokens,
            do_sample=True,
            temperature=s.temperature,
            top_p=s.top_p if s.top_p < 1 else None,
            top_k=None,
            pad_token_id=slot.pad_id,
            eos_token_id=sorted(stops),
        )
    T = batch.inputs_embeds.shape[1]
    acts = {l: torch.cat(record[l], dim=1) for l in layers}  # (B, T + fed new tokens, d)
    fed = acts[layers[0]].shape[1] - T
    ids_out, acts_out = [], []
    for b, row in enumerate(new.tolist()):
        real = int(batch.attention_mask[b].sum())
        first = T - real + start  # left padding, then the system prefix
        cut = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
        keep = min(cut, fed)
        ids_out.append(batch.token_ids[b, first:].tolist() + row[:keep])
        acts_out.append({l: acts[l][b, first : T + keep] for l in layers})
    return ids_out, acts_out


def collect_shard(
    lm,
    slot: PromptSlot,
    prompts: Sequence[str],
    layers: Sequence[int],
    s: CorpusSettings,
    shard: int,
    first_doc: int = 0,
) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    """Generate over this shard's prompts (every `shards`-th, cycling) until it holds its share
    of tokens."""
    from .teacher import eos_ids

    stops = eos_ids(lm)
    want = -(-s.tokens // s.shards)
    mine = list(prompts[shard :: s.shards]) or list(prompts)
    torch.manual_seed(s.seed * 1_000_003 + shard)  # sampling uses the global generator
    ids, acts, docs, i = [], {l: [] for l in layers}, [], 0
    n = 0
    bar = tqdm(total=want, desc=f"activations shard {shard}", unit="tok")
    while n < want:
        size = s.batch_size
        if docs:  # the last batch only as large as the share still needs (with 10% to spare)
            size = max(1, min(size, math.ceil(1.1 * (want - n) * len(docs) / n)))
        texts = [mine[(i + j) % len(mine)] for j in range(size)]
        i += size
        b_ids, b_acts = generate_batch(lm, slot, texts, layers, s, stops)
        for text, t, a in zip(texts, b_ids, b_acts):
            docs.append(
                {
                    "doc": first_doc + len(docs),
                    "user_text": text,
                    "n_tokens": len(t),
                    "text": lm.tokenizer.decode(t),
                }
            )
            ids.append(t)
            for l in layers:
                acts[l].append(a[l])
            n += len(t)
            bar.update(len(t))
    bar.close()
    doc_ids = [torch.full((len(t),), d["doc"], dtype=torch.int32) for t, d in zip(ids, docs)]
    tensors = {
        "token_ids": torch.tensor([x for t in ids for x in t], dtype=torch.int32),
        "doc": torch.cat(doc_ids),
        "position": torch.cat([torch.arange(len(t), dtype=torch.int32) for t in ids]),
        **{f"layer{l}": torch.cat(acts[l]).to(torch.float16) for l in layers},
    }
    return tensors, pd.DataFrame(docs)


def write_shard(
    tensors: dict[str, torch.Tensor], docs: pd.DataFrame, out, docs_out, metadata: dict
) -> None:
    import json

    from .io import save_tensors, write_table

    big = [k for k, v in tensors.items() if k.startswith("layer") and not torch.isfinite(v).all()]
    if big:
        raise ValueError(
            f"activations overflow float16 at {big}: store them in float32 for this model"
        )
    write_table(docs, docs_out, metadata=metadata)
    save_tensors(tensors, out, {"softlens": json.dumps(metadata, sort_keys=True)})


def read_layer(paths: Sequence, layer: int) -> torch.Tensor:
    """One layer's activations from every shard, float32 (N, d)."""
    from safetensors import safe_open

    parts = []
    for p in paths:
        with safe_open(str(p), framework="pt") as f:
            key = f"layer{layer}"
            if key not in f.keys():
                raise ValueError(
                    f"activation shard {str(p)!r} has no layer {layer} (it has "
                    f"{sorted(k for k in f.keys() if k.startswith('layer'))})"
                )
            parts.append(f.get_tensor(key).float())
    return torch.cat(parts)


def read_tokens(paths: Sequence) -> pd.DataFrame:
    """token_ids, doc and position of every stored row, in store order."""
    from safetensors import safe_open

    frames = []
    for p in paths:
        with safe_open(str(p), framework="pt") as f:
            frames.append(
                pd.DataFrame({k: f.get_tensor(k).numpy() for k in ("token_ids", "doc", "position")})
            )
    return pd.concat(frames, ignore_index=True)


def run_activations(
    *, job, corpus: dict, layers: Sequence[int] | None, shard: int, out, docs_out
) -> None:
    """One shard of the activation store for the job's model (a ModelJob). `corpus` is the
    config's sae.corpus block with `messages` (the messages block) and `instructions` (its file)
    resolved."""
    from .config import load_corpus_instructions, load_messages, settings

    layers = sorted(layers or default_layers(len(decoder_layers(job.lm.model))))
    s = settings(CorpusSettings, "sae.corpus", corpus)
    prompts = corpus_prompts(
        list(load_messages(corpus["messages"])["user_message"]),
        load_corpus_instructions(corpus["instructions"]),
        s.seed,
    )
    first_doc = shard * 1_000_000  # document ids unique across shards
    tensors, docs = collect_shard(job.lm, job.slot, prompts, layers, s, shard, first_doc)
    log.info(
        "shard %d: %d tokens in %d conversations, layers %s",
        shard,
        len(tensors["doc"]),
        len(docs),
        layers,
    )
    write_shard(
        tensors,
        docs,
        out,
        docs_out,
        {
            "model": str(job.model),
            "layers": layers,
            "shard": shard,
            "corpus": {k: v for k, v in corpus.items() if k != "messages"},
        },
    )

"""File formats, in one place: atomic writes, Parquet tables with metadata, teacher tables."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TEACHER_COLUMNS = [
    "behavior",
    "split",
    "message_id",
    "user_message",
    "completion",
    "completion_ids",
]


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling of `path`; it replaces `path` only if the block succeeds.

    A killed job therefore never leaves a half-written output that looks complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_table(
    df: pd.DataFrame,
    path: str | Path,
    metadata: dict | None = None,
    schema: pa.Schema | None = None,
) -> None:
    """Write a Parquet table atomically; `metadata` (JSON-able) goes into the file's key-value
    store."""
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta[b"softlens"] = json.dumps(metadata, sort_keys=True).encode()
        table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_metadata(path: str | Path) -> dict:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"softlens", b"{}"))


def read_teacher(path: str | Path) -> pd.DataFrame:
    """A teacher table, checked: required columns present and at least one non-empty completion."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher table {str(path)!r} does not exist")
    df = pd.read_parquet(path)
    missing = [c for c in TEACHER_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"teacher table {str(path)!r} lacks column(s) {missing}")
    if df.empty or not (df["completion_ids"].map(len) > 0).any():
        raise ValueError(f"teacher table {str(path)!r} has no completions")
    return df


def save_tensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Tensors as safetensors, atomically; refused (naming the file and tensor) if any holds NaN or
    inf:
    every tensor the workflow writes goes through here."""
    import torch
    from safetensors.torch import save_file

    for name, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(
                f"{str(path)!r}: tensor {name!r} holds NaN or inf; nothing was written"
            )
    with atomic_path(path) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(tmp),
            metadata=metadata,
        )


def write_vector(tensors: dict, path: str | Path, metadata: dict) -> None:
    """Tensors plus JSON metadata as safetensors, atomically (steering vectors, soft prompts)."""
    save_tensors(tensors, path, {"softlens": json.dumps(metadata, sort_keys=True)})


def read_vector(path: str | Path) -> tuple[dict, dict]:
    """(tensors, metadata) from a safetensors file written by `write_vector`; a clear error if
    corrupt."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("softlens", "{}"))
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # truncated, not safetensors, bad header
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {e}") from None


# --- soft prompts: ours (safetensors, tensor "prompt") and PEFT prompt-tuning adapters ----------

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def write_soft_prompt(path, vectors, metadata: dict) -> None:
    write_vector({"prompt": vectors.float()}, path, metadata)


def read_soft_prompt(path, hidden_size: int | None = None) -> tuple:
    """(vectors (L, d) float32, metadata) from our soft-prompt file or a PEFT adapter directory.

    `hidden_size`, when given, is checked against the prompt's width (a prompt for another
    model).
    """
    path = Path(path)
    if path.is_dir() or path.name in (PEFT_CONFIG, PEFT_WEIGHTS):
        return read_peft_prompt(path if path.is_dir() else path.parent, hidden_size)
    if not path.is_file():
        raise FileNotFoundError(f"soft prompt {str(path)!r} does not exist")
    tensors, meta = read_vector(path)
    if "prompt" not in tensors:
        raise ValueError(f"{str(path)!r} holds no 'prompt' tensor (it has {sorted(tensors)})")
    vectors = tensors["prompt"].float()
    _check_width(vectors, hidden_size, path)
    return vectors, meta


def _check_width(vectors, hidden_size, path) -> None:
    if vectors.ndim != 2 or vectors.shape[0] < 1:
        raise ValueError(
            f"soft prompt {str(path)!r} has shape {tuple(vectors.shape)}; expected (L, d) with L "
            ">= 1"
        )
    if hidden_size is not None and vectors.shape[1] != hidden_size:
        raise ValueError(
            f"soft prompt {str(path)!r} has width {vectors.shape[1]} but the model's hidden size "
            f"is {hidden_size}: it was made for another model"
        )


def read_peft_prompt(adapter_dir, hidden_size: int | None = None) -> tuple:
    """A PEFT prompt-tuning adapter (adapter_config.json + adapter_model.safetensors with tensor
    `prompt_embeddings`) as (vectors, metadata); PEFT places these before the templated input."""
    adapter_dir = Path(adapter_dir)
    cfg_path, weights = adapter_dir / PEFT_CONFIG, adapter_dir / PEFT_WEIGHTS
    for f in (cfg_path, weights):
        if not f.is_file():
            raise FileNotFoundError(f"PEFT adapter {str(adapter_dir)!r} lacks {f.name}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(cfg_path)!r} is not valid JSON: {e}") from None
    if cfg.get("peft_type") != "PROMPT_TUNING":
        raise ValueError(
            f"{str(cfg_path)!r}: peft_type is {cfg.get('peft_type')!r}, not 'PROMPT_TUNING'"
        )
    tensors, _ = read_vector(weights)
    if "prompt_embeddings" not in tensors:
        raise ValueError(
            f"{str(weights)!r} holds no 'prompt_embeddings' tensor (it has {sorted(tensors)})"
        )
    vectors = tensors["prompt_embeddings"].float()
    if cfg.get("token_dim") not in (None, vectors.shape[-1]):
        raise ValueError(
            f"{str(cfg_path)!r}: token_dim {cfg['token_dim']} disagrees with the tensor's "
            f"width {vectors.shape[-1]}"
        )
    _check_width(vectors, hidden_size, adapter_dir)
    return vectors, {"format": "peft", "position": "before_template", "peft_config": cfg}


def write_peft_prompt(adapter_dir, vectors, base_model: str, model_config) -> None:
    """Export a soft prompt as a PEFT prompt-tuning adapter that `PeftModel.from_pretrained`
    loads."""
    adapter_dir = Path(adapter_dir)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    text = model_config.get_text_config()
    cfg = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": int(vectors.shape[0]),
        "token_dim": int(vectors.shape[1]),
        "num_transformer_submodules": 1,
        "num_attention_heads": text.num_attention_heads,
        "num_layers": text.num_hidden_layers,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "base_model_name_or_path": base_model,
        "inference_mode": True,
        "revision": None,
        "modules_to_save": None,
    }
    save_tensors({"prompt_embeddings": vectors.detach().float()}, adapter_dir / PEFT_WEIGHTS)
    with atomic_path(adapter_dir / PEFT_CONFIG) as tmp:
        Path(tmp).write_text(json.dumps(cfg, indent=2) + "\n")


def export_peft(*, prompt_path, model_path, adapter_dir) -> None:
    """Write our soft prompt as a PEFT prompt-tuning adapter for the model in directory
    `model_path`."""
    import logging

    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(model_path)
    vectors, meta = read_soft_prompt(prompt_path, model_config.get_text_config().hidden_size)
    if meta.get("slot", "before_template") != "before_template":
        logging.getLogger(__name__).warning(
            "%s was trained at slot position %r; PEFT puts its virtual tokens before the whole "
            "templated input, "
            "so it behaves differently there (train with model_settings.slot.position: "
            "before_template for an "
            "exact export)",
            prompt_path,
            meta.get("slot"),
        )
    write_peft_prompt(adapter_dir, vectors, model_path, model_config)


# --- log-prob caches: one row per (message_id, position): the head input and its log-normaliser ---


def write_states(path, teacher: pd.DataFrame, states, lse, rows, metadata: dict) -> None:
    """A factored log-prob cache (softlens.head): states (R, d) float32 and lse (R,) float64."""
    states = np.ascontiguousarray(states, dtype=np.float32)
    lse = np.asarray(lse, dtype=np.float64)
    if not (np.isfinite(states).all() and np.isfinite(lse).all()):
        raise ValueError(f"log-prob cache {str(path)!r}: the states to write contain NaN or inf")
    table = pa.table(
        {
            "message_id": pa.array(teacher["message_id"].to_numpy()[rows[:, 0]]),
            "split": pa.array(teacher["split"].to_numpy()[rows[:, 0]]),
            "position": pa.array(rows[:, 1].astype(np.int16)),
            "lse": pa.array(lse),
            "state": pa.FixedSizeListArray.from_arrays(
                pa.array(states.reshape(-1)), states.shape[1]
            ),
        }
    )
    table = table.replace_schema_metadata(
        {b"softlens": json.dumps(metadata, sort_keys=True).encode()}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=False)


def read_states(path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(keys: message_id, split, position; states (R, d) float32; lse (R,) float64), checked
    finite."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise ValueError(f"log-prob cache {str(path)!r} is unreadable: {e}") from None
    if "state" not in table.column_names:
        raise ValueError(
            f"{str(path)!r} is not a factored log-prob cache (no 'state' column): rebuild it"
        )
    col = table.column("state").combine_chunks()
    states = col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), -1)
    lse = table.column("lse").to_numpy().astype(np.float64)
    if not (np.isfinite(states).all() and np.isfinite(lse).all()):
        raise ValueError(f"log-prob cache {str(path)!r} contains NaN or inf")
    return table.select(["message_id", "split", "position"]).to_pandas(), states, lse


def check_aligned(keys: pd.DataFrame, other: pd.DataFrame, path, reference) -> None:
    """Raise unless `other` has the same (message_id, position) rows, in order, as `keys`."""
    same = (
        len(other) == len(keys)
        and (
            other[["message_id", "position"]].values == keys[["message_id", "position"]].values
        ).all()
    )
    if not same:
        raise ValueError(
            f"log-prob cache {str(path)!r} does not align with {str(reference)!r}: "
            f"rows must match by (message_id, position)"
        )


def read_aligned(paths: list) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Stack caches that score the same contexts: (keys, states (K, R, d), lse (K, R)); rows must
    align by (message_id, position)."""
    keys, X, C = None, None, None
    for i, p in enumerate(paths):
        k, x, lse = read_states(p)
        if keys is None:
            keys = k
            X, C = (
                np.empty((len(paths), *x.shape), dtype=np.float32),
                np.empty((len(paths), len(x))),
            )
        else:
            check_aligned(keys, k, p, paths[0])
        if x.shape[1] != X.shape[2]:
            raise ValueError(
                f"log-prob cache {str(p)!r} has width {x.shape[1]}, expected {X.shape[2]}"
            )
        X[i], C[i] = x, lse
    return keys, X, C

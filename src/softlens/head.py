"""Next-token distributions in factored form: the model's output head and the states it reads.

For a model whose logits are linear in the final hidden state, logits = x W^T + b (Llama, Qwen,
Mistral, SmolLM, Gemma 3: every model here), one context's whole distribution over V tokens is
its head input x (d numbers) and its log-normaliser:

    log p(v | n) = x_n . W_v + b_v - lse_n

So a log-prob cache stores (x, lse) per context (d + 1 numbers instead of V: 85x smaller for
SmolLM2), and a product of experts is linear in the states: sum_i w_i log p_i = u W^T + s b -
w.lse with u = sum_i w_i x_i, s = sum_i w_i. A mixture over K sources costs one (N, d) x (d, V)
product, not K passes over a (K, N, V) array. Heads with a non-linear final step (Gemma 2's logit
soft-capping) cannot be factored and are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Rows per pass over the vocabulary: (rows, V) float64 work arrays stay near 32 MB each.
CHUNK_BYTES = 32 * 2**20


class NonLinearHead(ValueError):
    """The model's logits are not linear in its final hidden state, so they cannot be factored."""


@dataclass
class OutputHead:
    """logits = x W^T + b, in float32 (the states' dtype)."""

    weight: torch.Tensor  # (V, d)
    bias: torch.Tensor | None = None  # (V,)

    def __post_init__(self):
        self.weight = self.weight.detach().float().contiguous()
        if self.bias is not None:
            self.bias = self.bias.detach().float().contiguous()
        if not torch.isfinite(self.weight).all():
            raise ValueError("output head weights contain NaN or inf")
        self.V, self.d = self.weight.shape

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> OutputHead:
        """The head of a transformers causal LM, after checking its logits are linear in its
        input."""
        text = model.config.get_text_config()
        cap = getattr(text, "final_logit_softcapping", None)
        if cap:
            raise NonLinearHead(
                f"model {text.model_type!r} soft-caps its logits (final_logit_softcapping="
                f"{cap}): log-prob caches need logits linear in the final hidden state"
            )
        head = model.get_output_embeddings()
        if not isinstance(head, torch.nn.Linear):
            raise NonLinearHead(f"the output head is a {type(head).__name__}, not a linear layer")
        return cls(head.weight.cpu(), None if head.bias is None else head.bias.cpu())

    def rows_per_chunk(self) -> int:
        return max(1, CHUNK_BYTES // (8 * self.V))

    def logits(self, x: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        """(R, V) float64 logits of states x (R, d); `scale` multiplies the bias (a mixture's sum
        of weights)."""
        z = x.to(self.weight) @ self.weight.T
        if self.bias is not None:
            z = z + torch.as_tensor(scale, dtype=z.dtype).reshape(-1, 1) * self.bias
        return z.double()

    def lse(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """(R,) float64 log-normalisers of states x (R, d)."""
        step = self.rows_per_chunk()
        return torch.cat(
            [
                torch.logsumexp(self.logits(x[a : a + step], scale), -1)
                for a in range(0, len(x), step)
            ]
        )

    def log_probs(self, x: torch.Tensor, lse: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """(R, V) float64 log-probs of cached rows (`scale` as in `logits`, for a mixture)."""
        return self.logits(x, scale) - lse.double().reshape(-1, 1)

    def moments(self, x: torch.Tensor, lse: torch.Tensor, scale: float = 1.0) -> Moments:
        """Per-row E_p[W_v], E_p[b_v] and sum_v p log p of cached rows, the statistics a KL
        against p needs."""
        step, parts = self.rows_per_chunk(), []
        for a in range(0, len(x), step):
            logp = self.log_probs(x[a : a + step], lse[a : a + step], scale)
            p = logp.exp()
            parts.append(
                (
                    (p.to(self.weight) @ self.weight).double(),
                    (p @ self.bias.double())
                    if self.bias is not None
                    else torch.zeros(len(p), dtype=torch.float64),
                    (p * logp).sum(-1),
                )
            )
        return Moments(*(torch.cat(t) for t in zip(*parts)))


@dataclass
class Moments:
    """Per-row statistics of a distribution p over the vocabulary: E_p[W_v] (R, d), E_p[b_v]
    (R,), and sum_v p log p (R,). E_p[log q] for any cached q is then x_q . mean + bias - lse_q."""

    mean: torch.Tensor
    bias: torch.Tensor
    plogp: torch.Tensor

    def cross(self, x: torch.Tensor, lse: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """(R,) E_p[log q] for a cached source q with states x (R, d) and log-normalisers lse
        (R,)."""
        return (x.double() * self.mean).sum(-1) + scale * self.bias - lse.double()

    def kl_to(self, x: torch.Tensor, lse: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """(R,) KL(p || q) for a cached source q (a mixture: its summed state, `scale` = its
        summed weight)."""
        return self.plogp - self.cross(x, lse, scale)


def cached_mean_kl(head: OutputHead, p: tuple, q: tuple) -> float:
    """mean over rows of KL(P || Q) for two cached sources, each (states (R, d), lse (R,))."""
    px, plse = (torch.as_tensor(np.asarray(t)) for t in p)
    qx, qlse = (torch.as_tensor(np.asarray(t)) for t in q)
    return float(head.moments(px, plse).kl_to(qx, qlse).mean())


def save_head(head: OutputHead, path, metadata: dict) -> None:
    from .io import write_vector

    tensors = {"weight": head.weight} | ({} if head.bias is None else {"bias": head.bias})
    write_vector(tensors, path, metadata)


def read_head(path) -> OutputHead:
    from .io import read_vector

    tensors, _ = read_vector(path)
    if "weight" not in tensors:
        raise ValueError(f"{str(path)!r} holds no output head ('weight' tensor)")
    return OutputHead(tensors["weight"], tensors.get("bias"))

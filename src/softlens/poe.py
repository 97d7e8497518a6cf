"""Sparse signed product-of-experts (PoE) fits.

For contexts n and dictionary atoms i with next-token log-probs L[i, n, :], the mixture is

    log q_w(. | n) = log_softmax( sum_i w_i L[n, i, :] )

and the fit solves   min_w  mean_n KL(P_n || q_w(. | n)) + lam * ||w||_1,   w in R^K   (convex).

With z_n = L_n^T w:  KL = sum_v P log P - P.z + logsumexp(z), so the gradient is mean_n(E_q[L_n]
- E_P[L_n]) and the Hessian is mean_n Cov_q(L_n) (K x K). The solver is proximal Newton on a
working set: the exact Hessian there, a coordinate-descent inner solve, backtracking on the true
objective. One screening pass over all atoms per outer round finds the atoms that violate the
optimality conditions. Sums over contexts and the mixture logits accumulate in float64.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .head import OutputHead

log = logging.getLogger(__name__)

# A factored pass holds two (rows, V) float32 arrays and the rows' (k + M, d) head rows at once:
# 64 MiB of the former (341 contexts at V = 49,152) keeps a fit's peak near 1 GB.
PASS_CHUNK_BYTES = 64 * 2**20


class NotConverged(RuntimeError):
    """The solver stopped before meeting its tolerance; the message carries the status."""


@dataclass
class Fit:
    lam: float
    weights: np.ndarray  # (K,)
    objective: float  # mean KL + lam * ||w||_1 on the fitting contexts
    kl: float  # mean KL(P || q_w) on the fitting contexts
    iterations: int
    kkt: float  # max KKT violation at the returned weights
    converged: bool
    status: str = ""
    rounds: int = 0  # full-vocabulary rounds (factored caches)

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.weights))


class _Screened:
    """lambda_max from a problem's all-atom gradient (`screen`), computed once."""

    def lambda_max(self) -> float:
        """The smallest lam at which w = 0 is optimal."""
        if "_lambda_max" not in self.__dict__:
            self._gradient_at_zero = self.screen(np.zeros(self.K))
            self._lambda_max = float(np.abs(self._gradient_at_zero).max())
        return self._lambda_max

    def _buffer(self, name: str, numel: int, dtype) -> torch.Tensor:
        """A reused flat buffer: fresh large temporaries cost more in page faults than in
        arithmetic."""
        buf = self.__dict__.setdefault("_buffers", {}).get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = torch.empty(numel, dtype=dtype)
            self._buffers[name] = buf
        return buf[:numel]


@dataclass
class PoEProblem(_Screened):
    """Atom log-probs L (K, N, V), atom-major, and target log-probs (N, V) on the same contexts.

    Atom-major layout makes the all-atom gradient one matrix-vector product over (K, N*V),
    several times faster than per-context batched products.
    """

    L: torch.Tensor
    target: torch.Tensor
    atoms: list[str] = field(default_factory=list)
    chunk_bytes: int = 128 * 2**20

    def __post_init__(self):
        if self.L.ndim != 3 or self.target.shape != self.L.shape[1:]:
            raise ValueError(
                f"L must be (K, N, V) and target (N, V); got {tuple(self.L.shape)} and "
                f"{tuple(self.target.shape)}"
            )
        for name, t in (("atom log-probs", self.L), ("target log-probs", self.target)):
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} contain NaN or inf")
        self.L = self.L.contiguous()
        self.K, self.N, self.V = self.L.shape
        self.atoms = list(self.atoms) or [f"atom{i}" for i in range(self.K)]
        if len(self.atoms) != self.K:
            raise ValueError(f"{len(self.atoms)} atom names for {self.K} atoms")
        step = max(1, int(self.chunk_bytes // (self.K * self.V * 8)))
        self._chunks = [slice(a, min(a + step, self.N)) for a in range(0, self.N, step)]
        # Fixed parts of the objective, in float64: mean_n E_P[L] (K,) and mean_n sum_v P log P.
        ep, plogp = torch.zeros(self.K, dtype=torch.float64), 0.0
        for c in self._chunks:
            p = self.target[c].double().exp()
            ep += (self.L[:, c].double() * p).sum((1, 2))
            plogp += float((p * self.target[c].double()).sum())
        self.ep_mean = ep / self.N
        self.const = plogp / self.N

    # -- passes over L ---------------------------------------------------------------------------
    # Exact work happens on the small working set S: its log-probs are gathered chunk by chunk into
    # reusable float64 buffers (`_buffer`).
    # The all-atom screening pass runs in L's dtype on the residual q - P, which is small near a
    # good fit, so its rounding error stays far below any lambda of interest.

    @property
    def screen_tol(self) -> float:
        """Resolution of gradients computed from the data, relative to the gradient scale at w =
        0 (lambda_max): ~exact for float64 data, 1e-5 for float32 data.

        Float32 per-context sums over 49k tokens carry ~1e-6 relative rounding. KKT conditions
        resolved to 1e-5 * lambda_max leave the objective within ~1e-8 (relative) of its optimum.
        """
        rel = 1e-12 if self.L.dtype == torch.float64 else 1e-5
        return rel * self.lambda_max()

    def _gather(
        self, c: slice, idx: np.ndarray, dtype=torch.float64, name: str = "gather"
    ) -> torch.Tensor:
        """(|idx|, rows, V) copy of the chosen atoms' log-probs on chunk c, in a reused buffer."""
        rows = c.stop - c.start
        out = self._buffer(name, len(idx) * rows * self.V, dtype).view(len(idx), rows, self.V)
        for j, i in enumerate(idx):
            out[j].copy_(self.L[i, c])
        return out

    def _z(self, c: slice, w: np.ndarray) -> torch.Tensor:
        """Mixture logits z = sum_i w_i L_i on chunk c, accumulated in float64 (the objective
        needs them exact; the line search compares objectives that differ by 1e-9)."""
        z = torch.zeros(c.stop - c.start, self.V, dtype=torch.float64)
        for i in np.flatnonzero(w):
            z.add_(self.L[i, c], alpha=float(w[i]))
        return z

    def kl(self, w: np.ndarray) -> float:
        """mean_n KL(P_n || q_w(. | n))."""
        lse = sum(float(torch.logsumexp(self._z(c, w), -1).sum()) for c in self._chunks)
        return self.const - float(self.ep_mean.numpy() @ w) + lse / self.N

    def derivatives(self, w: np.ndarray, atoms: np.ndarray, hessian: bool = False):
        """(kl, gradient on `atoms`, Hessian on `atoms` or None), float64 results.

        The gradient is sum_v (q - P) L per context (in L's dtype; its rounding shrinks as the
        fit improves), contexts added up in float64: exact for float64 data, to `screen_tol` for
        float32.
        """
        atoms = np.asarray(atoms, dtype=np.int64)
        g = torch.zeros(len(atoms), dtype=torch.float64)
        H = torch.zeros(len(atoms), len(atoms), dtype=torch.float64) if hessian else None
        lse_sum = 0.0
        for c in self._chunks:
            z = self._z(c, w)
            lse = torch.logsumexp(z, -1, keepdim=True)
            lse_sum += float(lse.sum())
            if len(atoms) == 0:
                continue
            q64 = (z - lse).exp_()
            r = (q64 - self.target[c].double().exp()).to(
                self.L.dtype
            )  # q - P: small near a good fit
            La = self._gather(c, atoms, self.L.dtype)  # (|S|, rows, V)
            g += torch.bmm(La.transpose(0, 1), r.unsqueeze(-1)).squeeze(-1).double().sum(0)
            if H is not None:  # sum_n Cov_q(L_n)
                q = q64.to(self.L.dtype)
                m = (
                    torch.bmm(La.transpose(0, 1), q.unsqueeze(-1)).squeeze(-1).double()
                )  # E_q[L] (rows, |S|)
                A = La.mul_(q.sqrt_()).view(len(atoms), -1)
                H += (A @ A.T).double() - m.T @ m
        g = g / self.N
        kl = self.const - float(self.ep_mean.numpy() @ w) + lse_sum / self.N
        return kl, g.numpy(), None if H is None else (H / self.N).numpy()

    def screen(self, w: np.ndarray) -> np.ndarray:
        """Gradient over all K atoms, mean_n sum_v (q - P) L: one matrix-vector pass in L's
        dtype."""
        g = torch.zeros(self.K, dtype=torch.float64)
        for c in self._chunks:  # a few contexts per product keeps float32 sums short
            z = self._z(c, w)
            r = (
                (z - torch.logsumexp(z, -1, keepdim=True)).exp_() - self.target[c].double().exp()
            ).to(self.L.dtype)
            g += torch.mv(self.L[:, c].reshape(self.K, -1), r.view(-1)).double()
        return g.numpy() / self.N


@dataclass
class TangentProblem(_Screened):
    """A model of the PoE objective around a point w0, on a few tokens per context
    (FactoredProblem.solve).

    Columns of L (K, N, k + M) are the atoms' log-probs on each context's k most probable tokens
    and on M tokens drawn from the rest r (q_{w0} renormalised outside them), each draw weighted
    by `offset` = -log(M r_v) so the rest's sum of exp(z) is estimated without bias and exactly
    at w0. The target enters only through E_P[L] per context (`ep`, with a linear correction that
    makes the draws' mean log-prob the rest's exact mean) and a constant: the model equals the
    full-vocabulary objective at w0 in value and gradient, and its curvature is the head's plus
    the draws'. Everything is float64 and small, so passes over it cost next to nothing.
    """

    L: torch.Tensor  # (K, N, k + M)
    offset: (
        torch.Tensor
    )  # (N, k + M): 0 on the k tokens, the draws' log-weights (-inf with nothing left over)
    ep: torch.Tensor  # (K, N)
    const: float

    def __post_init__(self):
        self.K, self.N, _ = self.L.shape
        self.ep_mean = self.ep.mean(1)

    screen_tol = property(lambda self: 1e-12 * self.lambda_max())

    def _q(self, w: np.ndarray):
        nz = np.flatnonzero(w)
        z = self.offset + torch.einsum("k,knv->nv", torch.from_numpy(w[nz]), self.L[nz])
        lse = torch.logsumexp(z, -1, keepdim=True)
        return (z - lse).exp(), float(lse.mean())

    def kl(self, w: np.ndarray) -> float:
        return self.const - float(self.ep_mean.numpy() @ w) + self._q(w)[1]

    def derivatives(self, w: np.ndarray, atoms: np.ndarray, hessian: bool = False):
        q, lse = self._q(w)
        La = self.L[np.asarray(atoms, dtype=np.int64)]
        eq = torch.einsum("snv,nv->sn", La, q)
        g = eq.mean(1) - self.ep_mean[atoms]
        H = None
        if hessian:  # sum_nv q La La' as one (S, N v) x (N v, S) product
            H = (((La * q).flatten(1) @ La.flatten(1).T - eq @ eq.T) / self.N).numpy()
        return self.const - float(self.ep_mean.numpy() @ w) + lse, g.numpy(), H

    def screen(self, w: np.ndarray) -> np.ndarray:
        q, _ = self._q(w)
        return (torch.einsum("knv,nv->k", self.L, q) / self.N - self.ep_mean).numpy()


@dataclass
class FactoredProblem(_Screened):
    """The PoE fit on cached states (see softlens.head): atoms' states X (K, N, d) and
    log-normalisers C (K, N), the target's (N, d) and (N,), and the output head. Exact at full
    vocabulary.

    The objective, its gradient for every atom and its value on held-out rows each cost one or
    two (N, d) x (d, V) products, whatever K is. `solve` runs outer rounds: one full-vocabulary
    pass builds a TangentProblem on each context's `head_tokens` most probable tokens (under the
    current mixture and the target) plus a rest bucket, proximal Newton solves that small
    problem, and the next pass checks every atom's optimality conditions on the full vocabulary.
    A fixed point of these rounds meets the full problem's conditions, and they are what
    `converged` reports.
    """

    head: OutputHead
    X: torch.Tensor
    C: torch.Tensor
    target_x: torch.Tensor
    target_lse: torch.Tensor
    atoms: list[str] = field(default_factory=list)
    head_tokens: int = 128
    rest_draws: int = 128
    seed: int = 0

    def __post_init__(self):
        self._rng = torch.Generator().manual_seed(self.seed)
        self.X = torch.as_tensor(self.X).float().contiguous()
        self.C = torch.as_tensor(self.C).double()
        self.target_x = torch.as_tensor(self.target_x).float()
        self.target_lse = torch.as_tensor(self.target_lse).double()
        if (
            self.X.ndim != 3
            or self.C.shape != self.X.shape[:2]
            or self.target_x.shape != self.X.shape[1:]
            or self.target_lse.shape != self.X.shape[1:2]
        ):
            raise ValueError(
                f"states must be X (K, N, d), C (K, N), target (N, d) and (N,); got "
                f"{tuple(self.X.shape)}, {tuple(self.C.shape)}, {tuple(self.target_x.shape)}, "
                f"{tuple(self.target_lse.shape)}"
            )
        if self.X.shape[2] != self.head.d:
            raise ValueError(
                f"states have width {self.X.shape[2]} but the output head {self.head.d}"
            )
        for name, t in (
            ("atom states", self.X),
            ("atom log-normalisers", self.C),
            ("target states", self.target_x),
            ("target log-normalisers", self.target_lse),
        ):
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} contain NaN or inf")
        self.K, self.N, _ = self.X.shape
        self.atoms = list(self.atoms) or [f"atom{i}" for i in range(self.K)]
        if len(self.atoms) != self.K:
            raise ValueError(f"{len(self.atoms)} atom names for {self.K} atoms")
        self.P = self.head.moments(self.target_x, self.target_lse)
        self.ep = (
            (self.X.double() * self.P.mean).sum(-1) + self.P.bias - self.C
        )  # E_P[L_i] per context
        self.ep_mean = self.ep.mean(1)
        self.const = float(self.P.plogp.mean())
        # The objective is a small difference of terms the size of the log-normalisers, computed
        # from float32 logits: its resolution is float32's epsilon at that size, not at its own.
        self.kl_resolution = float(np.finfo(np.float32).eps) * float(self.target_lse.abs().mean())
        self._target_top = self._top(self.target_x, self.target_lse)
        # Each pass reads the whole head once per chunk, so few, even chunks: a third of the rows in
        # a chunk of their own costs nearly what a full one does.
        n = -(-self.N // (PASS_CHUNK_BYTES // (4 * self.head.V)))
        bounds = np.linspace(0, self.N, n + 1).round().astype(int)
        self._chunks = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def subset(self, idx) -> FactoredProblem:
        """The same target and contexts over the atoms `idx` (no pass over the vocabulary)."""
        idx = np.asarray(idx, dtype=np.int64)
        sub = copy.copy(self)
        sub.X, sub.C, sub.ep = self.X[idx], self.C[idx], self.ep[idx]
        sub.ep_mean, sub.K, sub.atoms = sub.ep.mean(1), len(idx), [self.atoms[i] for i in idx]
        for cached in ("_lambda_max", "_gradient_at_zero", "_last"):
            sub.__dict__.pop(cached, None)
        if (
            "_gradient_at_zero" in self.__dict__
        ):  # the subset's gradient at w = 0 is the parent's, sliced
            sub._gradient_at_zero = self._gradient_at_zero[idx]
            sub._lambda_max = float(np.abs(sub._gradient_at_zero).max()) if len(idx) else 0.0
        return sub

    def _top(self, x, lse):
        """The target's most probable tokens per context (always in the token sets) and their
        probabilities."""
        k = min(self.head_tokens // 4, self.head.V)
        step, idx, prob = self.head.rows_per_chunk(), [], []
        for a in range(0, len(x), step):
            top = self.head.log_probs(x[a : a + step], lse[a : a + step]).topk(k, -1)
            idx.append(top.indices)
            prob.append(top.values.exp())
        return torch.cat(idx), torch.cat(prob)

    @property
    def screen_tol(self) -> float:
        """Resolution of the full-vocabulary gradient, as for float32 dense log-probs: conditions
        are checked to 1e-5 of the gradient scale at w = 0 (benchmarks/poe_solver.py measures
        what that leaves)."""
        return 1e-5 * self.lambda_max()

    def _mix(self, w: np.ndarray, c: slice):
        nz = np.flatnonzero(w)
        u = torch.einsum("k,knd->nd", torch.from_numpy(w[nz]), self.X[nz, c].double())
        return u, float(w.sum())

    def _logits(self, u: torch.Tensor, s: float):
        """A mixture's float32 logits (rows, V) and log-normalisers (rows,)."""
        rows, V = len(u), self.head.V
        z = torch.mm(
            u.float(),
            self.head.weight.T,
            out=self._buffer("z", rows * V, torch.float32).view(rows, V),
        )
        if self.head.bias is not None:
            z += s * self.head.bias
        return z, torch.logsumexp(z, -1)

    def _row_kl(self, u: torch.Tensor, s: float, lse: torch.Tensor, c: slice) -> torch.Tensor:
        """KL(P_n || q_n) per context of chunk c: sum p log p - E_P[log q] with log q = u.W + s b
        - lse."""
        return self.P.plogp[c] - (u * self.P.mean[c]).sum(-1) - s * self.P.bias[c] + lse.double()

    def kl_rows(self, w: np.ndarray) -> np.ndarray:
        """KL(P_n || q_w(. | n)) per context (N,), full vocabulary: what intervals resample."""
        w = np.asarray(w, dtype=np.float64)
        out = []
        for c in self._chunks:
            u, s = self._mix(w, c)
            out.append(self._row_kl(u, s, self._logits(u, s)[1], c))
        return torch.cat(out).numpy()

    def _pass(self, w: np.ndarray, tokens: int = 0):
        """One pass over the vocabulary at w: (mean KL, exact gradient (K,), TangentProblem on
        `tokens` tokens per context), or the KL alone when `tokens` is 0.

        The (rows, V) arrays are float32, as the cached states are (their logits carry ~1e-7
        relative rounding whatever the later precision); per-context sums are float64.
        """
        last = self.__dict__.get("_last")
        if (
            last is not None and last[0] == w.tobytes() and last[1] >= tokens
        ):  # wider token sets serve too
            return last[2] if tokens else (last[2][0], None, None)
        kl, g = 0.0, torch.zeros(self.K, dtype=torch.float64)
        parts = []
        W, b = self.head.weight, self.head.bias
        tangent, k = tokens > 0, min(tokens, self.head.V)
        for c in self._chunks:
            u, s = self._mix(w, c)
            z, lse = self._logits(u, s)
            kl += float(self._row_kl(u, s, lse, c).sum())
            if not tangent:
                continue
            logq = z.sub_(lse[:, None])
            q = torch.exp(logq, out=self._buffer("q", logq.numel(), torch.float32).view_as(logq))
            # token sets: the mixture's most probable tokens, with the target's top tokens always in
            T = (
                self._buffer("ranked", q.numel(), q.dtype)
                .view_as(q)
                .copy_(q)
                .scatter_add_(1, self._target_top[0][c], self._target_top[1][c].float())
                .topk(k, -1)
                .indices
            )
            qT = q.gather(1, T)
            q_rest = q.scatter_(1, T, 0.0)  # q outside T (q is spent)
            mass = q_rest.sum(-1).double()  # float32's cascade sum: the GEMMs' own precision
            has_rest = mass > 0
            draws = torch.multinomial(
                q_rest if bool(has_rest.all()) else torch.where(has_rest[:, None], q_rest, 1.0),
                self.rest_draws,
                replacement=True,
                generator=self._rng,
            )
            cols = torch.cat([T, draws], 1)
            Wc = torch.index_select(
                W,
                0,
                cols.flatten(),
                out=self._buffer("Wc", cols.numel() * self.head.d, W.dtype).view(-1, self.head.d),
            ).view(*cols.shape, -1)  # (rows, k + M, d)
            m_rest = (q_rest @ W).double()  # sum_rest q_v W_v
            m_q = torch.einsum("rk,rkd->rd", qT, Wc[:, :k]).double() + m_rest  # E_q[W_v]
            rest_bias = torch.zeros_like(mass) if b is None else (q_rest @ b).double()
            beta_q = rest_bias if b is None else rest_bias + (qT * b[T]).sum(-1).double()
            X = self.X[:, c].double()  # (K, rows, d)
            g += torch.mv(X.flatten(1), (m_q - self.P.mean[c]).flatten()) + float(
                (beta_q - self.P.bias[c]).sum()
            )
            # restricted data: the atoms' log-probs on T, and on `rest_draws` tokens drawn from the
            # rest
            # r = q_rest / mass, each standing for mass / M of it (offset -log(M r_v)): exact at w
            # in value,
            # and a sample of the rest's curvature, which a single bucket would miss where q is
            # flat.
            Lc = torch.einsum("krd,rtd->krt", self.X[:, c], Wc).double() - self.C[:, c, None]
            if b is not None:
                Lc += b[cols].double()
            log_weight = (
                mass.clamp_min(1e-300).log()[:, None]
                - np.log(self.rest_draws)
                - logq.gather(1, draws).double()
            )
            offset = torch.cat(
                [
                    torch.zeros(len(T), k, dtype=torch.float64),
                    torch.where(has_rest[:, None], log_weight, -np.inf),
                ],
                1,
            )
            # ... and a linear correction, so the gradient at w is exact too: the draws' mean log-
            # prob
            # replaced by the rest's exact mean (E_r[L_i] = x_i . E_r[W_v] + E_r[b_v] - lse_i)
            safe = mass.clamp_min(1e-300)
            tau = (
                torch.einsum("krd,rd->kr", X, m_rest / safe[:, None])
                + rest_bias / safe
                - self.C[:, c]
            )
            delta = torch.where(has_rest, mass * (tau - Lc[:, :, k:].mean(-1)), 0.0)
            parts.append((Lc, offset, delta))
        kl /= self.N
        if not tangent:
            return kl, None, None
        g = (g / self.N).numpy()
        L, offset, delta = (torch.cat(t, d) for t, d in zip(zip(*parts), (1, 0, 1)))
        const = self.const - float((delta.mean(1) * torch.from_numpy(w)).sum())
        self._last = (w.tobytes(), k, (kl, g, TangentProblem(L, offset, self.ep - delta, const)))
        return self._last[2]

    def kl(self, w: np.ndarray) -> float:
        """mean_n KL(P_n || q_w(. | n)), full vocabulary."""
        return self._pass(np.asarray(w, dtype=np.float64))[0]

    def restricted(self, tokens: int = 512, rows_per_chunk: int = 8) -> PoEProblem:
        """A dense, approximate copy for choosing among fits (cross-validation folds), not for
        reporting:
        each context keeps the `tokens` tokens that the target or any atom finds most probable, and
        one
        bucket holding the rest of each distribution's mass (exact for every atom alone; for a
        mixture
        it treats the rest's shape as the atoms' common one). Float64, (K, N, tokens + 1)."""
        k = min(tokens, self.head.V)
        bucket = int(k < self.head.V)  # a vocabulary that fits whole needs no bucket
        L = torch.empty(self.K, self.N, k + bucket, dtype=torch.float64)
        target = torch.empty(self.N, k + bucket, dtype=torch.float64)
        W, b = self.head.weight, self.head.bias
        for a in range(0, self.N, rows_per_chunk):
            c = slice(a, min(a + rows_per_chunk, self.N))
            # float32 (K, rows, V) log-probs, worked in place: the chunk's largest array, passed
            # over few times
            rows = (
                c.stop - c.start
            )  # one 2-D product: a batched one over a slice of X is several times slower
            atoms = (
                (self.X[:, c].reshape(-1, self.head.d) @ W.T)
                .view(self.K, rows, -1)
                .sub_(self.C[:, c, None].float())
            )
            p = (self.target_x[c] @ W.T).sub_(self.target_lse[c, None].float())
            if b is not None:
                atoms += b
                p += b
            T = torch.maximum(p, atoms.max(0).values).topk(k, -1).indices  # (rows, k)
            for out, logp in ((L[:, c], atoms), (target[c], p)):
                index = T.expand(*logp.shape[:-1], k)
                out[..., :k] = logp.gather(-1, index).double()
                if bucket:  # the rest's mass, summed exactly outside T (no 1 - sum cancellation)
                    rest = logp.exp_().scatter_(-1, index, 0.0).sum(-1, dtype=torch.float64)
                    out[..., k] = rest.clamp_min(1e-300).log()
        return PoEProblem(L, target, list(self.atoms))

    def screen(self, w: np.ndarray) -> np.ndarray:
        """The exact gradient over all K atoms."""
        return self._pass(np.asarray(w, dtype=np.float64), self.head_tokens)[1]

    def solve(
        self,
        lam: float,
        w0: np.ndarray | None = None,
        *,
        tol: float = 1e-9,
        max_iter: int = 100,
        max_rounds: int = 50,
    ) -> Fit:
        tol = max(tol, self.screen_tol)
        w = np.zeros(self.K) if w0 is None else np.asarray(w0, dtype=np.float64).copy()
        k = self.head_tokens
        kl, g, tangent = self._pass(w, k)
        status, rounds, inner = "max_rounds", 0, 0
        for rounds in range(max_rounds):  # noqa: B007 (reported after the loop)
            if _kkt(w, g, lam).max() <= tol:
                status = "converged"
                break
            fit = _proximal_newton(tangent, lam, w, tol=0.1 * tol, max_iter=max_iter)
            inner += fit.iterations
            # The tangent model agrees with the objective at w in value and gradient, so its
            # minimiser is a descent direction: backtrack on the true objective (Armijo). Near the
            # optimum the objective's float32 resolution (kl_resolution) hides the decrease; there
            # a step that brings the exact optimality conditions closer is kept. A rejected full
            # step means the model was poor (much mass outside the token sets): widen them from
            # then on.
            d, t = fit.weights - w, 1.0
            F, kkt = kl + lam * np.abs(w).sum(), _kkt(w, g, lam).max()
            delta = float(g @ d) + lam * (np.abs(fit.weights).sum() - np.abs(w).sum())
            while True:
                cand = w + t * d
                kl_c, g_c, tangent_c = self._pass(cand, k)
                F_c = kl_c + lam * np.abs(cand).sum()
                if F_c <= F + 1e-4 * t * delta or (
                    F_c <= F + max(1e-7 * abs(F), self.kl_resolution)
                    and _kkt(cand, g_c, lam).max() < kkt
                ):
                    break
                if t == 1.0:
                    k = min(2 * k, 8 * self.head_tokens, self.head.V)
                t *= 0.5
                if t < 1e-3:
                    status = "line_search_failed"
                    break
            if status == "line_search_failed":
                # No step helps any more: the float32 states' resolution, not the model, limits the
                # fit here. Within 10x the tolerance that is the optimum to that resolution (status
                # says so).
                if kkt <= 10 * tol:
                    status = "resolution_limit"
                break
            w, kl, g, tangent = cand, kl_c, g_c, tangent_c
        kkt = float(_kkt(w, g, lam).max())
        converged = status in ("converged", "resolution_limit")
        return Fit(
            lam=lam,
            weights=w,
            objective=kl + lam * np.abs(w).sum(),
            kl=kl,
            iterations=inner,
            kkt=kkt,
            converged=converged,
            status=status,
            rounds=rounds,
        )


# --- the solver ---------------------------------------------------------------------------------


def _kkt(w: np.ndarray, g: np.ndarray, lam: float) -> np.ndarray:
    """Per-coordinate violation of the optimality conditions of f + lam ||.||_1."""
    return np.where(w != 0, np.abs(g + lam * np.sign(w)), np.maximum(np.abs(g) - lam, 0.0))


def _cd_quadratic(
    g: np.ndarray, H: np.ndarray, w: np.ndarray, lam: float, sweeps: int = 500, tol: float = 1e-13
):
    """argmin_x g.(x-w) + 1/2 (x-w)' H (x-w) + lam ||x||_1 by cyclic coordinate descent; every
    few sweeps the stationary point of the current signs is solved for directly, and returned
    where it meets every coordinate's optimality condition (then it is the exact minimiser)."""
    x = w.copy()
    diag = np.maximum(np.diag(H), 1e-12)
    Hd = np.zeros_like(w)
    for sweep in range(sweeps):
        if sweep % 4 == 3 and (exact := _signed_stationary_point(g, H, w, lam, x)) is not None:
            return exact
        biggest = 0.0
        for j in range(len(x)):
            grad_j = g[j] + Hd[j]
            u = x[j] - grad_j / diag[j]
            new = np.sign(u) * max(abs(u) - lam / diag[j], 0.0)
            step = new - x[j]
            if step != 0.0:
                x[j] = new
                Hd += H[:, j] * step
                biggest = max(biggest, abs(step))
        if biggest < tol:
            break
    return x


def _signed_stationary_point(
    g: np.ndarray, H: np.ndarray, w: np.ndarray, lam: float, x: np.ndarray
) -> np.ndarray | None:
    """The quadratic's minimiser on x's support and signs, if it is the minimiser: on the
    support g + H (y - w) + lam sign(x) = 0 with the signs kept, elsewhere |g + H (y - w)| <=
    lam. None otherwise."""
    A = np.flatnonzero(x)
    sign = np.sign(x[A])
    y = np.zeros_like(w)
    if len(A):
        # g_A + H_AA (y_A - w_A) - H_A,rest w_rest + lam sign = 0
        rhs = H[A] @ w - g[A] - lam * sign
        y[A] = np.linalg.solve(H[np.ix_(A, A)], rhs)
        if np.any(np.sign(y[A]) != sign):
            return None
    grad = g + H @ (y - w)
    rest = np.ones(len(w), dtype=bool)
    rest[A] = False
    if np.any(np.abs(grad[rest]) > lam):
        return None
    return y


def solve(
    problem, lam: float, w0: np.ndarray | None = None, *, tol: float = 1e-9, max_iter: int = 100
) -> Fit:
    """Minimise mean KL + lam ||w||_1: outer rounds on factored caches (FactoredProblem.solve),
    else proximal Newton directly on the dense log-probs."""
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")
    if isinstance(problem, FactoredProblem):
        return problem.solve(lam, w0, tol=tol, max_iter=max_iter)
    return _proximal_newton(problem, lam, w0, tol=tol, max_iter=max_iter)


def _proximal_newton(
    problem, lam: float, w0: np.ndarray | None = None, *, tol: float = 1e-9, max_iter: int = 100
) -> Fit:
    """Minimise mean KL + lam ||w||_1 by active-set proximal Newton.

    Inner loop: Newton steps on the working set S (support plus the worst violators) with the
    exact float64 Hessian, until S meets the KKT conditions to `tol`. Outer loop: one screening
    pass over all atoms; violators (beyond the problem's screen_tol) join S. Never raises on
    non-convergence: the Fit says so (`solve_path` raises).
    """
    tol = max(tol, problem.screen_tol)  # no finer than the data resolve
    w = np.zeros(problem.K) if w0 is None else np.asarray(w0, dtype=np.float64).copy()
    total, status = 0, "max_iter"
    verified = np.zeros(problem.K, dtype=bool)  # atoms the exact pass confirmed (KKT)
    # the support's own conditions met at least once (a warm start may already be optimal)
    checked = False
    for _ in range(50):
        g = problem.screen(w)
        # an atom at zero within the tolerance of its condition needs no visit (tol >= screen_tol):
        # adding such
        # atoms at a loose tolerance would only cycle them through the working set
        viol = np.where((w != 0) | verified, 0.0, np.maximum(np.abs(g) - lam - tol, 0.0))
        support = np.flatnonzero(w)
        new = np.argsort(-viol)[: max(5, len(support))]
        new = new[viol[new] > 0]
        if len(new) == 0 and (checked or len(support) == 0):
            status = "converged"
            break
        S = np.union1d(support, new)
        inner_ok = False
        for _ in range(max_iter):
            kl, gS, H = problem.derivatives(w, S, hessian=True)
            if _kkt(w[S], gS, lam).max() <= tol:
                inner_ok = True
                break
            F = kl + lam * np.abs(w).sum()
            xS = _cd_quadratic(gS, H + 1e-10 * np.eye(len(S)), w[S], lam)
            d = np.zeros(problem.K)
            d[S] = xS - w[S]
            delta = gS @ d[S] + lam * (np.abs(xS).sum() - np.abs(w[S]).sum())
            t, accepted = 1.0, False
            while t > 1e-10:
                cand = w + t * d
                Fc = problem.kl(cand) + lam * np.abs(cand).sum()
                # Near the optimum the predicted decrease drops below what F resolves in float64;
                # the quadratic model is exact there, so take the full step.
                if Fc <= F + 1e-4 * t * delta or -delta <= 1e-13 * max(1.0, abs(F)):
                    accepted = True
                    break
                t *= 0.5
            total += 1
            if not accepted:
                status = "line_search_failed"
                break
            w = cand
        if not inner_ok:
            break
        checked = True
        verified[:] = False
        verified[S] = True
    kl, gS, _ = problem.derivatives(w, np.flatnonzero(w))
    support = np.flatnonzero(w)
    kkt = float(_kkt(w[support], gS, lam).max()) if len(support) else 0.0
    zero = w == 0  # every atom's conditions, the zero ones to the resolution of the screening pass
    kkt = max(
        kkt,
        float(
            np.maximum(np.abs(problem.screen(w)[zero]) - lam - problem.screen_tol, 0).max(initial=0)
        ),
    )
    converged = status == "converged" and kkt <= tol
    return Fit(
        lam=lam,
        weights=w,
        objective=kl + lam * np.abs(w).sum(),
        kl=kl,
        iterations=total,
        kkt=kkt,
        converged=converged,
        status="converged" if converged else status,
    )


def lambda_path(problem: PoEProblem, n: int = 20, ratio: float = 1e-3) -> np.ndarray:
    """n log-spaced values from lambda_max (w = 0) down to ratio * lambda_max."""
    if n < 1 or not 0 < ratio < 1:
        raise ValueError(f"lambda path needs n >= 1 and 0 < ratio < 1 (got n={n}, ratio={ratio})")
    return problem.lambda_max() * np.logspace(0, np.log10(ratio), n)


def solve_path(
    problem: PoEProblem, lambdas: np.ndarray, *, tol: float = 1e-9, max_iter: int = 100
) -> list[Fit]:
    """Warm-started fits along decreasing lambdas (each starts from the previous weights).

    Raises NotConverged (with lambda, iterations and KKT violation) if any fit misses its
    tolerance.
    """
    lambdas = np.asarray(lambdas, dtype=np.float64)
    if (lambdas < 0).any():
        raise ValueError(f"lambda must be >= 0, got {lambdas.min()}")
    w, fits = np.zeros(problem.K), []
    for lam in lambdas:
        fit = solve(problem, lam, w, tol=tol, max_iter=max_iter)
        if not fit.converged:
            raise NotConverged(
                f"PoE fit did not converge at lambda={lam:.3g}: status {fit.status}, "
                f"{fit.iterations} iterations, KKT violation {fit.kkt:.2e} (tol {tol:.0e})"
            )
        w = fit.weights
        fits.append(fit)
        log.info(
            "lambda %.3g: kl %.5f, nnz %d, %d iterations, %d rounds",
            lam,
            fit.kl,
            fit.nnz,
            fit.iterations,
            fit.rounds,
        )
    return fits


def solve_cvxpy(
    problem: PoEProblem, lam: float, solver: str = "CLARABEL", **kwargs
) -> tuple[np.ndarray, float]:
    """Reference solution with cvxpy's exponential-cone log_sum_exp (small problems only)."""
    import cvxpy as cp

    L = problem.L.double().numpy()
    w = cp.Variable(problem.K)
    Z = cp.hstack([L[:, n].T @ w for n in range(problem.N)])
    Z = cp.reshape(Z, (problem.N, problem.V), order="C")
    obj = (
        problem.const - problem.ep_mean.numpy() @ w + cp.sum(cp.log_sum_exp(Z, axis=1)) / problem.N
    )
    prob = cp.Problem(cp.Minimize(obj + lam * cp.norm1(w)))
    prob.solve(solver=solver, **kwargs)
    if w.value is None:
        raise NotConverged(f"cvxpy ({solver}) returned no solution: status {prob.status}")
    return np.asarray(w.value), float(prob.value)

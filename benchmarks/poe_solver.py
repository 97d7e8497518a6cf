"""PoE solver benchmark: the fast solver against cvxpy where cvxpy finishes, alone at full size,
and the factored solver against the dense one on a run's real caches.

    python benchmarks/poe_solver.py [--threads 1] [--K 100 --N 64 --V 49152] [--skip-cvxpy]
    python benchmarks/poe_solver.py --real results/SmolLM2-135M-Instruct [--behavior spanish]

--real: the behaviour's dictionary caches and target, fitted along one 20-lambda path three
times, each in its own process (peak memory is the process's): "dense", the solver on
full-vocabulary log-probs as the caches held them before (materialised from the states in float32);
"factored" (the states and the output head); and "exact", the dense solver on float64 log-probs,
whose tolerance is float64's: the optimum both are measured against. Every weight path is then
scored by one float64 full-vocabulary evaluator: weights, objective and held-out explained-KL, with
the time and peak memory ratios of dense to factored.

Log-probs are realistic synthetic ones: per context a Zipf-shaped base distribution over V
tokens, each atom the base plus its own sparse token boosts (a prompt shifts a few hundred
tokens) plus noise; the target is a sparse signed product of three atoms plus noise. Prints a
table of times and objective gaps, ratios, and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
from pathlib import Path

import numpy as np
import torch

from softlens.poe import FactoredProblem, PoEProblem, lambda_path, solve_cvxpy, solve_path


def synthetic(N: int, K: int, V: int, seed: int = 0, dtype=torch.float32) -> PoEProblem:
    g = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, V + 1, dtype=torch.float32)
    base = -1.1 * ranks.log() + 0.5 * torch.randn(N, V, generator=g)  # (N, V)
    boost = torch.zeros(K, V)
    for k in range(K):
        idx = torch.randint(0, V, (min(300, V // 4),), generator=g)
        boost[k, idx] = 2.0 * torch.rand(len(idx), generator=g) + 1.0
    logits = base[None] + boost[:, None, :] + 0.3 * torch.randn(K, N, V, generator=g)
    L = torch.log_softmax(logits, -1)  # (K, N, V)
    w_true = torch.zeros(K)
    w_true[:3] = torch.tensor([0.9, -0.3, 0.4])
    target = torch.log_softmax(
        torch.einsum("k,knv->nv", w_true, L) + 0.2 * torch.randn(N, V, generator=g), -1
    )
    return PoEProblem(L.to(dtype), target.to(dtype))


def fast_path(p: PoEProblem, n: int):
    t = time.perf_counter()
    fits = solve_path(p, lambda_path(p, n, 1e-3))
    return fits, time.perf_counter() - t


def real_caches(run_dir: str, behavior: str, leave_out: bool):
    """(head, keys, atoms' states and lse, target's) of a run's dictionary caches for one
    behaviour."""
    from softlens.head import read_head
    from softlens.io import read_aligned

    d = Path(run_dir) / "logprobs" / behavior
    atoms = sorted(p.stem for p in d.glob("atom-*.parquet"))
    if (
        leave_out
    ):  # the behaviour's own instruction is the `target` source, never an atom-* file here
        atoms = [a for a in atoms if a != f"atom-{behavior}"]
    keys, X, C = read_aligned([d / f"{a}.parquet" for a in atoms] + [d / "target.parquet"])
    return read_head(Path(run_dir) / "head.safetensors"), keys, atoms, X, C


def _solve_real(kind, run_dir, behavior, leave_out, threads, lams, out):
    torch.set_num_threads(threads)
    head, keys, atoms, X, C = real_caches(run_dir, behavior, leave_out)
    train, K = (keys["split"] == "train").to_numpy(), len(atoms)
    t = time.perf_counter()
    if kind in ("dense", "exact"):
        dtype = torch.float32 if kind == "dense" else torch.float64
        L = torch.stack(
            [
                head.log_probs(torch.from_numpy(X[i, train]), torch.from_numpy(C[i, train])).to(
                    dtype
                )
                for i in range(K)
            ]
        )
        target = head.log_probs(torch.from_numpy(X[K, train]), torch.from_numpy(C[K, train])).to(
            dtype
        )
        p = PoEProblem(L, target, atoms)
    else:
        p = FactoredProblem(head, X[:K, train], C[:K, train], X[K, train], C[K, train], atoms)
    lams = lambda_path(p, 20, 1e-3) if lams is None else lams
    fits = solve_path(p, lams)
    out.put(
        {
            "kind": kind,
            "seconds": time.perf_counter() - t,
            "lams": lams,
            "weights": np.array([f.weights for f in fits]),
            "rounds": [f.rounds for f in fits],
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def compare_real(run_dir: str, behavior: str, threads: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    results = {}
    for kind in ("dense", "factored", "exact"):
        for leave_out in (False, True):
            lams = (
                results["dense", leave_out]["lams"] if kind != "dense" else None
            )  # one path for all three
            q = ctx.Queue()
            proc = ctx.Process(
                target=_solve_real, args=(kind, run_dir, behavior, leave_out, threads, lams, q)
            )
            proc.start()
            r = q.get()
            proc.join()
            results[kind, leave_out] = r
            print(
                f"  {kind:>8} {'leave-one-out' if leave_out else 'full':>13}: {r['seconds']:7.1f} "
                "s, "
                f"peak {r['peak_mb']:7.0f} MB"
            )
    # one exact evaluator for both weight paths: float64 log-probs at full vocabulary, fitting and
    # held-out rows
    rows = []
    for leave_out in (False, True):
        head, keys, atoms, X, C = real_caches(run_dir, behavior, leave_out)
        train, K = (keys["split"] == "train").to_numpy(), len(atoms)
        dense, fact = results["dense", leave_out], results["factored", leave_out]
        exact = results["exact", leave_out]
        evals = {}
        for split, r in (("train", train), ("test", ~train)):
            L = torch.stack(
                [
                    head.log_probs(torch.from_numpy(X[i, r]), torch.from_numpy(C[i, r]))
                    for i in range(K)
                ]
            )
            target = head.log_probs(torch.from_numpy(X[K, r]), torch.from_numpy(C[K, r]))
            evals[split] = PoEProblem(L, target, atoms)
        base = evals["test"].kl(
            np.zeros(K)
        )  # any fixed reference: differences of explained-KL scale with it
        for lam, wd, wf, we in zip(
            dense["lams"], dense["weights"], fact["weights"], exact["weights"]
        ):
            od, of = (evals["train"].kl(w) + lam * np.abs(w).sum() for w in (wd, wf))
            ed, ef = (1 - evals["test"].kl(w) / base for w in (wd, wf))
            rows.append(
                {
                    "leave_one_out": leave_out,
                    "lambda": lam,
                    "max_abs_dw": float(np.abs(wd - wf).max()),
                    "dense_to_exact_dw": float(np.abs(wd - we).max()),
                    "factored_to_exact_dw": float(np.abs(wf - we).max()),
                    "objective_rel_diff": (of - od) / od,
                    "explained_kl_test_diff": ef - ed,
                }
            )
    diffs = {
        k: max(abs(r[k]) for r in rows)
        for k in (
            "max_abs_dw",
            "dense_to_exact_dw",
            "factored_to_exact_dw",
            "objective_rel_diff",
            "explained_kl_test_diff",
        )
    }
    t_d = sum(results["dense", lo]["seconds"] for lo in (False, True))
    t_f = sum(results["factored", lo]["seconds"] for lo in (False, True))
    m_d = max(results["dense", lo]["peak_mb"] for lo in (False, True))
    m_f = max(results["factored", lo]["peak_mb"] for lo in (False, True))
    print(
        "  agreement over both 20-lambda paths: max |w_dense - w_factored| "
        f"{diffs['max_abs_dw']:.1e}; "
        f"objective (factored - dense)/dense at most {diffs['objective_rel_diff']:.1e} in size "
        "(negative: factored lower); held-out explained-KL differs by at most "
        f"{diffs['explained_kl_test_diff']:.1e}"
    )
    print(
        "  against the exact optimum (the dense solver on float64 log-probs): max |w - w_exact| "
        f"dense {diffs['dense_to_exact_dw']:.1e}, factored {diffs['factored_to_exact_dw']:.1e}"
    )
    worst = min(rows, key=lambda r: -r["max_abs_dw"])
    print(
        f"  largest weight difference at lambda {worst['lambda']:.3g} "
        f"(leave_one_out={worst['leave_one_out']}); "
        f"its objective difference {worst['objective_rel_diff']:.1e} relative"
    )
    print(
        f"  time dense / factored: {t_d:.1f} s / {t_f:.1f} s = {t_d / t_f:.2f}x; "
        f"peak memory {m_d:.0f} MB / {m_f:.0f} MB = {m_d / m_f:.2f}x"
    )
    return {
        "behavior": behavior,
        "threads": threads,
        **diffs,
        "dense_s": t_d,
        "factored_s": t_f,
        "speedup": t_d / t_f,
        "dense_peak_mb": m_d,
        "factored_peak_mb": m_f,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--real", metavar="RUN_DIR", help="results/<model> of a run: compare on its real caches"
    )
    ap.add_argument("--behavior", default="spanish")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--K", type=int, default=100)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--V", type=int, default=49152)
    ap.add_argument("--path", type=int, default=20)
    ap.add_argument("--skip-cvxpy", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    result = {"threads": a.threads}
    if a.real:
        print(
            f"real caches of {a.behavior!r} in {a.real}, {a.threads} thread(s), one process per "
            "fit:"
        )
        print(json.dumps(compare_real(a.real, a.behavior, a.threads)))
        return

    if not a.skip_cvxpy:
        print("small problems (float64), objective at 5 lambdas of a 20-lambda path:")
        print(
            f"{'K':>4} {'N':>4} {'V':>5} {'solver':>9} {'time_s':>8} {'max_rel_gap':>12}  (gap = "
            "(ours - cvxpy)/cvxpy; < 0: ours lower)"
        )
        rows = []
        for K, N, V in [(5, 8, 64), (10, 8, 256), (20, 16, 512)]:
            p = synthetic(N, K, V, dtype=torch.float64)
            fits, t_fast = fast_path(p, 20)
            picked = fits[::5]
            print(f"{K:>4} {N:>4} {V:>5} {'softlens':>9} {t_fast:>8.3f} {'':>12}")
            for solver, kw in [("CLARABEL", {}), ("SCS", {"eps": 1e-9, "max_iters": 100000})]:
                t, gaps = time.perf_counter(), []
                for f in picked:
                    w, _ = solve_cvxpy(p, f.lam, solver, **kw)
                    ref = p.kl(w) + f.lam * np.abs(w).sum()
                    gaps.append((f.objective - ref) / abs(ref))
                t_cvx = (time.perf_counter() - t) / len(picked) * len(fits)  # per whole path
                print(f"{K:>4} {N:>4} {V:>5} {solver:>9} {t_cvx:>8.3f} {max(gaps, key=abs):>12.2e}")
                rows.append(
                    {
                        "K": K,
                        "N": N,
                        "V": V,
                        "solver": solver,
                        "cvxpy_path_s": t_cvx,
                        "softlens_path_s": t_fast,
                        "speedup": t_cvx / t_fast,
                        "max_rel_gap": max(gaps, key=abs),
                    }
                )
        result["small"] = rows
        print(
            "speed-ups (cvxpy path time / softlens path time): "
            + ", ".join(f"K={r['K']} {r['solver']} {r['speedup']:.0f}x" for r in rows)
        )

    p = synthetic(a.N, a.K, a.V)
    fits, t = fast_path(p, a.path)
    print(
        f"\nfull size K={a.K}, N={a.N}, V={a.V} (float32 storage, float64 sums), {a.threads} "
        "thread(s):"
    )
    print(
        f"  {a.path}-lambda warm-started path: {t:.2f} s ({t / a.path:.2f} s per lambda), "
        f"{sum(f.iterations for f in fits)} Newton iterations, nnz at the end {fits[-1].nnz}, "
        f"max KKT violation {max(f.kkt for f in fits):.1e}"
    )
    print(f"  goal: under 10 s -> ratio {t / 10:.2f} of the budget")
    result.update(
        {
            "K": a.K,
            "N": a.N,
            "V": a.V,
            "path_len": a.path,
            "path_s": t,
            "iterations": sum(f.iterations for f in fits),
            "goal_s": 10.0,
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

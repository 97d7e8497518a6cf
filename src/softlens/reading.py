"""Reading one soft prompt (the workflow's jobs): its projection to tokens and the repair of that
projection, its geometry and robustness, and what the model says it means.

Every stage is scored the same way as the soft prompt itself (evaluation.frame_scores on the test
messages, averaged over the prompt's training frames): held-out KL closure, early-weighted CE and
exact-match@k of greedy continuations.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from .config import settings as config_settings
from .config import with_defaults
from .geometry import Vocabulary, describe_vectors, rotate_toward, shrink
from .job import ModelJob, SoftPrompt
from .repair import (
    SearchObjective,
    SearchSettings,
    banned_token_ids,
    coordinate_search,
    random_start,
    roundtrips,
)
from .scoring import frame_scores
from .slot import HardPrompt, TokenPrompt
from .sources import soft_content
from .training_settings import settings_for

log = logging.getLogger(__name__)

STAGES = ("soft", "projected_cosine", "projected_l2", "repaired", "pure_hotflip")


class Reader:
    """One soft prompt on its job: its vectors and training settings, the teacher's targets on
    the test messages, and the vocabulary."""

    def __init__(self, job: ModelJob, prompt: SoftPrompt, training: dict):
        self.job, self.prompt = job, prompt
        self.lm, self.slot, self.bs = job.lm, job.slot, job.batch_size
        self.s = settings_for(training, prompt.variant)
        self.vectors = job.soft_prompt(prompt)
        self.target, self.base = job.targets("test", self.s.positions)
        self.vocab = Vocabulary(self.lm)

    def selection(self, messages: int, seed: int, exclude=()) -> tuple:
        """(teacher, unprompted) targets on `messages` train messages (ModelJob.selection)."""
        return self.job.selection(messages, self.s.positions, seed=seed, exclude=exclude)

    def keys(self) -> dict:
        return self.prompt.labels()

    def score(self, make_content, frames=None, target=None, base=None) -> dict:
        """Mean held-out scores over `frames` (default: the prompt's training frames) of the
        content make_content(frame) gives (on the test messages, or on the contexts of `target`
        and `base`).
        """
        target, base = (self.target, self.base) if target is None else (target, base)
        rows = [
            frame_scores(
                self.lm, self.slot, make_content(f), target, base, self.s.positions, self.bs, self.s
            )
            for f in (frames or self.s.frames)
        ]
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}

    def soft(self, vectors):
        return lambda frame: soft_content(vectors.to(self.lm.dtype), frame)

    @staticmethod
    def tokens(ids):
        return lambda frame: TokenPrompt(tuple(int(i) for i in ids), frame)


# --- projection and repair
# ------------------------------------------------------------------------------


def choose_step(history: pd.DataFrame, closure_on_selection) -> tuple[list[int], pd.DataFrame]:
    """The search step whose prompt closes most on the selection messages
    (`closure_on_selection(ids)`
    -> scores with kl_closure_test, measured there), earliest on ties; each distinct prompt scored
    once.
    Returns its ids and the history with `kl_closure_select` and `selected` columns."""
    scored: dict[tuple, float] = {}
    for ids in history["ids"]:
        key = tuple(int(i) for i in ids)
        if key not in scored:
            scored[key] = closure_on_selection(list(key))["kl_closure_test"]
    history = history.assign(
        kl_closure_select=[scored[tuple(int(i) for i in ids)] for ids in history["ids"]]
    )
    best = int(history["kl_closure_select"].to_numpy().argmax())
    history["selected"] = history.index == history.index[best]
    return [int(i) for i in history["ids"].iloc[best]], history


def run_reading(
    *, job: ModelJob, prompt: SoftPrompt, training: dict, reading: dict, out, search_out
) -> pd.DataFrame:
    """Soft -> nearest-token projections (cosine, L2) -> repaired projection -> pure HotFlip,
    each scored on the test messages; writes the stage table and the searches' per-step records."""
    from .io import atomic_path, write_table

    r, spec, seed = Reader(job, prompt, training), job.behavior, prompt.seed
    search = with_defaults(reading, "reading")["search"]
    banned_texts = list(search.pop("banned"))
    if search.pop("ban_instruction") and spec.get("instruction"):
        banned_texts.append(spec["instruction"])
    settings = config_settings(SearchSettings, "reading.search", search)
    tok = r.lm.tokenizer
    banned = banned_token_ids(tok, banned_texts)
    allowed_mask = torch.tensor(
        [int(i) not in banned for i in r.vocab.ids.tolist()], device=r.vocab.ids.device
    )
    allowed = r.vocab.ids[allowed_mask]

    # The search's loss: the teacher on `messages` training messages drawn with the prompt's seed.
    train = job.teacher[
        (job.teacher["split"] == "train") & (job.teacher["completion_ids"].map(len) > 0)
    ]
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[
        : settings.messages
    ].tolist()
    searched = train["message_id"].to_numpy()[pick]
    targets, _ = job.targets("train", settings.positions, rows=train.iloc[pick])
    objective = SearchObjective(r.lm, r.slot, targets, r.s.frames, r.vocab.all, settings)

    cos_ids, _ = r.vocab.nearest(r.vectors, "cosine")
    l2_ids, _ = r.vocab.nearest(r.vectors, "l2")
    start, _ = r.vocab.nearest(
        r.vectors, "cosine", allowed=allowed_mask
    )  # the projection, banned tokens replaced
    random_init = random_start(
        allowed,
        r.vectors.shape[0],
        torch.Generator().manual_seed(seed),
        tok,
        settings.require_roundtrip,
    )
    _, rep_hist = coordinate_search(
        objective, start.tolist(), allowed, settings, seed, tok, "repair"
    )
    _, pure_hist = coordinate_search(
        objective, random_init, allowed, settings, seed, tok, "pure hotflip"
    )
    # Each search's step is chosen on other train messages (the search's own loss only falls), then
    # tested once.
    select, select_base = r.selection(settings.select_messages, seed, exclude=searched)
    repaired, rep_hist = choose_step(
        rep_hist, lambda ids: r.score(r.tokens(ids), target=select, base=select_base)
    )
    pure, pure_hist = choose_step(
        pure_hist, lambda ids: r.score(r.tokens(ids), target=select, base=select_base)
    )

    rows = [{"stage": "soft", "text": "", "ids": [], **r.score(r.soft(r.vectors))}]
    for stage, ids in [
        ("projected_cosine", cos_ids),
        ("projected_l2", l2_ids),
        ("repaired", repaired),
        ("pure_hotflip", pure),
    ]:
        ids = [int(i) for i in (ids.tolist() if torch.is_tensor(ids) else ids)]
        rows.append(
            {
                "stage": stage,
                "text": tok.decode(ids),
                "ids": ids,
                "roundtrip": roundtrips(tok, ids),
                "banned_tokens": sum(i in banned for i in ids),
                **r.score(r.tokens(ids)),
            }
        )
    table = pd.DataFrame(rows)
    for k, v in reversed(list(r.keys().items())):
        table.insert(0, k, v)
    table["frames"] = " | ".join(r.s.frames)
    write_table(
        table,
        out,
        metadata={
            "prompt": str(prompt.path),
            "search": settings.__dict__,
            "banned": sorted(banned),
        },
    )
    hist = pd.concat([rep_hist.assign(search="repaired"), pure_hist.assign(search="pure_hotflip")])
    hist = hist.assign(**r.keys())[
        [
            "behavior",
            "variant",
            "seed",
            "search",
            "step",
            "loss",
            "kl_closure_select",
            "selected",
            "text",
            "tried",
            "seconds",
        ]
    ]
    with atomic_path(search_out) as tmp:
        hist.to_csv(tmp, index=False)
    for row in rows:
        log.info(
            "%s/%s seed %d %-16s closure %.3f  %r",
            prompt.behavior,
            prompt.variant,
            seed,
            row["stage"],
            row["kl_closure_test"],
            row["text"],
        )
    return table


# --- geometry and robustness
# -------------------------------------------------------------------------------


def run_geometry(
    *,
    job: ModelJob,
    prompt: SoftPrompt,
    training: dict,
    reading: dict,
    geometry_out,
    robustness_out,
) -> None:
    """Norms and nearest-token cosines of the soft vectors; KL closure when their magnitude is
    divided by each factor and when they are rotated toward their nearest token by each angle;
    the same for the behaviour's instruction tokens (the natural-token control) where it has one."""
    from .io import write_table

    r, spec = Reader(job, prompt, training), job.behavior
    rob = with_defaults(reading, "reading")["robustness"]
    factors, angles = rob["magnitudes"], rob["angles"]
    geometry = describe_vectors(r.vocab, r.vectors, r.lm.tokenizer).assign(kind="soft", **r.keys())
    write_table(geometry, geometry_out)

    targets = {
        "soft": (r.vectors, r.s.frames[:1], None)
    }  # a contextualised prompt in its first frame
    if spec.get("instruction"):  # the instruction's own tokens, in the teacher's slot
        ids = torch.tensor(r.slot.tokenize(spec["instruction"]), device=r.vocab.all.device)
        targets["natural"] = (r.vocab.all[ids], [None], ids)
    rows = []
    for target, (vectors, frames, own) in targets.items():
        nearest, _ = r.vocab.nearest(vectors, "cosine", exclude=own)
        toward = r.vocab.all[nearest]
        scored = {}  # magnitude 1 and rotation 0 are both the unperturbed prompt: scored once
        for kind, amounts, perturb, identity in [
            ("magnitude", factors, lambda a, v=vectors: shrink(v, a), 1),
            ("rotation", angles, lambda a, v=vectors, t=toward: rotate_toward(v, t, a), 0),
        ]:
            for a in amounts:
                key = "unperturbed" if a == identity else (kind, a)
                if key not in scored:
                    scored[key] = r.score(r.soft(perturb(a)), frames)
                scores = scored[key]
                rows.append(
                    {
                        **r.keys(),
                        "target": target,
                        "perturbation": kind,
                        "amount": float(a),
                        "frame": frames[0] or "___",
                        **scores,
                    }
                )
    write_table(pd.DataFrame(rows), robustness_out)


def run_token_geometry(*, job: ModelJob, reading: dict, out) -> pd.DataFrame:
    """Norm and nearest-neighbour cosine (another token) of a seeded sample of natural tokens."""
    from .io import write_table

    lm = job.lm
    vocab = Vocabulary(lm)
    n = with_defaults(reading, "reading")["robustness"]["natural_tokens"]
    ids = vocab.sample(min(n, len(vocab.ids)), seed=0).to(vocab.all.device)
    table = describe_vectors(vocab, vocab.all[ids], lm.tokenizer, exclude=ids)
    table = table.assign(
        kind="natural", token=[lm.tokenizer.decode([int(i)]) for i in ids.tolist()]
    )
    write_table(table, out)
    return table


# --- self-verbalisation
# ----------------------------------------------------------------------------------


def run_verbalisation(
    *, job: ModelJob, prompt: SoftPrompt, training: dict, reading: dict, out
) -> pd.DataFrame:
    """Ask the model what the soft prompt means (each template, `samples` sampled answers), then
    score every distinct answer as a hard prompt in the bare slot on `select_messages` train
    messages, which choose the best (`is_best`); only that one is scored on the test messages
    (test scores nothing it did not choose, and scoring every answer there was most of the job)."""
    from .io import write_table
    from .teacher import generate
    from .verbalise import candidate_requests, clean_candidate

    v = with_defaults(reading, "reading")["verbalisation"]
    templates = v["templates"]
    requests = candidate_requests(templates, v["samples"])
    r, seed = Reader(job, prompt, training), prompt.seed
    frame = r.s.frames[0]  # a contextualised prompt is asked about inside its frame
    gen = job.generation(
        max_new_tokens=v["max_new_tokens"],
        do_sample=True,
        temperature=v["temperature"],
        top_p=v["top_p"],
        seed=seed,
    )
    answers = generate(
        r.lm, r.slot, r.soft(r.vectors)(frame), [m for _, m in requests], gen, desc="verbalise"
    )
    # the best candidate is chosen on train messages (a seeded sample), then scored once on test
    select, select_base = r.selection(v["select_messages"], seed)
    rows, on_train = [], {}
    for (t, _), ids in zip(requests, answers):
        answer = r.lm.tokenizer.decode(ids, skip_special_tokens=True)
        candidate = clean_candidate(answer)
        if candidate and candidate not in on_train:
            on_train[candidate] = frame_scores(
                r.lm, r.slot, HardPrompt(candidate), select, select_base, r.s.positions, r.bs, r.s
            )["kl_closure_test"]
        rows.append(
            {
                **r.keys(),
                "frame": frame,
                "template": templates[t],
                "answer": answer,
                "candidate": candidate,
                "kl_closure_train": on_train.get(candidate, float("nan")),
            }
        )
    table = pd.DataFrame(rows)
    ok = table["kl_closure_train"].notna()
    table["is_best"] = False
    test = {"kl_closure_test": float("nan")}  # columns of a run with no usable answer
    if ok.any():
        best_row = table.loc[ok, "kl_closure_train"].idxmax()
        table.loc[best_row, "is_best"] = True
        test = r.score(lambda f, c=table.at[best_row, "candidate"]: HardPrompt(c), [None])
    for k, value in test.items():  # the chosen row's test scores; the others were not tested
        table[k] = np.where(table["is_best"], value, np.nan)
    write_table(table, out)
    best = table[table["is_best"]]
    log.info(
        "%s/%s seed %d: %d distinct candidates; best %r closure %.3f",
        prompt.behavior,
        prompt.variant,
        seed,
        len(on_train),
        best["candidate"].iloc[0] if len(best) else None,
        best["kl_closure_test"].max() if len(best) else float("nan"),
    )
    return table

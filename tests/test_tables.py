"""Result tables built from job outputs."""

import numpy as np
import pandas as pd
import pytest

from softlens.tables import lora_rank, relative_closure


def evaluation(behavior: str, kl_by_frame: list[np.ndarray], base: np.ndarray) -> pd.DataFrame:
    """Rows as evaluation writes them: one per frame, each with its per-message KLs."""
    return pd.DataFrame(
        [
            {
                "behavior": behavior,
                "variant": "contextualised",
                "seed": 0,
                "frame": f"f{i}",
                "trained_frame": True,
                "kl_closure_test": 1 - kl.sum() / base.sum(),
                "kl_by_message": kl,
                "kl_base_by_message": base,
            }
            for i, kl in enumerate(kl_by_frame)
        ]
    )


def test_relative_closure_pairs_the_two_prompts_messages_and_names_an_old_evaluation():
    rng = np.random.default_rng(0)
    base = rng.uniform(1, 2, 40)
    frames = pd.concat(
        [
            evaluation("contrastive", [base * 0.7, base * 0.5], base),  # closures 0.3, 0.5
            evaluation("steered", [base * 0.2], base),  # closure 0.8
        ],
        ignore_index=True,
    )
    closure = frames.groupby(["behavior", "variant", "seed"])["kl_closure_test"].mean()
    keys = {
        "prompt": ("contrastive", "contextualised", 0),
        "reference": ("steered", "contextualised", 0),
    }
    row = relative_closure(frames, **keys, closure=closure)
    assert row["relative_closure"] == pytest.approx(0.4 / 0.8)
    # every message closes by the same share, so every resample gives the same ratio
    assert row["relative_ci_low"] == pytest.approx(0.5) == row["relative_ci_high"]
    with pytest.raises(ValueError, match="steered/contextualised seed 0 has no per-message KLs"):
        old = frames["behavior"] == "steered"
        relative_closure(
            frames.assign(kl_by_message=frames["kl_by_message"].where(~old, None)),
            **keys,
            closure=closure,
        )


def test_a_lora_teachers_rank_is_the_distillations_or_the_given_adapters(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    assert lora_rank({"lora": str(tmp_path)}) == 8
    assert lora_rank({"distill": {"from": "spanish", "rank": 4}}) == 4
    assert lora_rank({"steering": {"layer": 6}}) is None


def test_the_sae_manifold_table_compares_the_variants_and_keeps_its_columns_with_one():
    """sae_manifold pairs prepend and contextualised prompts seed by seed; a run of one variant
    (the default trains prepend only) has nothing to pair: no rows, the same columns."""
    from softlens.tables import MANIFOLD_COLUMNS, sae_manifold

    rows = [
        {
            "behavior": "spanish",
            "variant": v,
            "seed": seed,
            "layer": layer,
            "recon_error": err + 0.1 * layer,
            "baseline_recon_error": 1.0,
            "instruction_recon_error": 0.2,
            "jaccard_with_instruction": 0.3,
            "baseline_jaccard": 0.05,
        }
        for layer in (1, 2, 3)
        for seed in (0, 1)
        for v, err in (("prepend", 0.6), ("contextualised", 0.4 if seed == 0 else 0.7))
    ]
    both = sae_manifold(pd.DataFrame(rows))
    assert len(both) == 3 and set(both["seeds"]) == {2}
    assert set(both["closer_to_manifold"]) == {"mixed"}  # closer in seed 0, not in seed 1
    assert both["middle_layer"].tolist() == [False, True, False]
    one = sae_manifold(pd.DataFrame([r for r in rows if r["variant"] == "prepend"]))
    assert one.empty and list(one.columns) == MANIFOLD_COLUMNS + ["middle_layer"]

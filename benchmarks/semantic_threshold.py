"""Where to put the `semantic` exclusion level's MiniLM threshold (config:
exclusion.semantic_threshold).

Prints the cosine of each hidden instruction to hand-written paraphrases of it (what the level
must remove) and to its siblings in config/dictionary.tsv (other instructions, which it should
keep), and the range of each. Where the ranges overlap no threshold separates them; a paraphrase
below the chosen threshold that names the answer ("Use the Spanish language.") is the `reveal`
level's business.

    python benchmarks/semantic_threshold.py
"""

import pandas as pd

from softlens.semantic import Embedder, similarity

PARAPHRASES = {
    "Respond in Spanish.": [
        "Reply in Spanish.",
        "Answer in Spanish, please.",
        "Write your answer in Spanish.",
        "Use the Spanish language.",
        "Responde en español.",
        "Habla en español.",
    ],
    "Be concise.": [
        "Keep it short.",
        "Be brief.",
        "Answer briefly.",
        "Use few words.",
        "Give a short answer.",
    ],
    "Explain it like I'm five years old.": [
        "Explain it to a child.",
        "Use simple words a kid understands.",
        "Explain simply.",
        "ELI5.",
    ],
}


def main() -> None:
    embed = Embedder()
    dictionary = pd.read_csv("config/dictionary.tsv", sep="\t")
    rows = []
    for hidden, paraphrases in PARAPHRASES.items():
        siblings = [p for p in dictionary["prompt"] if p != hidden]
        for kind, texts in (("paraphrase", paraphrases), ("sibling", siblings)):
            rows += [
                {"hidden": hidden, "kind": kind, "text": t, "cosine": float(c)}
                for t, c in zip(texts, similarity(embed, texts, hidden))
            ]
    table = pd.DataFrame(rows)
    for hidden, part in table.groupby("hidden", sort=False):
        print(f"\n{hidden}")
        top = part.sort_values("cosine", ascending=False)
        print(top[top["kind"] == "paraphrase"].to_string(index=False, columns=["text", "cosine"]))
        print("siblings, highest:")
        print(
            top[top["kind"] == "sibling"].head(4).to_string(index=False, columns=["text", "cosine"])
        )
    summary = table.groupby(["hidden", "kind"])["cosine"].agg(["min", "max"]).unstack()
    print("\n", summary.round(3).to_string())


if __name__ == "__main__":
    main()

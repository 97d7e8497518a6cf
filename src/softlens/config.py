"""Run configuration: schema validation, the checks a schema cannot express, and the tables it
names.

The workflow calls :func:`validate_config` before any rule is defined; the library functions take
the validated plain dicts. Every error names the offending key, file or value.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import yaml

EMBEDDED = "embedded"
EMBEDDED_TAG = "SmolLM2-135M-Instruct"
EMBEDDED_DEPTH = 30  # its decoder blocks (known before the model rule has run)
UNPROMPTED = "unprompted"  # reserved pseudo-behaviour: the model with an empty slot
TARGET, UNPROMPTED_SOURCE = "target", "unprompted"  # caches: a behaviour's teacher, the empty slot
FRAME_PLACEHOLDER = "___"
# A trained soft prompt's cache and fit are keyed "soft-{variant}-seed{seed}"; its control (the same
# norms, random directions: softlens.sources.norm_matched_random) "control-{variant}-seed{seed}".
PROMPT_KINDS = ("soft", "control")
TEACHER_KINDS = ("instruction", "steering", "peft", "lora", "distill", "contrastive")
_PROMPT_KEY = re.compile(r"^(?P<kind>soft|control)-(?P<variant>[A-Za-z]+)-seed(?P<seed>\d+)$")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key, file or value."""


def sort_keys(value):
    """The same config with every mapping's keys sorted (lists keep their order), so rules'
    params do not change when a --configfile overlay or an edit only reorders keys."""
    if isinstance(value, dict):
        return {k: sort_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sort_keys(v) for v in value]
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of a key written twice in one mapping, silently: this loader refuses."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"key {key!r} is written twice in one mapping (lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}): YAML would keep the last one silently"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def check_config_files(paths) -> None:
    """Refuse a config file (the Snakefile's and each --configfile) in which a key is written
    twice in one mapping, naming the file, the key and both lines."""
    for path in paths:
        try:
            yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


# the config's schema: the one home of every default
SCHEMA = Path(__file__).with_name("schema.yaml")


@functools.lru_cache(maxsize=4)
def _schema(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())


def schema_node(section: str, schema: str | Path = SCHEMA) -> dict:
    """The schema of a dotted config section ("reading.robustness")."""
    node = _schema(str(schema))
    for key in filter(None, section.split(".")):
        node = node["properties"][key]
    return node


def defaults(section: str) -> dict:
    """The schema's defaults of a dotted config section, nested blocks filled too."""

    def fill(node: dict):
        if node.get("type") == "object" and "properties" in node:
            base = dict(node.get("default") or {})
            return {
                k: (base[k] if k in base else fill(sub))
                for k, sub in node["properties"].items()
                if k in base or "default" in sub or sub.get("type") == "object"
            }
        return node.get("default")

    return copy.deepcopy(fill(schema_node(section)))


def with_defaults(block: dict | None, section: str) -> dict:
    """`block` (a config section, possibly partial: a library caller's) over the schema's
    defaults."""
    merged = defaults(section)
    for k, v in (block or {}).items():
        merged[k] = (
            with_defaults(v, f"{section}.{k}")
            if isinstance(v, dict) and isinstance(merged.get(k), dict)
            else v
        )
    return merged


def settings(cls, section: str, block: dict | None = None, **job):
    """The settings dataclass `cls` of a config section: `block` over the schema's defaults (its
    keys that are fields of `cls`; lists as tuples), and the fields a job sets (`job`). The one way
    every method's settings are built."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {k: v for k, v in with_defaults(block, section).items() if k in fields}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**{**values, **job})


def validate_config(config: dict, schema: str | Path = SCHEMA) -> dict:
    """Validate `config` in place against the JSON schema (filling defaults), then its semantics."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, schema=str(schema), set_default=True)
    except WorkflowError as e:
        raise ConfigError(str(e)) from None
    with open(schema) as f:
        _as_integers(config, yaml.safe_load(f))
    _check_behaviors(config["behaviors"])
    _check_noise(config)
    _check_training(config)
    _check_reading(config)
    _check_discovery(config)
    _check_sae(config)
    # a local directory must exist and be named apart; a hub id must look like one
    model_tag(config["model"])
    _check_layers(config, model_depth(config["model"], config["model_settings"]["revision"]))
    load_messages(config["messages"])
    _check_atom_names(config["behaviors"], load_dictionary(config["dictionary"]))
    return config


def _check_atom_names(behaviors: list[dict], dictionary: pd.DataFrame) -> None:
    """A behaviour whose instruction the dictionary lacks joins its fits as an atom named after
    it: that name may not be taken (up to case) by a different hand-written atom."""
    atoms = {a.casefold(): (a, p) for a, p in zip(dictionary["atom"], dictionary["prompt"])}
    prompts = {p.casefold() for p in dictionary["prompt"]}
    for b in behaviors:
        taken = atoms.get(b["name"].casefold())
        if b.get("instruction") and b["instruction"].casefold() not in prompts and taken:
            raise ConfigError(
                f"behaviors: {b['name']!r} has the instruction {b['instruction']!r}, which the "
                f"dictionary lacks, so it would join the fits as atom {b['name']!r}; the "
                "dictionary's "
                f"atom {taken[0]!r} is {taken[1]!r}. Rename the behaviour or the atom."
            )


def _as_integers(value, schema: dict):
    """Integer keys as ints: JSON schema counts 10.0 as an integer, and range() would not (in
    place)."""
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    if isinstance(value, dict):
        for k, v in value.items():
            sub = schema.get("properties", {}).get(k) or schema.get("additionalProperties")
            if isinstance(sub, dict):
                value[k] = _as_integers(v, sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value[:] = [_as_integers(v, schema["items"]) for v in value]
    elif isinstance(value, float) and "integer" in types and value.is_integer():
        return int(value)
    return value


# Behaviours and atoms name files and wildcards: one pattern for both (no path separators, no
# braces).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def check_name(name, where: str) -> None:
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(
            f"{where} {name!r}: names are letters, digits, '_' and '-', starting with a letter or "
            f"digit (they name files and wildcards)"
        )


def _check_behaviors(behaviors: list[dict]) -> None:
    seen: dict[str, int] = {}
    for i, b in enumerate(behaviors):
        name = b["name"]
        where = f"behaviors[{i}] ({name!r})"
        check_name(name, f"behaviors[{i}].name")
        if name.casefold() == UNPROMPTED:
            raise ConfigError(
                f"{where}: the name {UNPROMPTED!r} is reserved for the unprompted model"
            )
        if name.casefold() in seen:
            raise ConfigError(
                f"{where}: duplicate behaviour name {name!r} (first at behaviors"
                f"[{seen[name.casefold()]}], names compared up to case)"
            )
        seen[name.casefold()] = i
        kinds = [k for k in TEACHER_KINDS if b.get(k) is not None]
        if len(kinds) != 1:
            raise ConfigError(
                f"{where}: give exactly one of {', '.join(map(repr, TEACHER_KINDS))} "
                f"(found {kinds or 'neither'})"
            )
        if kinds[0] in ("peft", "lora"):
            adapter = Path(b[kinds[0]])
            missing = [
                f
                for f in ("adapter_config.json", "adapter_model.safetensors")
                if not (adapter / f).is_file()
            ]
            if missing:
                raise ConfigError(
                    f"{where}.{kinds[0]}: {b[kinds[0]]!r} is not a PEFT adapter directory "
                    f"(lacks {missing})"
                )
            peft_type = json.loads((adapter / "adapter_config.json").read_text()).get("peft_type")
            want = {"peft": "PROMPT_TUNING", "lora": "LORA"}[kinds[0]]
            if peft_type != want:
                raise ConfigError(
                    f"{where}.{kinds[0]}: {b[kinds[0]]!r} is a {peft_type!r} adapter, not {want}"
                )
        if "instruction" in kinds and not b["instruction"].strip():
            raise ConfigError(f"{where}: 'instruction' is empty")
    instructed = {b["name"] for b in behaviors if b.get("instruction")}
    steered = {b["name"] for b in behaviors if b.get("steering")}
    for i, b in enumerate(behaviors):
        if b.get("distill") and b["distill"]["from"] not in instructed:
            raise ConfigError(
                f"behaviors[{i}] ({b['name']!r}).distill.from = {b['distill']['from']!r} is not an "
                f"instruction behaviour (those are {sorted(instructed)})"
            )
        if b.get("contrastive") and b["contrastive"]["from"] not in steered:
            raise ConfigError(
                f"behaviors[{i}] ({b['name']!r}).contrastive.from = "
                f"{b['contrastive']['from']!r} is not a steering behaviour (those are "
                f"{sorted(steered)})"
            )


def _check_noise(config: dict) -> None:
    hard = {b["name"] for b in config["behaviors"] if b.get("instruction")}
    for name in config["noise"]["behaviors"]:
        if name not in hard:
            raise ConfigError(
                f"noise.behaviors: {name!r} is not an instruction behaviour (those are "
                f"{sorted(hard)})"
            )


def _check_training(config: dict) -> None:
    names = {b["name"] for b in config["behaviors"]}
    t = config["training"]
    for name in t["behaviors"]:
        if name not in names:
            raise ConfigError(
                f"training.behaviors: {name!r} is not a behaviour (those are {sorted(names)})"
            )
    for i, frame in enumerate(t["frames"]):
        if frame.count(FRAME_PLACEHOLDER) != 1:
            raise ConfigError(
                f"training.frames[{i}] = {frame!r} must contain the placeholder "
                f"{FRAME_PLACEHOLDER!r} exactly once"
            )
    if t["init"] == "text" and not t["init_text"].strip():
        raise ConfigError("training.init = 'text' needs a non-empty training.init_text")
    for seed in config["phase1"]["seeds"] or []:
        if seed not in t["seeds"]:
            raise ConfigError(
                f"phase1.seeds: {seed} is not a training seed (those are {t['seeds']})"
            )
    if t["kl_weight"] == t["ce_weight"] == t["state_weight"] == 0:
        raise ConfigError(
            "training: kl_weight, ce_weight and state_weight are all 0 (nothing to train)"
        )


def _check_trained_prompts(config: dict, block: str) -> None:
    """`block`.behaviors and `block`.seeds (reading, sae) name soft prompts that are trained."""
    t, b = config["training"], config[block]
    trained = t["behaviors"] or [x["name"] for x in config["behaviors"]]
    for name in b["behaviors"]:
        if name not in trained:
            raise ConfigError(
                f"{block}.behaviors: {name!r} has no trained soft prompt (trained: "
                f"{sorted(trained)})"
            )
    for seed in b["seeds"] or []:
        if seed not in t["seeds"]:
            raise ConfigError(
                f"{block}.seeds: {seed} is not a training seed (those are {t['seeds']})"
            )
    _check_variants(config, block)


def _check_variants(config: dict, block: str) -> None:
    """`block`.variants (reading, discovery) name variants that are trained."""
    for v in config[block].get("variants", []):
        if v not in config["training"]["variants"]:
            raise ConfigError(
                f"{block}.variants: {v!r} is not a trained variant "
                f"(training.variants: {config['training']['variants']})"
            )


def _check_reading(config: dict) -> None:
    _check_trained_prompts(config, "reading")


def _check_discovery(config: dict) -> None:
    t, d = config["training"], config["discovery"]
    trained = t["behaviors"] or [b["name"] for b in config["behaviors"]]
    instructed = {b["name"] for b in config["behaviors"] if b.get("instruction")}
    for name in d["behaviors"]:
        if name not in trained or name not in instructed:
            raise ConfigError(
                f"discovery.behaviors: {name!r} needs a trained soft prompt and an instruction to "
                "hide "
                f"(trained instruction behaviours: {sorted(set(trained) & instructed)})"
            )
    discovered = d["behaviors"] or sorted(set(trained) & instructed)
    for name in d.get("controls", []):
        if name not in discovered:
            raise ConfigError(
                f"discovery.controls: {name!r} is not a discovered behaviour (discovered: "
                f"{discovered})"
            )
    _check_variants(config, "discovery")
    if not d["pool"]["templates"]["verbs"] and d["pool"]["size"] > 0:
        raise ConfigError("discovery.pool.templates.verbs is empty but discovery.pool.size > 0")
    if "{category}" not in d["proposer"]["request"]:
        raise ConfigError("discovery.proposer.request must contain {category}")


def _check_sae(config: dict) -> None:
    _check_trained_prompts(config, "sae")
    a = config["sae"]
    load_corpus_instructions(a["corpus"]["instructions"])  # exists, has the column, no repeats
    for layer in a["pretrained"]:
        if not str(layer).isdigit():
            raise ConfigError(f"sae.pretrained: key {layer!r} must be a layer number")
        if a["layers"] and int(layer) not in a["layers"]:
            raise ConfigError(f"sae.pretrained: layer {layer} is not in sae.layers {a['layers']}")


def noise_sources(config: dict) -> dict[str, dict]:
    """Phase 0.5 sources by name, e.g. 'noise-0.25-1' (sigma 0 is the clean target, never
    scored)."""
    return {
        f"noise-{s:g}-{seed}": {"sigma": float(s), "seed": int(seed)}
        for s in config["noise"]["sigmas"]
        for seed in config["noise"]["seeds"]
    }


def model_depth(spec: str, revision: str = "main") -> int | None:
    """The model's number of decoder blocks from its config.json, without loading it; None where
    that file is not on this machine yet (a hub model not yet downloaded: its jobs check then)."""
    kind, where = model_source(spec)
    if kind == EMBEDDED:
        return EMBEDDED_DEPTH
    if kind == "local":
        path = Path(where) / "config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        found = try_to_load_from_cache(where, "config.json", revision=revision)
        if not isinstance(found, str):
            return None
        path = Path(found)
    cfg = json.loads(path.read_text())
    depth = cfg.get("num_hidden_layers") or cfg.get("text_config", {}).get("num_hidden_layers")
    return int(depth) if depth else None


def _check_layers(config: dict, depth: int | None) -> None:
    """Every configured layer indexes one of the model's decoder blocks (0 <= layer < depth)."""
    if depth is None:
        return
    check_steering_layers(config["behaviors"], depth)
    named = [("training.state_layer", config["training"]["state_layer"])]
    named += [(f"sae.layers[{i}]", layer) for i, layer in enumerate(config["sae"]["layers"])]
    named += [(f"sae.pretrained[{key!r}]", key) for key in config["sae"]["pretrained"]]
    for key, layer in named:
        try:
            layer = int(layer)
        except ValueError:
            raise ConfigError(f"{key}: {layer!r} is not a layer number") from None
        middle = key == "training.state_layer" and layer == -1  # -1: the middle block
        if not middle and not 0 <= layer < depth:
            raise ConfigError(
                f"{key} = {layer} is out of range: the model has {depth} layers "
                f"(valid 0..{depth - 1})"
            )


def check_steering_layers(behaviors: list[dict], num_layers: int) -> None:
    """Steering layers index decoder blocks: 0 <= layer < num_layers."""
    for i, b in enumerate(behaviors):
        s = b.get("steering")
        if s is not None and not 0 <= s["layer"] < num_layers:
            raise ConfigError(
                f"behaviors[{i}] ({b['name']!r}).steering.layer = {s['layer']} is out of range: "
                f"the model has {num_layers} layers (valid 0..{num_layers - 1})"
            )


def behavior(config: dict, name: str) -> dict:
    """The behaviour spec called `name` (the unprompted pseudo-behaviour is an empty spec)."""
    if name == UNPROMPTED:
        return {"name": UNPROMPTED}
    for b in config["behaviors"]:
        if b["name"] == name:
            return b
    raise ConfigError(f"no behaviour named {name!r} in config 'behaviors'")


# --- the model ---------------------------------------------------------------------------------


def model_source(spec: str) -> tuple[str, str]:
    """Classify the `model` value: ('embedded', ''), ('local', abs path) or ('hub', id)."""
    if spec == EMBEDDED:
        return EMBEDDED, ""
    path = Path(spec).expanduser()
    looks_like_path = spec.startswith(("/", "./", "../", "~")) or path.exists()
    if looks_like_path:
        if not path.is_dir():
            raise ConfigError(f"model: directory {spec!r} does not exist")
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model: directory {spec!r} has no config.json (not a transformers model)"
            )
        return "local", str(path.resolve())
    if _HUB_ID.match(spec):
        return "hub", spec
    raise ConfigError(
        f"model: {spec!r} is neither 'embedded', an existing directory, nor a Hugging Face id "
        "(org/name)"
    )


def model_tag(spec: str) -> str:
    """The {model} wildcard: a filesystem-safe name for the model."""
    kind, where = model_source(spec)
    if kind == EMBEDDED:
        return EMBEDDED_TAG
    if kind == "local":
        name = Path(where).name
        # results/{tag}/ must name one model: not the embedded one's, not a hub id's ("org--name")
        if name == EMBEDDED_TAG:
            raise ConfigError(
                f"model: the local directory {spec!r} is named like the embedded model: its "
                f"results would mix with the embedded model's in results/{name}/; rename it"
            )
        if "--" in name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ConfigError(
                f"model: the local directory {spec!r} is named {name!r}: a model's name in "
                f"results/ holds letters, digits, '.', '_' and single '-' ('--' marks a hub "
                f"id); rename it"
            )
        return name
    return where.replace("/", "--")


# --- messages and dictionary ---------------------------------------------------------------------


def _read_table(path: str | Path, columns: list[str], key: str) -> pd.DataFrame:
    """A TSV read strictly: no quoting (a quote is text), every named field filled, errors with
    the line."""
    import csv

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{key}: file {str(path)!r} does not exist")
    lines = p.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(
        lines[1:], start=2
    ):  # every row as wide as the header (a tab in a field is not)
        fields, want = line.count("\t") + 1, lines[0].count("\t") + 1
        if line.strip() and fields != want:
            raise ConfigError(
                f"{key}: file {str(path)!r} line {n} has {fields} tab-separated fields, its header "
                f"{want}"
            )
    try:
        df = pd.read_csv(
            p, sep="\t", dtype=str, keep_default_na=False, comment=None, quoting=csv.QUOTE_NONE
        )
    except pd.errors.EmptyDataError:
        raise ConfigError(
            f"{key}: file {str(path)!r} is empty (expected a header: {', '.join(columns)})"
        ) from None
    except (
        pd.errors.ParserError
    ) as e:  # e.g. a tab inside a message: one field too many on that line
        raise ConfigError(
            f"{key}: file {str(path)!r} is not a {len(columns)}-column TSV: {e}"
        ) from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ConfigError(
            f"{key}: file {str(path)!r} lacks column(s) {missing}; it has {list(df.columns)}"
        )
    df = df[columns].apply(lambda s: s.str.strip())
    empty = df.index[(df == "").any(axis=1)]
    if len(empty):
        row = df.loc[empty[0]]
        raise ConfigError(
            f"{key}: file {str(path)!r} line {empty[0] + 2} has an empty field "
            f"({', '.join(c for c in columns if row[c] == '')})"
        )
    if df.empty:
        raise ConfigError(f"{key}: file {str(path)!r} has no entries")
    dup = df[columns[0]][df[columns[0]].duplicated()]
    if not dup.empty:
        raise ConfigError(f"{key}: file {str(path)!r} repeats {columns[0]} {dup.iloc[0]!r}")
    return df.reset_index(drop=True)


def load_messages(cfg: dict) -> pd.DataFrame:
    """User messages with a deterministic train/test split (columns message_id, user_message,
    split).

    The split ranks messages by a seeded hash of their id, so it does not depend on file order
    and adding a message moves no other message between splits except at the boundary. The first
    round(test_fraction x all) ranked messages are test; `train_messages` (if set) keeps only the
    next that many as train, so a small run can score on the full test split and fit on fewer
    messages.
    """
    df = _read_table(cfg["file"], ["message_id", "user_message"], "messages.file")
    rank = df["message_id"].map(
        lambda m: hashlib.sha256(f"{cfg['split_seed']}:{m}".encode()).hexdigest()
    )
    n_test = round(cfg["test_fraction"] * len(df))
    if n_test < 1:
        raise ConfigError(
            f"messages.test_fraction = {cfg['test_fraction']} of {len(df)} messages in "
            f"{cfg['file']!r} leaves no test messages"
        )
    if len(df) - n_test < 1:
        raise ConfigError(
            f"messages.test_fraction = {cfg['test_fraction']} leaves no training messages"
        )
    order = rank.argsort().to_numpy()
    n_train = (
        len(df) - n_test
        if cfg.get("train_messages") is None
        else min(cfg["train_messages"], len(df) - n_test)
    )
    df["split"] = None
    df.loc[df.index[order[:n_test]], "split"] = "test"
    df.loc[df.index[order[n_test : n_test + n_train]], "split"] = "train"
    return df[df["split"].notna()].reset_index(drop=True)


def load_corpus_instructions(path: str | Path) -> list[str]:
    """The instructions that vary the SAE corpus's user turns (one column, instruction)."""
    return list(_read_table(path, ["instruction"], "sae.corpus.instructions")["instruction"])


def load_dictionary(cfg: dict) -> pd.DataFrame:
    """The hand-written dictionary of hard prompts (columns atom, category, prompt)."""
    df = _read_table(cfg["file"], ["atom", "category", "prompt"], "dictionary.file")
    for atom in df["atom"]:
        check_name(atom, f"dictionary.file {cfg['file']!r}: atom")
    dup = df["atom"][df["atom"].str.casefold().duplicated()]
    if not dup.empty:
        raise ConfigError(
            f"dictionary.file: file {cfg['file']!r} has atoms differing only in case: "
            f"{dup.iloc[0]!r}"
        )
    dup = df["prompt"][df["prompt"].str.casefold().duplicated()]
    if not dup.empty:
        raise ConfigError(
            f"dictionary.file: file {cfg['file']!r} repeats the prompt {dup.iloc[0]!r}"
        )
    return df


def dictionary_atoms(
    spec: dict, dictionary: pd.DataFrame, include_unprompted: bool = False
) -> pd.DataFrame:
    """The atoms a behaviour's fits use: columns atom, prompt, source, is_target.

    The behaviour's own instruction is the atom whose cache is the `target` source; if the
    hand-written dictionary lacks it, it is added (Phase 0 must be able to recover it).
    """
    own = (spec.get("instruction") or "").casefold()
    rows = [
        {
            "atom": a,
            "prompt": t,
            "source": TARGET if t.casefold() == own else f"atom-{a}",
            "is_target": t.casefold() == own,
        }
        for a, t in zip(dictionary["atom"], dictionary["prompt"])
    ]
    if own and not any(r["is_target"] for r in rows):
        rows.append(
            {
                "atom": spec["name"],
                "prompt": spec["instruction"],
                "source": TARGET,
                "is_target": True,
            }
        )
    if include_unprompted:
        rows.append(
            {
                "atom": UNPROMPTED_SOURCE,
                "prompt": "",
                "source": UNPROMPTED_SOURCE,
                "is_target": False,
            }
        )
    return pd.DataFrame(rows)


def prompt_key(variant: str, seed: int, kind: str = "soft") -> str:
    """The source key of a trained soft prompt (kind "soft") or of its random control
    ("control")."""
    if kind not in PROMPT_KINDS:
        raise ValueError(f"prompt kind {kind!r} is not one of {PROMPT_KINDS}")
    return f"{kind}-{variant}-seed{int(seed)}"


def parse_prompt_key(key: str) -> dict | None:
    """{kind, variant, seed} of a key made by `prompt_key`, or None for any other source."""
    m = _PROMPT_KEY.match(key)
    return None if m is None else {**m.groupdict(), "seed": int(m["seed"])}


def behavior_source(spec: dict) -> dict:
    """The source that defines a behaviour's teacher: its instruction, steering vector or PEFT
    prompt."""
    if spec.get("instruction"):
        return {"kind": "hard", "text": spec["instruction"]}
    if spec.get("steering"):
        return {"kind": "steered"}
    if spec.get("peft"):
        return {"kind": "soft", "file": spec["peft"], "position": "before_template"}
    if spec.get("lora"):
        return {"kind": "lora", "adapter": spec["lora"]}
    if spec.get("distill"):
        return {"kind": "lora", "adapter": spec["adapter"]}  # set by `with_derived_teachers`
    return {"kind": "unprompted"}


def hidden_instruction(behaviors: dict, name: str) -> str | None:
    """The instruction a behaviour's teacher acts out, if it has one: its own, or the one its LoRA
    was distilled from (a reading of the LoRA should find that one)."""
    spec = behaviors.get(name, {})
    if spec.get("distill"):
        return behaviors[spec["distill"]["from"]].get("instruction")
    return spec.get("instruction")


def distilled_adapter(model_tag: str, name: str) -> str:
    """Where rule distill_lora writes a distilled behaviour's LoRA adapter."""
    return f"results/{model_tag}/lora/{name}"


def with_derived_teachers(config: dict, model_tag: str) -> None:
    """Complete (in place) the specs of behaviours whose teacher derives from another's: a distilled
    behaviour names the adapter its rule writes, so that its teacher source and its jobs' inputs
    name that file; a contrastive behaviour takes its source's steering block, so that its teacher
    is the source's steering vector (recomputed from the same texts: the same direction, the same
    greedy completions) and its prompts learn from those texts."""
    steering = {b["name"]: b.get("steering") for b in config["behaviors"]}
    for b in config["behaviors"]:
        if b.get("distill"):
            b["adapter"] = distilled_adapter(model_tag, b["name"])
        if b.get("contrastive"):
            b["steering"] = steering[b["contrastive"]["from"]]


def default_layers(num_layers: int) -> list[int]:
    """sae.layers left empty: a middle block and one each side of it, n/4, n/2 and 3n/4."""
    return sorted({num_layers // 4, num_layers // 2, (3 * num_layers) // 4})

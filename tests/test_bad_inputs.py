"""Every bad input the config can reveal is refused by `validate_config` (the first thing the
workflow runs, before any job: tests/test_workflow.py checks one end to end), with a message that
names the key, the file or the value."""

from __future__ import annotations

import pytest

from softlens.config import ConfigError, validate_config

STEER = {
    "layer": 6,
    "scale": 1.5,
    "positive": ["Arr, matey, ye be lookin."],
    "negative": ["Hello there, friend."],
}
HEAD = "message_id\tuser_message\n"


def tsv(tmp, name, text):
    path = tmp / name
    path.write_bytes(text.encode())
    return str(path)


def messages(n):
    return HEAD + "".join(f"m{i}\tWhat is {i}?\n" for i in range(n))


def set_key(cfg, dotted, value):
    *path, last = dotted.split(".")
    node = cfg
    for k in path:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def behaviour(cfg, **spec):
    cfg["behaviors"].append(spec)


def local_model(tmp, name, config_json=True):
    d = tmp / name
    d.mkdir()
    if config_json:
        (d / "config.json").write_text('{"num_hidden_layers": 4}')
    return str(d)


# (id, change: (cfg, tmp_path) -> None, what the message must name)
CASES = [
    # the config's keys and types
    ("unknown top-level key", lambda c, t: set_key(c, "behaviours", []), "behaviours"),
    ("unknown nested key", lambda c, t: set_key(c, "model_settings.devices", "cpu"), "devices"),
    ("device not a device", lambda c, t: set_key(c, "model_settings.device", "gpu"), "gpu"),
    ("dtype unknown", lambda c, t: set_key(c, "model_settings.dtype", "float8"), "float8"),
    ("batch size zero", lambda c, t: set_key(c, "model_settings.batch_size", 0), "batch_size"),
    (
        "slot position unknown",
        lambda c, t: set_key(c, "model_settings.slot.position", "middle"),
        "middle",
    ),
    (
        "trust_remote_code a string",
        lambda c, t: set_key(c, "model_settings.trust_remote_code", "yes"),
        "yes",
    ),
    (
        "gpu partition with a shell character",
        lambda c, t: set_key(c, "cluster.gpu_partition", "gpu;rm"),
        "gpu;rm",
    ),
    ("teacher tokens zero", lambda c, t: set_key(c, "teacher.max_new_tokens", 0), "max_new_tokens"),
    (
        "teacher temperature negative",
        lambda c, t: set_key(c, "teacher.temperature", -1),
        "temperature",
    ),
    ("positions zero", lambda c, t: set_key(c, "logprobs.positions", 0), "positions"),
    ("positions fractional", lambda c, t: set_key(c, "logprobs.positions", 4.5), "4.5"),
    ("path length fractional", lambda c, t: set_key(c, "poe.path_length", 20.5), "20.5"),
    ("lambda ratio above one", lambda c, t: set_key(c, "poe.lambda_ratio", 2), "lambda_ratio"),
    (
        "exclusion level unknown",
        lambda c, t: set_key(c, "exclusion.levels", ["none", "bogus"]),
        "bogus",
    ),
    ("noise sigma negative", lambda c, t: set_key(c, "noise.sigmas", [-1]), "-1"),
    ("noise behaviour unknown", lambda c, t: set_key(c, "noise.behaviors", ["klingon"]), "klingon"),
    ("training steps fractional", lambda c, t: set_key(c, "training.steps", 10.5), "10.5"),
    ("training length zero", lambda c, t: set_key(c, "training.length", 0), "length"),
    ("training length fractional", lambda c, t: set_key(c, "training.length", 8.5), "8.5"),
    ("training lr negative", lambda c, t: set_key(c, "training.lr", -0.1), "lr"),
    (
        "training variant unknown",
        lambda c, t: set_key(c, "training.variants", ["appended"]),
        "appended",
    ),
    (
        "training behaviour unknown",
        lambda c, t: set_key(c, "training.behaviors", ["klingon"]),
        "klingon",
    ),
    (
        "frame without placeholder",
        lambda c, t: set_key(c, "training.frames", ["Be nice."]),
        "Be nice.",
    ),
    (
        "frame with two placeholders",
        lambda c, t: set_key(c, "training.frames", ["___ and ___."]),
        "___ and ___.",
    ),
    ("text init without text", lambda c, t: set_key(c, "training.init", "text"), "init_text"),
    (
        "nothing to train",
        lambda c, t: [set_key(c, f"training.{k}_weight", 0.0) for k in ("kl", "ce", "state")],
        "kl_weight",
    ),
    (
        "state layer past the model",
        lambda c, t: set_key(c, "training.state_layer", 99),
        "training.state_layer = 99",
    ),
    (
        "reading behaviour unknown",
        lambda c, t: set_key(c, "reading.behaviors", ["klingon"]),
        "klingon",
    ),
    (
        "reading variant not trained",
        lambda c, t: set_key(c, "reading.variants", ["appended"]),
        "appended",
    ),
    ("search steps zero", lambda c, t: set_key(c, "reading.search.steps", 0), "steps"),
    (
        "verbalisation top_p above one",
        lambda c, t: set_key(c, "reading.verbalisation.top_p", 1.5),
        "top_p",
    ),
    (
        "discovery behaviour unknown",
        lambda c, t: set_key(c, "discovery.behaviors", ["klingon"]),
        "klingon",
    ),
    (
        "discovery control unknown",
        lambda c, t: set_key(c, "discovery.controls", ["klingon"]),
        "klingon",
    ),
    ("screen shards zero", lambda c, t: set_key(c, "discovery.screen.shards", 0), "shards"),
    ("screen shards fractional", lambda c, t: set_key(c, "discovery.screen.shards", 4.5), "4.5"),
    ("pursuit lambda negative", lambda c, t: set_key(c, "discovery.pursuit.lam", -1), "lam"),
    (
        "sae layer past the model",
        lambda c, t: set_key(c, "sae.layers", [99]),
        r"sae.layers\[0\] = 99",
    ),
    (
        "pretrained sae layer past the model",
        lambda c, t: set_key(c, "sae.pretrained", {"99": {"release": "r", "sae_id": "s"}}),
        "99",
    ),
    (
        "pretrained sae layer not a number",
        lambda c, t: set_key(c, "sae.pretrained", {"mid": {"release": "r", "sae_id": "s"}}),
        "mid",
    ),
    (
        "sae corpus file missing",
        lambda c, t: set_key(c, "sae.corpus.instructions", str(t / "none.tsv")),
        "none.tsv",
    ),
    # the model
    ("model directory missing", lambda c, t: set_key(c, "model", str(t / "nope")), "nope"),
    (
        "model directory without config.json",
        lambda c, t: set_key(c, "model", local_model(t, "bare", config_json=False)),
        "config.json",
    ),
    (
        "model neither embedded, a directory nor a hub id",
        lambda c, t: set_key(c, "model", "not a model!"),
        "not a model!",
    ),
    (
        "local model named like the embedded one",
        lambda c, t: set_key(c, "model", local_model(t, "SmolLM2-135M-Instruct")),
        "SmolLM2-135M-Instruct",
    ),
    (
        "local model named like a hub tag",
        lambda c, t: set_key(c, "model", local_model(t, "org--name")),
        "org--name",
    ),
    (
        "steering layer past a local model's depth",
        lambda c, t: [
            set_key(c, "model", local_model(t, "four")),
            set_key(c, "behaviors.2.steering.layer", 4),
        ],
        r"steering.layer = 4 is out of range: the model has 4 layers",
    ),
    # behaviours
    ("behaviours empty", lambda c, t: set_key(c, "behaviors", []), "behaviors"),
    (
        "behaviour name duplicated",
        lambda c, t: behaviour(c, name="spanish", instruction="Hi."),
        "'spanish'",
    ),
    (
        "behaviour names differing in case",
        lambda c, t: behaviour(c, name="Spanish", instruction="Hi."),
        "Spanish",
    ),
    (
        "behaviour name climbing out of results",
        lambda c, t: behaviour(c, name="../../../../tmp/x", instruction="Hi."),
        r"\.\./\.\./",
    ),
    (
        "behaviour name with a slash",
        lambda c, t: behaviour(c, name="a/b", instruction="Hi."),
        "a/b",
    ),
    (
        "behaviour name a wildcard",
        lambda c, t: behaviour(c, name="{behavior}", instruction="Hi."),
        "{behavior}",
    ),
    (
        "behaviour name reserved",
        lambda c, t: behaviour(c, name="unprompted", instruction="Hi."),
        "unprompted",
    ),
    ("behaviour without a teacher", lambda c, t: behaviour(c, name="empty"), "'empty'"),
    (
        "behaviour with two teachers",
        lambda c, t: behaviour(c, name="both", instruction="Hi.", steering=STEER),
        "'both'",
    ),
    (
        "behaviour instruction empty",
        lambda c, t: behaviour(c, name="blank", instruction=""),
        "instruction",
    ),
    (
        "steering layer past the embedded model",
        lambda c, t: behaviour(c, name="deep", steering={**STEER, "layer": 99}),
        r"\('deep'\).steering.layer = 99",
    ),
    (
        "steering without scale",
        lambda c, t: behaviour(
            c, name="noscale", steering={k: v for k, v in STEER.items() if k != "scale"}
        ),
        "scale",
    ),
    (
        "steering without positive texts",
        lambda c, t: behaviour(c, name="nopos", steering={**STEER, "positive": []}),
        "positive",
    ),
    (
        "distilled from a behaviour without an instruction",
        lambda c, t: behaviour(c, name="lora4", distill={"from": "pirate_steer", "rank": 4}),
        r"\('lora4'\).distill.from = 'pirate_steer' is not an instruction behaviour",
    ),
    (
        "distilled LoRA of rank zero",
        lambda c, t: behaviour(c, name="lora0", distill={"from": "spanish", "rank": 0}),
        "rank",
    ),
    (
        "lora adapter missing",
        lambda c, t: behaviour(c, name="weights", lora=str(t / "no-lora")),
        "no-lora",
    ),
    (
        "peft adapter missing",
        lambda c, t: behaviour(c, name="adapter", peft=str(t / "no-adapter")),
        "no-adapter",
    ),
    (
        "behaviour named like an atom with another instruction",
        lambda c, t: set_key(c, "behaviors.0.instruction", "Respond in Spanish!"),
        r"'spanish'.*Respond in Spanish!",
    ),
    # the messages file
    (
        "messages file missing",
        lambda c, t: set_key(c, "messages.file", str(t / "gone.tsv")),
        "gone.tsv",
    ),
    (
        "messages file empty",
        lambda c, t: set_key(c, "messages.file", tsv(t, "empty.tsv", "")),
        "empty.tsv",
    ),
    (
        "messages: two messages leave no test split",
        lambda c, t: set_key(c, "messages.file", tsv(t, "two.tsv", messages(2))),
        "no test messages",
    ),
    (
        "messages: a tiny test fraction leaves no test split",
        lambda c, t: set_key(c, "messages.test_fraction", 0.001),
        "no test messages",
    ),
    (
        "test fraction above one",
        lambda c, t: set_key(c, "messages.test_fraction", 1.5),
        "test_fraction",
    ),
    (
        "messages row with an empty field",
        lambda c, t: set_key(c, "messages.file", tsv(t, "hole.tsv", messages(8) + "m9\t\n")),
        r"hole.tsv.*line 10",
    ),
    (
        "messages row with a tab inside a message",
        lambda c, t: set_key(
            c, "messages.file", tsv(t, "tab.tsv", messages(8) + "m9\tWhy\tnot?\n")
        ),
        r"tab.tsv.*line 10 has 3",
    ),
    (
        "messages without the user_message column",
        lambda c, t: set_key(c, "messages.file", tsv(t, "cols.tsv", "message_id\ttext\na\tHi?\n")),
        "user_message",
    ),
    (
        "message ids duplicated",
        lambda c, t: set_key(c, "messages.file", tsv(t, "dup.tsv", messages(8) + "m1\tAgain?\n")),
        "m1",
    ),
    # the dictionary file
    (
        "dictionary file missing",
        lambda c, t: set_key(c, "dictionary.file", str(t / "nodict.tsv")),
        "nodict.tsv",
    ),
    (
        "dictionary atom climbing out of results",
        lambda c, t: set_key(
            c,
            "dictionary.file",
            tsv(t, "d1.tsv", "atom\tcategory\tprompt\n../../../../tmp/x\tx\tBe x.\n"),
        ),
        r"\.\./\.\./",
    ),
    (
        "dictionary atom with a slash",
        lambda c, t: set_key(
            c, "dictionary.file", tsv(t, "d2.tsv", "atom\tcategory\tprompt\na/b\tx\tBe x.\n")
        ),
        "a/b",
    ),
    (
        "dictionary atom a wildcard",
        lambda c, t: set_key(
            c, "dictionary.file", tsv(t, "d3.tsv", "atom\tcategory\tprompt\n{behavior}\tx\tBe x.\n")
        ),
        "{behavior}",
    ),
    (
        "dictionary atoms differing in case",
        lambda c, t: set_key(
            c,
            "dictionary.file",
            tsv(t, "d4.tsv", "atom\tcategory\tprompt\nfox\tx\tBe x.\nFox\tx\tBe y.\n"),
        ),
        "Fox",
    ),
    (
        "dictionary row with an empty field",
        lambda c, t: set_key(
            c, "dictionary.file", tsv(t, "d5.tsv", "atom\tcategory\tprompt\nfox\tx\t\n")
        ),
        r"d5.tsv.*line 2",
    ),
    (
        "dictionary row with a field too many",
        lambda c, t: set_key(
            c, "dictionary.file", tsv(t, "d6.tsv", "atom\tcategory\tprompt\nfox\tx\ty\tz\n")
        ),
        r"d6.tsv.*line 2 has 4",
    ),
    (
        "dictionary prompt repeated",
        lambda c, t: set_key(
            c,
            "dictionary.file",
            tsv(t, "d7.tsv", "atom\tcategory\tprompt\nfox\tx\tBe x.\nowl\tx\tbe X.\n"),
        ),
        "repeats the prompt",
    ),
    (
        "messages row with a field too few",
        lambda c, t: set_key(c, "messages.file", tsv(t, "few.tsv", messages(8) + "m9\n")),
        r"few.tsv.*line 10 has 1",
    ),
]


@pytest.mark.parametrize("change, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_naming_it(default_config, tmp_path, change, names):
    change(default_config, tmp_path)
    with pytest.raises((ConfigError, FileNotFoundError, ValueError), match=names):
        validate_config(default_config)


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60


def test_integer_keys_written_as_floats_arrive_as_ints(default_config):
    for key in ("training.steps", "training.length", "poe.path_length", "discovery.screen.shards"):
        set_key(default_config, key, 20.0)
    cfg = validate_config(default_config)
    assert [
        type(v)
        for v in (
            cfg["training"]["steps"],
            cfg["training"]["length"],
            cfg["poe"]["path_length"],
            cfg["discovery"]["screen"]["shards"],
        )
    ] == [int] * 4

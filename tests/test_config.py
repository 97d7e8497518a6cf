"""Bad input gets a clear error naming the key, file or value (validation runs before any rule)."""

import pandas as pd
import pytest

from conftest import ROOT
from softlens.config import (
    ConfigError,
    check_config_files,
    check_steering_layers,
    load_messages,
    model_tag,
    validate_config,
)


def test_default_config_validates_and_gets_defaults(default_config, schema):
    cfg = validate_config(default_config, schema)
    assert cfg["model_settings"]["revision"] == "main"
    assert cfg["teacher"]["temperature"] == 1.0
    assert len(cfg["behaviors"]) >= 3 and any(b.get("steering") for b in cfg["behaviors"])


def test_default_split_is_deterministic_and_independent_of_file_order(default_config, tmp_path):
    msgs = load_messages(default_config["messages"])
    counts = msgs["split"].value_counts()
    assert counts["test"] >= 50 and counts["train"] == default_config["messages"]["train_messages"]
    shuffled = tmp_path / "m.tsv"
    every = pd.read_csv(default_config["messages"]["file"], sep="\t", dtype=str)
    every.sample(frac=1, random_state=3).to_csv(shuffled, sep="\t", index=False)
    again = load_messages({**default_config["messages"], "file": str(shuffled)})
    assert dict(zip(msgs.message_id, msgs.split)) == dict(zip(again.message_id, again.split))


def test_train_messages_caps_train_and_keeps_the_test_split(default_config):
    every = load_messages({**default_config["messages"], "train_messages": None})
    capped = load_messages({**default_config["messages"], "train_messages": 10})
    assert len(every) == 200 and (every["split"] == "test").sum() == 50
    assert set(capped.loc[capped["split"] == "test", "message_id"]) == set(
        every.loc[every["split"] == "test", "message_id"]
    )
    assert (capped["split"] == "train").sum() == 10
    assert set(capped["message_id"]) <= set(every["message_id"])


def test_a_split_without_test_messages_is_refused(default_config, tmp_path):
    two = tmp_path / "two.tsv"
    two.write_text("message_id\tuser_message\na\tHello?\nb\tWhy?\n")
    with pytest.raises(ConfigError, match="no test messages"):
        load_messages({**default_config["messages"], "file": str(two), "test_fraction": 0.1})


def test_unknown_top_level_key(default_config, schema):
    default_config["behaviours"] = []
    with pytest.raises(ConfigError, match="behaviours"):
        validate_config(default_config, schema)


def test_behavior_without_instruction_or_steering(default_config, schema):
    default_config["behaviors"].append({"name": "empty"})
    n = len(default_config["behaviors"]) - 1
    with pytest.raises(
        ConfigError,
        match=rf"behaviors\[{n}\] \('empty'\).*exactly one of 'instruction', 'steering', 'peft', "
        r"'lora', 'distill'",
    ):
        validate_config(default_config, schema)


def test_behavior_with_both_instruction_and_steering(default_config, schema):
    both = dict(default_config["behaviors"][-1], name="both", instruction="Be concise.")
    default_config["behaviors"].append(both)
    with pytest.raises(ConfigError, match=r"'both'.*found \['instruction', 'steering'\]"):
        validate_config(default_config, schema)


def test_no_user_messages(default_config, schema, tmp_path):
    empty = tmp_path / "messages.tsv"
    empty.write_text("message_id\tuser_message\n")
    default_config["messages"]["file"] = str(empty)
    with pytest.raises(ConfigError, match=r"messages.file: file '.*messages.tsv' has no entries"):
        validate_config(default_config, schema)


def test_missing_messages_file(default_config, schema):
    default_config["messages"]["file"] = "/nonexistent/messages.tsv"
    with pytest.raises(
        ConfigError, match="messages.file: file '/nonexistent/messages.tsv' does not exist"
    ):
        validate_config(default_config, schema)


def test_model_directory_that_does_not_exist(default_config, schema):
    default_config["model"] = "/no/such/model"
    with pytest.raises(ConfigError, match="model: directory '/no/such/model' does not exist"):
        validate_config(default_config, schema)


def test_model_value_that_is_neither_path_nor_hub_id(default_config, schema):
    default_config["model"] = "not a model"
    with pytest.raises(ConfigError, match="model: 'not a model' is neither"):
        validate_config(default_config, schema)


def refuses_dictionary(config, schema, tmp_path, rows: str, message: str) -> None:
    """`rows` (after the header) as the dictionary file: validation fails with `message`."""
    path = tmp_path / "dictionary.tsv"
    path.write_text("atom\tcategory\tprompt\n" + rows)
    config["dictionary"]["file"] = str(path)
    with pytest.raises(ConfigError, match=message):
        validate_config(config, schema)


def test_empty_dictionary(default_config, schema, tmp_path):
    refuses_dictionary(default_config, schema, tmp_path, "", "dictionary.file: .* has no entries")


def test_duplicate_dictionary_prompt(default_config, schema, tmp_path):
    refuses_dictionary(
        default_config,
        schema,
        tmp_path,
        "a\tx\tBe concise.\nb\tx\tbe concise.\n",
        "repeats the prompt 'be concise.'",
    )


def test_steering_layer_out_of_range(default_config, schema):
    cfg = validate_config(default_config, schema)
    cfg["behaviors"][-1]["steering"]["layer"] = 30
    n = len(cfg["behaviors"]) - 1
    with pytest.raises(
        ConfigError,
        match=rf"behaviors\[{n}\] \('pirate_steer'\).steering.layer = 30 is out of range"
        r".*30 layers",
    ):
        check_steering_layers(cfg["behaviors"], 30)
    cfg["behaviors"][-1]["steering"]["layer"] = -1
    with pytest.raises(ConfigError, match="layer"):
        validate_config(cfg, schema)


def test_non_numeric_scale(default_config, schema):
    default_config["behaviors"][-1]["steering"]["scale"] = "strong"
    with pytest.raises(ConfigError, match=r"'strong' is not of type 'number'(.|\n)*scale"):
        validate_config(default_config, schema)


def test_duplicate_behavior_name(default_config, schema):
    default_config["behaviors"].append({"name": "spanish", "instruction": "Hable español."})
    with pytest.raises(
        ConfigError, match=r"duplicate behaviour name 'spanish' \(first at behaviors\[0\]"
    ):
        validate_config(default_config, schema)


def test_reserved_behavior_name(default_config, schema):
    default_config["behaviors"].append({"name": "unprompted", "instruction": "Hi."})
    with pytest.raises(ConfigError, match="reserved"):
        validate_config(default_config, schema)


def test_model_tags():
    assert model_tag("embedded") == "SmolLM2-135M-Instruct"
    assert model_tag("Qwen/Qwen3-4B") == "Qwen--Qwen3-4B"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("length", 0, r"length"),
        (
            "frames",
            ["Be nice."],
            r"training.frames\[0\] = 'Be nice.' must contain the placeholder '___'",
        ),
        ("frames", ["___ and ___"], r"training.frames\[0\].*exactly once"),
        ("behaviors", ["klingon"], r"training.behaviors: 'klingon' is not a behaviour"),
        ("init", "text", r"init_text"),
        ("variants", ["appended"], r"appended"),
    ],
)
def test_bad_training_settings(default_config, schema, key, value, message):
    default_config["training"] = {key: value}
    with pytest.raises(ConfigError, match=message):
        validate_config(default_config, schema)


@pytest.mark.parametrize("block", ["reading", "discovery"])
def test_read_or_discovered_variant_must_be_trained(default_config, schema, block):
    default_config["training"] = {"variants": ["prepend"]}
    default_config[block] = {"variants": ["contextualised"]}
    with pytest.raises(
        ConfigError,
        match=rf"{block}.variants: 'contextualised' is not a trained variant "
        r"\(training.variants: \['prepend'\]\)",
    ):
        validate_config(default_config, schema)


def test_peft_behaviour_must_point_at_an_adapter(default_config, schema, tmp_path):
    default_config["behaviors"].append({"name": "imported", "peft": str(tmp_path)})
    with pytest.raises(
        ConfigError, match=r"\('imported'\).peft: .* is not a PEFT adapter directory"
    ):
        validate_config(default_config, schema)


def test_the_shipped_gpu_config_validates_over_the_default(default_config, schema):
    import yaml
    from snakemake.utils import update_config

    from conftest import ROOT
    from softlens.workflow import gpus_for

    update_config(default_config, yaml.safe_load((ROOT / "config" / "qwen3-4b.yaml").read_text()))
    cfg = validate_config(
        default_config, schema
    )  # as `--configfile config/qwen3-4b.yaml` merges it
    assert cfg["model"] == "Qwen/Qwen3-4B" and model_tag(cfg["model"]) == "Qwen--Qwen3-4B"
    assert gpus_for(cfg["model_settings"]["device"]) == 1 and gpus_for("cpu") == 0


def test_a_discovery_control_must_name_a_discovered_behaviour(default_config, schema):
    default_config["discovery"]["controls"] = ["pirate_steer"]
    with pytest.raises(ConfigError, match="discovery.controls: 'pirate_steer'"):
        validate_config(default_config, schema)


def test_integer_keys_written_as_floats_arrive_as_ints(default_config, schema):
    default_config["training"].update(steps=10.0, length=8.0, seeds=[0.0, 1.0])
    default_config["poe"]["path_length"] = 20.0
    default_config["discovery"]["screen"]["shards"] = 4.0
    cfg = validate_config(default_config, schema)
    values = [
        cfg["training"]["steps"],
        cfg["training"]["length"],
        *cfg["training"]["seeds"],
        cfg["poe"]["path_length"],
        cfg["discovery"]["screen"]["shards"],
    ]
    assert values == [10, 8, 0, 1, 20, 4] and all(type(v) is int for v in values)
    assert type(cfg["training"]["lr"]) is float  # numbers stay numbers


def test_a_fractional_integer_key_is_refused(default_config, schema):
    default_config["training"]["steps"] = 10.5
    with pytest.raises(ConfigError, match="10.5"):
        validate_config(default_config, schema)


@pytest.mark.parametrize("atom", ["../../../../tmp/x", "a/b", "{behavior}", "-lead", "with space"])
def test_an_atom_name_that_is_not_a_plain_name_is_refused(default_config, schema, tmp_path, atom):
    refuses_dictionary(
        default_config,
        schema,
        tmp_path,
        f"{atom}\tx\tBe kind.\nconcise\tlength\tBe concise.\n",
        "names are letters, digits",
    )


def test_atoms_differing_only_in_case_are_refused(default_config, schema, tmp_path):
    refuses_dictionary(
        default_config,
        schema,
        tmp_path,
        "kind\tx\tBe kind.\nKind\tx\tBe very kind.\n",
        "differing only in case: 'Kind'",
    )


def test_a_behaviour_case_variant_is_a_duplicate(default_config, schema):
    default_config["behaviors"].append({"name": "Spanish", "instruction": "Hable español."})
    with pytest.raises(ConfigError, match="duplicate behaviour name 'Spanish'"):
        validate_config(default_config, schema)


def test_a_behaviour_whose_new_instruction_would_take_an_atoms_name_is_refused(
    default_config, schema
):
    default_config["behaviors"][0]["instruction"] = (
        "Respond in Spanish!"  # not the dictionary's "Respond in Spanish."
    )
    with pytest.raises(ConfigError, match="would join the fits as atom 'spanish'"):
        validate_config(default_config, schema)


@pytest.mark.parametrize(
    "body, message",
    [
        ("", "is empty"),
        (
            "message_id\tuser_message\nm1\tHello?\nm2\t\n",
            "line 3 has an empty field \\(user_message\\)",
        ),
        ("message_id\tuser_message\nm1\tHello?\nm2\tA\ttab\n", "line 3 has 3 tab-separated fields"),
    ],
)
def test_message_files_are_read_strictly_with_the_line(
    default_config, schema, tmp_path, body, message
):
    path = tmp_path / "m.tsv"
    path.write_text(body)
    default_config["messages"]["file"] = str(path)
    with pytest.raises(ConfigError, match=message):
        validate_config(default_config, schema)


def test_quotes_in_a_message_are_kept(default_config, tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text(
        'message_id\tuser_message\nm1\t"Quoted" words?\nm2\tWhy?\nm3\tHow?\nm4\tWhat?\n'
    )
    msgs = load_messages({**default_config["messages"], "file": str(path), "train_messages": None})
    assert '"Quoted" words?' in set(msgs["user_message"])


OVERLAYS = sorted(p.name for p in (ROOT / "config").glob("*.yaml") if p.name != "config.yaml")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_shipped_overlay_validates(default_config, schema, overlay):
    """Each overlay as `--configfile` layers it over config/config.yaml (a YAML 5 is an int, not
    a word)."""
    import yaml
    from snakemake.utils import update_config

    from conftest import ROOT

    update_config(default_config, yaml.safe_load((ROOT / "config" / overlay).read_text()))
    validate_config(default_config, schema)


@pytest.mark.parametrize("overlay", ["instructions.yaml", "weights.yaml"])
def test_an_overlay_that_reuses_the_default_keeps_its_behaviours_unchanged(default_config, overlay):
    """These overlays add behaviours to the default run's: the default's own must stay as they are,
    or every one of their jobs would rerun (params change) instead of being reused."""
    import yaml

    added = yaml.safe_load((ROOT / "config" / overlay).read_text())["behaviors"]
    by_name = {b["name"]: b for b in added}
    for spec in default_config["behaviors"]:
        assert by_name.get(spec["name"]) == spec, spec["name"]


def test_a_key_written_twice_in_a_config_file_is_refused_naming_file_key_and_lines(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("poe:\n  path_length: 10\nnoise:\n  path_length: 10\n")  # same key, two maps
    check_config_files([good])
    bad = tmp_path / "bad.yaml"
    bad.write_text("poe:\n  path_length: 10\n  lambda_ratio: 0.01\n  path_length: 5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: key 'path_length' .*lines 2 and 4"):
        check_config_files([good, bad])

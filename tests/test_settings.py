"""The schema is the one home of defaults: every settings dataclass field a config key sets has
the schema's default, and each dataclass is built from its config section by one function."""

import dataclasses

import pytest

from softlens.activations import CorpusSettings
from softlens.config import defaults, schema_node
from softlens.decompose import PathSettings
from softlens.discovery import PursuitSettings, ScreenSettings
from softlens.distill import DistillSettings
from softlens.exclusion import ExclusionSettings
from softlens.repair import SearchSettings
from softlens.sae import SAESettings
from softlens.teacher import GenerationSettings
from softlens.training_settings import TrainSettings

# dataclass, its config section, and the fields a job sets (from its wildcards or another section)
PINNED = [
    (TrainSettings, "training", {"frames"}),
    (DistillSettings, "distill", {"rank"}),
    (PathSettings, "poe", set()),
    (ScreenSettings, "discovery.screen", {"shard", "positions", "seed"}),
    (PursuitSettings, "discovery.pursuit", {"top", "positions", "levels"}),
    (ExclusionSettings, "exclusion", set()),
    (SearchSettings, "reading.search", set()),
    (SAESettings, "sae.train", set()),
    (CorpusSettings, "sae.corpus", set()),
    (GenerationSettings, "teacher", {"do_sample", "temperature", "top_p", "seed", "batch_size"}),
]


def plain(v):
    return list(v) if isinstance(v, tuple) else v


@pytest.mark.parametrize("cls, section, job_fields", PINNED, ids=[c.__name__ for c, _, _ in PINNED])
def test_every_settings_default_is_the_schemas(cls, section, job_fields):
    schema, want = schema_node(section)["properties"], defaults(section)
    for f in dataclasses.fields(cls):
        if f.name in job_fields:
            continue
        assert f.name in schema, f"{cls.__name__}.{f.name} is not a key of {section} in the schema"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert plain(default) == want.get(f.name), (
            f"{cls.__name__}.{f.name}: {default!r} != schema {want.get(f.name)!r}"
        )

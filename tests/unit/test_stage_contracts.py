"""Every registered stage meets exactly one of the two stage contracts of r1v.core.interfaces."""

from __future__ import annotations

import pytest

from r1v.core.interfaces import RunOnceStage, TrainingStage
from r1v.core.registry import get_registry

RUN_ONCE = {"reassemble", "distill", "iterative_sft", "make_pairs"}
MODEL = {"reassemble": "model=tiny_reasoner", "grpo": "model=tiny_reasoner"}


@pytest.mark.parametrize("name", sorted(e.name for e in get_registry().entries("stage")))
def test_each_stage_meets_one_contract(name, compose):
    stage = get_registry().get("stage", name).factory(compose(f"stage={name}", MODEL.get(name, "model=tiny")))
    once, training = isinstance(stage, RunOnceStage), isinstance(stage, TrainingStage)
    assert once != training and once == (name in RUN_ONCE), (name, type(stage), once, training)

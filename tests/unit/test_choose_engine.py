"""r1v.generation.choose.choose_engine: the one engine chooser of validation, evaluation, chat, generate and GRPO."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from r1v.generation import StaticEngine
from r1v.generation.choose import choose_engine
from r1v.generation.hf import HFGenerate


def test_auto_picks_the_static_engine_where_it_runs_the_backbone(tiny_vlm):
    model, _ = tiny_vlm
    engine, name = choose_engine(model, temperature=0.7, top_p=0.9, compile=True)
    assert name == "static" and isinstance(engine, StaticEngine) and (engine.temperature, engine.top_p) == (0.7, 0.9)


def test_a_model_fetched_layer_by_layer_gets_transformers_generate(tiny_vlm):
    model, _ = tiny_vlm
    for name in ("auto", "static"):
        engine, chosen = choose_engine(model, name, "layer", temperature=0.7, compile=True)  # compile: static only
        assert chosen == "hf" and isinstance(engine, HFGenerate) and engine.temperature == 0.7


def test_an_unsupported_backbone_falls_back_to_hf(caplog):
    caplog.set_level(logging.INFO, logger="r1v.generation.choose")
    backbone = SimpleNamespace(config=SimpleNamespace(model_type="gpt2"))
    engine, name = choose_engine(SimpleNamespace(backbone=backbone))
    assert name == "hf" and isinstance(engine, HFGenerate)
    assert "the backbone is 'gpt2': use rollout=hf" in caplog.text  # said once, with the reason

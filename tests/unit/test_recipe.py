"""Recipes: the stage lists are checked before anything runs (one line each), and a changed config is
named key by key; the shipped recipes compose and pass the check."""

from __future__ import annotations

import pytest

from r1v.core.config import ConfigError
from r1v.recipe import changed_keys, check_stages


def recipe(*stages):
    return {"name": "t", "stages": list(stages)}


@pytest.mark.parametrize("name", ["r1v", "r1v2", "r1v3"])
def test_shipped_recipes_are_valid(name, registry):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from r1v.core.config import conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = OmegaConf.to_container(compose("recipe", overrides=[f"recipe={name}"]), resolve=True)
    stages = check_stages(cfg["recipe"])
    assert stages[0]["args"][1] == "model=tiny" and all(s.get("from") for s in stages[1:])


@pytest.mark.parametrize(("stages", "expected"), [
    ([{"name": "a", "args": ["stage=sfft"]}], "recipe t: stage 0 (a): unknown stage 'sfft' (known: align,"),
    ([{"name": "a", "args": ["stage=sft"]}, {"name": "b", "from": "c", "args": ["stage=grpo"]}],
     "recipe t: stage 1 (b): refers to 'c', which is not an earlier stage (earlier: a)"),
    ([{"name": "a", "args": ["stage=sft", "data.train={b}/x.jsonl"]}], "refers to 'b', which is not an earlier"),
    ([{"name": "a", "args": ["stage=sft"]}, {"name": "a", "args": ["stage=sft"]}], "every stage needs a unique name"),
    ([{"name": "a", "args": ["model=tiny"]}], "its args name no stage=<plugin>"),
])  # fmt: skip
def test_bad_stage_lists_are_one_line(stages, expected):
    with pytest.raises(ConfigError) as e:
        check_stages(recipe(*stages))
    assert expected in str(e.value) and "\n" not in str(e.value)
    if "sfft" in expected:
        assert "did you mean 'sft'" in str(e.value)


def test_changed_keys_are_named():
    old = {"recipe": {"stages": [{"args": ["a"]}], "eval": {"limit": 64}}, "seed": 0}
    new = {"recipe": {"stages": [{"args": ["b"]}], "eval": {"limit": 32}}, "seed": 0}
    assert changed_keys(old, new) == ["recipe.eval.limit", "recipe.stages"]
    assert changed_keys(old, old) == []


def test_plots_from_a_metrics_file(tmp_path):
    """python -m r1v plot: one PNG per panel that has data, several runs overlaid; a run without
    metrics.csv is one line."""
    from r1v.__main__ import main as cli
    from r1v.reports.plots import panels, read_metrics

    for name, shift in (("a", 0.0), ("b", 0.1)):
        run = tmp_path / name
        run.mkdir()
        rows = ["step,train/loss,reward/accuracy,reward/accuracy_std,completion/length_mean,val/accuracy"]
        rows += [f"{s},{2 - s / 50 + shift},{s / 100},0.1,{30 + s}," for s in range(40)] + ["39,,,,,0.5"]
        (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    metrics = read_metrics(tmp_path / "a")
    assert metrics["val/accuracy"] == ([39.0], [0.5]) and len(metrics["train/loss"][0]) == 40
    got = panels({"a": metrics})
    assert [s.metric for s in got["reward"]] == ["reward/accuracy"]  # std columns are not curves
    assert sorted(got) == ["accuracy", "loss", "response_length", "reward"]
    assert cli(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "png")]) == 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["accuracy.png", "loss.png", "response_length.png",
                                                                     "reward.png"]  # fmt: skip
    assert cli(["plot", str(tmp_path / "missing")]) == 2

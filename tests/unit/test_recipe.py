"""Recipes: the stage lists are checked before anything runs (one line each), and a changed config is
named key by key; the shipped recipes compose and pass the check."""

from __future__ import annotations

import pytest

from r1v.core.config import ConfigError
from r1v.recipe import changed_keys, check_stages


def recipe(*stages):
    return {"name": "t", "stages": list(stages)}


@pytest.mark.parametrize("name", ["r1v", "r1v2", "r1v3", "r1v_hard"])
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


def test_r1v_hard_scores_iterative_sft_with_its_reward_model(registry, tmp_path):
    """recipe=r1v_hard: the process reward model trains after re-assembly and is not evaluated; iterative SFT's
    scorer is that stage's run folder (quantile-calibrated); both stages' arguments compose as training configs."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from r1v.core.config import compose as compose_train
    from r1v.core.config import conf_dir
    from r1v.recipe import _stage_args

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = OmegaConf.to_container(compose("recipe", overrides=["recipe=r1v_hard"]), resolve=True)
    stages = check_stages(cfg["recipe"])
    order = ["align", "reassemble", "reward_model", "distill", "sft", "iterative_sft", "grpo"]
    assert [s["name"] for s in stages] == order
    by = {s["name"]: s for s in stages}
    assert by["reward_model"]["from"] == "reassemble" and by["reward_model"]["eval"] is False
    assert all(s.get("eval", True) for n, s in by.items() if n != "reward_model")
    rm = compose_train(_stage_args(by["reward_model"], cfg["recipe"], tmp_path, 0))
    assert rm["stage"]["name"] == "reward_model" and rm["data"]["name"] == "synthetic_hard_pairs"
    stage = rm["stage"]
    assert (stage["objective"], stage["head"]["pool"], stage["head"]["temperature"]) == ("process", "steps", 0.25)
    assert stage["max_steps"] == 1000 and rm["data"]["flaws"] == {"wrong_steps": 0.45, "contradicts_image": 0.45,
                                                                  "loop": 0.1}  # fmt: skip
    it = compose_train(_stage_args(by["iterative_sft"], cfg["recipe"], tmp_path, 0))
    assert it["stage"]["rm"]["scorer"] == {"name": "trained_reward_model", "path": str(tmp_path / "reward_model")}
    assert it["stage"]["rm"]["calibration"] == "quantile" and it["data"]["name"] == "synthetic_hard"
    assert {by[n]["from"] for n in ("distill", "sft")} == {"reassemble"}


def test_a_stage_with_eval_false_is_not_evaluated(tmp_path, monkeypatch):
    """eval: false skips a stage's evaluation even when it wrote weights (a reward model is not a policy); a
    non-boolean eval is a one-line config error."""
    import r1v.recipe as rr

    for name in ("rm", "pol"):
        (tmp_path / "runs" / "r" / name / "final").mkdir(parents=True)
        (tmp_path / "runs" / "r" / name / "final" / "trainable.safetensors").write_bytes(b"")
    evaluated: list[str] = []
    monkeypatch.setattr(rr, "_run", lambda module, args, log: 0)  # no training
    monkeypatch.setattr(rr, "evaluate_stage", lambda d, ev, log: evaluated.append(d.name) or ({"x": 1} if ev else None))
    monkeypatch.setattr("r1v.reports.recipe.write_report", lambda *a: None)
    stages = [{"name": "rm", "eval": False, "args": ["stage=reward_model"]},
              {"name": "pol", "from": "rm", "args": ["stage=sft"]}]  # fmt: skip
    cfg = {"recipe": {"name": "t", "stages": stages, "eval": {"limit": 4}}, "seed": 0,
           "paths": {"runs": str(tmp_path / "runs")}, "run": "r"}  # fmt: skip
    folder = rr.run_recipe(cfg)
    state = __import__("json").loads((folder / "recipe.json").read_text())
    assert state["stages"]["rm"]["eval"] is None and state["stages"]["pol"]["eval"] == {"x": 1}
    with pytest.raises(ConfigError, match="eval is true or false"):
        check_stages(recipe({"name": "a", "eval": "no", "args": ["stage=sft"]}))

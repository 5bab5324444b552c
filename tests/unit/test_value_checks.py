"""Values at composition: plugin knobs against their factory's annotations, settings against their ranges
(r1v.core.values.RANGES), each a single error line before anything is built."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import pytest
import yaml

from r1v.core.config import ConfigError, conf_dir, validate
from r1v.core.values import EXEMPT, RANGES, check_knob_values

CONF = Path(conf_dir())


@pytest.mark.parametrize(("overrides", "line"), [
    (["stage.batch_size=0"], "stage.batch_size=0: must be >= 1"),
    (["stage.max_steps=-5"], "stage.max_steps=-5: must be >= 1 or -1 (optimizer steps, -1: no step limit)"),
    (["model.adapter.hidden=abc"], "model.adapter.hidden='abc': expected an integer or null (adapter 'mlp')"),
])  # fmt: skip
def test_a_bad_value_stops_python_m_r1v_train_with_one_line_before_anything_is_built(
    compose, tmp_path, capsys, overrides, line
):
    """The path of ``python -m r1v.train``: its run() validates, and a user error is one line and exit 2; the run
    folder is never made."""
    from omegaconf import OmegaConf

    from r1v.core.errors import exit_on_user_error
    from r1v.train import run

    with pytest.raises(SystemExit) as e:
        exit_on_user_error(run, OmegaConf.create(compose(*overrides)), tmp_path / "run")
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"r1v: error: {line}"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("overrides", "line"), [
    (["stage.lr=-0.001"], "stage.lr=-0.001: must be >= 0 (0: the weights stay as they are)"),
    (["stage.warmup_ratio=1"], "stage.warmup_ratio=1: must be in [0, 1) (a share of max_steps)"),
    (["stage.betas=[0.9,1.0]"], "stage.betas=[0.9, 1.0]: each value must be in [0, 1); 1.0 is not"),
    (["stage.val_every=null"], "stage.val_every=null: must be >= 1 (null is not allowed here)"),
    (["stage=grpo", "stage.group_size=1"], "stage.group_size=1: must be >= 2 (GRPO's advantage is relative to the "
                                           "group, 0 for a group of one; R1V: 8)"),
    # the stages once checked these by hand; the range check is now the only one
    (["stage=sft", "stage.loss_chunk_tokens=-1"], "stage.loss_chunk_tokens=-1: must be >= 0 (0: transformers' loss "
                                                  "over the full logits)"),
    (["stage=sft", "stage.accumulate_grad_batches=0"], "stage.accumulate_grad_batches=0: must be >= 1 (batches per "
                                                       "optimizer step)"),
    (["stage=mpo", "stage.beta=0"], "stage.beta=0: must be > 0 (the implicit reward β·log(π/π_ref) needs β > 0, "
                                    "MPO: 0.1)"),
    (["stage=make_pairs", "stage.k=1"], "stage.k=1: must be >= 2 (a pair needs at least 2 sampled responses per "
                                        "prompt)"),
    (["stage=grpo", "stage.rollout.top_p=0"], "stage.rollout.top_p=0: must be in (0, 1] (1: no nucleus cut)"),
    (["stage=iterative_sft", "stage.taus=[2,6]"], "stage.taus=[2, 6]: each value must be in [0, 5] (R1V's 0–5 "
                                                  "reward-model scale); 6 is not"),
    (["stage=iterative_sft", "stage.errors.min_score=7"], "stage.errors.min_score=7: must be in [0, 5] or null "
                                                          "(null: every wrong answer enters, as in R1V)"),
    (["stage=iterative_sft", "stage.errors.min_score=abc"], "stage.errors.min_score='abc': must be in [0, 5] or "
                                                            "null (null: every wrong answer enters, as in R1V)"),
    (["stage=iterative_sft", "stage.errors.pool=all"], "stage.errors.pool='all': must be >= 1"),
    (["trainer.num_nodes=0"], "trainer.num_nodes=0: must be >= 1"),
    (["evaluation.every_n_steps=0"], "evaluation.every_n_steps=0: must be >= 1"),
    (["model.vision.select_layer=last"], "model.vision.select_layer='last': expected an integer (vision 'tiny')"),
    (["stage=grpo", "stage.policy_loss.loss_agg=seq_means"],
     "stage.policy_loss.loss_agg='seq_means': expected one of 'seq_mean', 'token_mean', 'constant' (policy_loss "
     "'grpo') — did you mean 'seq_mean'?"),
    (["data.tasks=[1,2]"], "data.tasks=[1, 2]: expected a list (each a string) or null (dataset 'synthetic')"),
    (["rewards.accuracy.weight=heavy"], "rewards.accuracy.weight='heavy': expected a number (reward 'accuracy')"),
])  # fmt: skip
def test_out_of_range_and_mistyped_values_are_one_line(compose, registry, overrides, line):
    with pytest.raises(ConfigError) as e:
        validate(compose(*overrides), registry)
    assert str(e.value) == line


@pytest.mark.parametrize(("inside", "outside"), [
    (["stage.max_steps=-1"], ["stage.max_steps=0"]),
    (["stage.warmup_ratio=0", "stage.lr=1"], ["stage.warmup_ratio=-0.1"]),  # an int stands for a float
    (["stage.gradient_clip_val=null"], ["stage.gradient_clip_val=-1"]),
    (["stage=iterative_sft"], ["stage=iterative_sft", "stage.epochs_per_round=0"]),  # its max_steps 0: EXEMPT
    (["stage=grpo", "stage.max_reward_failure_share=null"], ["stage=grpo", "stage.max_reward_failure_share=1.5"]),
    (["trainer.devices=auto"], ["trainer.devices=0"]),
    (["model.adapter.hidden=null", "model.adapter.downsample_ratio=1"], ["model.adapter.downsample_ratio=x"]),
])  # fmt: skip
def test_the_edges_of_a_range_pass_and_one_step_outside_does_not(compose, registry, inside, outside):
    validate(compose(*inside), registry)
    with pytest.raises(ConfigError):
        validate(compose(*outside), registry)


def _knob_entry(factory):
    return SimpleNamespace(kind="adapter", name="a", factory=factory)


def test_knobs_are_checked_against_annotations_an_int_standing_for_a_float():
    def factory(width: int = 8, scale: float = 0.5, mode: Literal["a", "b"] = "a", sizes: list[int] | None = None,
                flag: bool = False, path: str | None = None, loose=None):  # fmt: skip
        return None

    entry = _knob_entry(factory)
    check_knob_values(entry, {"width": 3, "scale": 1, "mode": "b", "sizes": [1, 2], "flag": True, "path": None,
                              "loose": object()}, "x")  # fmt: skip
    for knobs, expected in [({"width": 2.5}, "an integer"), ({"width": True}, "an integer"),
                            ({"scale": "big"}, "a number"), ({"mode": "c"}, "one of 'a', 'b'"),
                            ({"sizes": [1, "x"]}, "a list (each an integer) or null"),
                            ({"flag": "yes"}, "true or false"), ({"width": None}, "an integer")]:  # fmt: skip
        with pytest.raises(ConfigError, match="expected " + expected.replace("(", r"\(").replace(")", r"\)")):
            check_knob_values(entry, knobs, "x")


def test_unannotated_or_unresolvable_factories_accept_any_value():
    """A third-party factory without annotations (or with ones that do not resolve) is not refused."""

    def bare(width=8):
        return None

    def unresolvable(width: NoSuchType = 8):  # type: ignore[name-defined]  # noqa: F821
        return None

    check_knob_values(_knob_entry(bare), {"width": "abc"}, "x")
    check_knob_values(_knob_entry(unresolvable), {"width": "abc"}, "x")


def _numeric_settings(node: dict, prefix: str) -> list[str]:
    out = []
    for key, value in node.items():
        if isinstance(value, dict):
            out += _numeric_settings(value, f"{prefix}.{key}")
        elif (
            value is None
            or (isinstance(value, int | float) and not isinstance(value, bool))
            or (isinstance(value, list) and value and all(isinstance(v, int | float) for v in value))
        ):
            out.append(f"{prefix}.{key}")
    return out


def _options() -> list[tuple[str, str, list[str]]]:
    """(option, package, its numeric or null settings) of every stage, trainer, distill and evaluation option."""
    out = []
    for group in ("stage", "trainer", "distill", "evaluation"):
        for path in sorted((CONF / group).glob("*.yaml")):
            out.append((path.stem, group, _numeric_settings(yaml.safe_load(path.read_text()), group)))
    return out


def test_every_numeric_setting_has_a_range_or_a_reason():
    """A new numeric setting in conf/stage (or trainer, distill, evaluation) needs an entry in RANGES, or one in
    EXEMPT saying why not; and every entry names a real setting."""
    missing = [f"{key} ({option})" for option, _, keys in _options() for key in keys
               if key not in RANGES and f"{key}@{option}" not in EXEMPT]  # fmt: skip
    assert not missing, f"give these a range in r1v/core/values.py RANGES: {missing}"
    known = {key for _, _, keys in _options() for key in keys}
    assert not [k for k in RANGES if k not in known], "RANGES names settings no option has"
    assert all(k.split("@")[0] in known for k in EXEMPT)

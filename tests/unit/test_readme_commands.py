"""Every ``python -m r1v.train …`` command in README.md's code blocks composes and validates, so a README example
that would stop at its first line fails here instead; and GRPO's rollout knobs are real keys of the stage."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.conftest import ROOT

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)


def readme_train_commands() -> list[tuple[str, list[str]]]:
    """(command as written, its overrides) for each ``r1v.train`` command in README.md's code blocks. Placeholders
    are left out: ``...`` (the previous command's arguments), ``[key=value]`` optional parts are kept without their
    brackets, values in capitals (``N``, ``MASTER``) and ``<...>`` are dropped, as are flags (``-m``, ``--help``)
    and ``paths.runs`` (a shared folder that need not exist here)."""
    commands = []
    for block in FENCE.findall((ROOT / "README.md").read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            if "r1v.train" not in line:
                continue
            words = shlex.split(line, comments=True)
            if "r1v.train" not in words:
                continue
            args = []
            for w in words[words.index("r1v.train") + 1 :]:
                if w in ("&&", "|", ";"):
                    break
                if re.fullmatch(r"\[[\w.+~]+=.*\]", w):  # [resume=auto]: optional
                    w = w[1:-1]
                value = w.partition("=")[2]
                if (w.startswith("-") or "=" not in w or "<" in w or re.fullmatch(r"[A-Z]+", value)
                        or w.startswith("paths.runs=")):  # fmt: skip
                    continue
                args.append(w)
            commands.append((line.split("#")[0].strip(), args))
    return commands


COMMANDS = readme_train_commands()


def test_the_readme_has_train_commands():
    assert len(COMMANDS) >= 25  # the parser still finds them (a changed README layout would make the test empty)
    assert ("python -m r1v.train stage=grpo ... stage.rollout.max_batch_size=16 stage.rollout.fuse=true",
            ["stage=grpo", "stage.rollout.max_batch_size=16", "stage.rollout.fuse=true"]) in COMMANDS  # fmt: skip


def test_every_readme_train_command_composes():
    """One compose per command (sweeps: their first job): names resolve, keys exist, knobs bind, values fit."""
    from r1v.core.config import _first_of_sweep, compose

    failed = []
    for line, args in COMMANDS:
        try:
            compose([_first_of_sweep(a) for a in args])
        except Exception as e:  # collect every failing line, then report them together
            failed.append(f"{line}\n    -> {str(e).splitlines()[0]}")
    assert not failed, "README commands that do not compose:\n" + "\n".join(failed)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["stage.rollout.name=hf"], "HFGenerate"),
    (["stage.rollout.max_batch_size=16", "stage.rollout.window=64"], "StaticEngine"),
])  # fmt: skip
def test_grpo_rollout_engine_knobs_need_no_plus(registry, overrides, expected):
    """The static engine's knobs are keys of conf/stage/grpo.yaml (no ``+``), and switching to ``hf`` leaves them
    out while they keep their defaults."""
    from r1v.core.config import build_plugin, compose

    cfg = compose(["stage=grpo", "model=tiny_reasoner", *overrides])
    engine = build_plugin(registry, "rollout", cfg["stage"]["rollout"], "stage.rollout")
    assert type(engine).__name__ == expected
    if expected == "StaticEngine":
        assert (engine.max_batch_size, engine.window) == (16, 64)


def test_a_static_knob_set_for_the_hf_engine_is_still_one_line():
    from r1v.core.config import ConfigError, compose

    with pytest.raises(ConfigError) as err:
        compose(["stage=grpo", "stage.rollout.name=hf", "stage.rollout.window=64"])
    assert str(err.value) == ("stage.rollout: rollout 'hf' has no option 'window' "
                              "(allowed: temperature, top_p, repetition_penalty)")  # fmt: skip

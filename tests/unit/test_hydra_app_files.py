"""What the Hydra apps show and where they write: ``--help`` lists only the groups r1v.train takes, sweep jobs get
flat bounded folder names, and r1v.eval's log goes to the evaluation's folder, not the current one."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


def test_train_help_lists_its_groups_but_not_the_recipes(capsys, monkeypatch):
    from r1v.train import main

    monkeypatch.setattr("sys.argv", ["r1v.train"])
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    groups = lines[lines.index("== Configuration groups ==") + 3 : lines.index("== Config ==")]
    assert [g.split(":")[0] for g in groups if ":" in g] == [
        "adapter", "audio", "audio_adapter", "backbone", "data", "distill", "evaluation", "logger", "model", "reward",
        "stage", "trainer", "vision"]  # fmt: skip
    assert "stage: align, distill, grpo, iterative_sft, make_pairs, mpo, reassemble, reward_model, sft" in groups
    assert ("(R1V's multi-stage recipes run with python -m r1v.recipe recipe=NAME; its --help lists them.)"
            in groups)  # fmt: skip


@pytest.mark.parametrize(("overrides", "swept", "name"), [
    (["stage.lr=0.003", "checkpoint=runs/re"], ["-m", "stage.lr=1e-3,3e-3"], "4_lr-0.003+checkpoint-runs-re"),
    (["checkpoint=runs/re", "stage.lr=0.003"], ["-m", "stage.lr=1e-3,3e-3"], "4_lr-0.003+checkpoint-runs-re"),
    (["reward=[accuracy,format]", "+stage.x='a b'"], [], "4_reward-accuracy-format+x-a-b"),
    (["run=sw", "paths.runs=/tmp/r", "stage.lr=1"], [], "4_lr-1"),
    ([], [], "4"),
])  # fmt: skip
def test_sweep_job_folder_names_are_flat_and_lead_with_what_is_swept(monkeypatch, overrides, swept, name):
    from r1v.core.resolvers import sweep_subdir

    monkeypatch.setattr("sys.argv", ["r1v.train", *swept])
    assert sweep_subdir(4, overrides, ["run", "resume", "paths.runs"]) == name


def test_a_long_sweep_job_folder_name_is_cut_and_stays_unique(monkeypatch):
    from r1v.core.resolvers import sweep_subdir

    monkeypatch.setattr("sys.argv", ["r1v.train", "-m", "stage.lr=1e-3,3e-3"])
    base = [f"stage.rollout.knob_{i}=/some/long/path/{i}" for i in range(8)]
    a, b = (sweep_subdir(12, [*base, f"stage.lr={lr}"]) for lr in ("0.001", "0.003"))
    assert len(a) == len(b) == 80 and "/" not in a + b and "=" not in a + b and "," not in a + b
    assert a.startswith("12_lr-0.001+knob_0-some-long-path-0+knob_1-") and b.startswith("12_lr-0.003+")
    assert a[-9] == "_" and a[-8:] != b[-8:]  # 8 hex digits of all the overrides


def test_the_sweep_subdir_composes_from_the_job_config(monkeypatch):
    """conf/config.yaml's hydra.sweep.subdir, as Hydra resolves it for job 1 of ``-m stage.lr=1e-3,3e-3``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    from r1v.core.config import conf_dir, register_resolvers

    register_resolvers()
    monkeypatch.setattr("sys.argv", ["r1v.train", "-m", "checkpoint=runs/re", "stage.lr=1e-3,3e-3", "run=sw"])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = compose("config", overrides=["checkpoint=runs/re", "stage.lr=3e-3", "run=sw"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.job.num = 1
    assert OmegaConf.select(cfg, "hydra.sweep.subdir") == "1_lr-3e-3+checkpoint-runs-re"


def test_eval_writes_its_log_into_the_evaluation_folder_not_the_current_one(tmp_path):
    """A run folder (its config.yaml and run.json mark it) and an option error that stops r1v.eval right after
    Hydra has set up its log: eval.log is in <run>/eval/<benchmark>/, none in the current folder."""
    run, cwd = tmp_path / "run", tmp_path / "cwd"
    run.mkdir()
    cwd.mkdir()
    (run / "config.yaml").write_text("{}\n")
    (run / "run.json").write_text("{}\n")
    proc = run_cli([f"checkpoint={run}", "prompt=chatty"], cwd, module="r1v.eval")
    assert proc.returncode == 2 and "prompt=chatty: not a prompt style" in proc.stderr
    assert sorted(p.name for p in cwd.iterdir()) == []
    assert (run / "eval" / "synthetic" / "eval.log").is_file()

"""Hydra composition: every option composes and resolves; presets; one-line override errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from r1v.core.config import ConfigError, conf_dir, precheck_overrides, validate

CONF = Path(conf_dir())
PLUGIN_GROUPS = ("vision", "adapter", "backbone", "data", "reward", "stage")
REQUIRED = {
    "backbone/hf": ["model.backbone.path=/nonexistent"],
    "data/jsonl": ["data.train=/nonexistent.jsonl"],
    "data/parquet": ["data.train=/nonexistent/*.parquet", "data.columns.question=prompt"],
    "data/hf_disk": ["data.train=/nonexistent/mm_ds", "data.columns.question=prompt"],
    "model/internvl_chat": ["model.internvl=/nonexistent"],
    "vision/siglip": ["model.vision.pretrained=/nonexistent"],
    "vision/clip": ["model.vision.pretrained=/nonexistent"],
}


def options() -> list[str]:
    """Every option of the training app's groups (recipe/ is python -m r1v.recipe's: see test_recipe.py)."""
    return sorted(f"{p.parent.name}/{p.stem}" for p in CONF.glob("*/*.yaml") if p.parent.name != "recipe")


def test_required_groups_exist():
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    assert {"model", "vision", "adapter", "backbone", "stage", "data", "trainer", "logger"} <= groups


@pytest.mark.parametrize("option", options())
def test_every_option_composes_and_resolves(option, compose, registry):
    group, name = option.split("/")
    choice = f"reward=[{name}]" if group == "reward" else f"{group}={name}"
    cfg = compose(choice, *REQUIRED.get(option, []))
    validate(cfg, registry)


@pytest.mark.parametrize("group", PLUGIN_GROUPS)
def test_plugin_groups_hold_names_not_targets(group):
    for path in (CONF / group).glob("*.yaml"):
        text = path.read_text()
        assert "_target_" not in text, f"{path}: plugin groups select registry names, not _target_"
        node = yaml.safe_load(text)
        assert "name" in node, f"{path}: needs name:"


def test_preset_chooses_parts_and_cli_overrides_it(compose):
    cfg = compose("model=tiny_reasoner")
    assert cfg["model"]["backbone"]["name"] == "tiny_reasoner"
    cfg = compose("model=tiny_reasoner", "backbone=tiny_instruct", "vision=timm")
    assert cfg["model"]["backbone"]["name"] == "tiny_instruct"
    assert cfg["model"]["vision"]["name"] == "timm"
    assert cfg["model"]["preset"] == "tiny_reasoner"


@pytest.mark.parametrize(("name", "stage"), [("deepspeed_z2", 2), ("deepspeed_z3", 3)])
def test_deepspeed_trainer_configs_instantiate(compose, name, stage):
    from hydra.utils import instantiate

    strategy = instantiate(compose(f"trainer={name}")["trainer"]["strategy"])  # every knob is a real kwarg
    assert type(strategy).__name__ == "DeepSpeedStrategy"
    assert strategy.config["zero_optimization"]["stage"] == stage


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_misspelled_override_key():
    with pytest.raises(ConfigError) as e:
        precheck_overrides(["stage.lrr=1e-3"])
    msg = one_line(e)
    assert "'lrr' is not a key of stage" in msg and "did you mean 'lr'" in msg and "+stage.lrr" in msg


def test_several_keys_the_stage_lacks_are_still_one_line():
    """Keys another stage has (stage=reassemble has no batch size) give one line even when several are wrong."""
    with pytest.raises(ConfigError) as e:
        precheck_overrides(["stage=reassemble", "stage.batch_size=4", "stage.val_generate=0"])
    msg = one_line(e)
    assert "'batch_size' is not a key of stage (keys: name, trainable)" in msg


def test_a_node_value_with_keys_the_node_lacks_says_how_to_set_them():
    """``stage.rm.scorer={name: x, path: y}``: the key exists, its value adds ``path``; the line said "'scorer' is
    not a key of stage.rm — did you mean 'scorer'?" before."""
    with pytest.raises(ConfigError) as e:
        precheck_overrides(["stage=iterative_sft", "stage.rm.scorer={name: x, path: y}"])
    msg = one_line(e)
    assert "did you mean" not in msg and "stage.rm.scorer is {name: model_likelihood}" in msg
    assert "stage.rm.scorer.KNOB=VALUE" in msg and "++stage.rm.scorer={name: x, path: y}" in msg


def test_unknown_group_option():
    with pytest.raises(ConfigError) as e:
        precheck_overrides(["vision=tinyy"])
    msg = one_line(e)
    assert "no option 'tinyy' in config group 'vision'" in msg and "did you mean 'tiny'" in msg


def test_unknown_top_level_key():
    with pytest.raises(ConfigError) as e:
        precheck_overrides(["stag.lr=1"])
    assert "did you mean 'stage'" in one_line(e)


def test_sweep_overrides_are_prechecked_on_their_first_value():
    precheck_overrides(["stage.lr=1e-3,3e-3"])
    with pytest.raises(ConfigError):
        precheck_overrides(["stage.lrr=1e-3,3e-3"])


def test_unknown_plugin_name_in_config(compose, registry):
    cfg = compose("model.vision.name=tinyy")
    with pytest.raises(ConfigError) as e:
        validate(cfg, registry)
    assert "model.vision.name: unknown vision 'tinyy'" in one_line(e)


def test_unknown_knob_in_config(compose, registry):
    cfg = compose("+model.adapter.hiden=3")
    with pytest.raises(ConfigError) as e:
        validate(cfg, registry)
    assert "has no option 'hiden'" in one_line(e) and "did you mean 'hidden'" in str(e.value)


def test_required_value_must_be_set():
    with pytest.raises(ConfigError) as e:
        precheck_overrides(["data=jsonl"])
    assert "data.train must be set (add data.train=...)" in one_line(e)


@pytest.mark.parametrize("preset", [None, "max_split_size_mb:128"])
def test_train_turns_on_expandable_segments_unless_the_user_chose(monkeypatch, preset):
    """r1v.train sets PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before anything allocates on CUDA (the
    H200 runs cached tens of GiB above allocation without it); a value the user set is left alone."""
    import r1v.train

    if preset is None:
        monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    else:
        monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", preset)
    seen = []
    monkeypatch.setattr(r1v.train, "hydra_entry", lambda *a: seen.append(os.environ["PYTORCH_CUDA_ALLOC_CONF"]))
    r1v.train.main([])
    assert seen == [preset or "expandable_segments:True"]


def test_a_components_config_option_is_derived_from_its_registration():
    """One declaration per component: a registered factory's keyword arguments and defaults make its option."""
    from types import SimpleNamespace

    from r1v.core.config import ADAPTER_FIXED, derived_node

    def encoder(size: int, width: int = 16, scale: float = 0.5, layers: tuple = (1, 2), act=print, flag: bool = False):
        return None

    node = derived_node(SimpleNamespace(kind="vision", name="enc", factory=encoder, meta={}))
    assert node == {"name": "enc", "size": "???", "width": 16, "scale": 0.5, "layers": [1, 2], "flag": False}

    def adapter(vision_hidden: int, llm_hidden: int, hidden: int = 64):
        return None

    node = derived_node(SimpleNamespace(kind="adapter", name="a", factory=adapter, meta={}), ADAPTER_FIXED)
    assert node == {"name": "a", "hidden": 64}  # the builder passes the widths itself
    reward = derived_node(SimpleNamespace(kind="reward", name="r", factory=lambda limit=3: None, meta={"weight": 0.2}))
    assert reward == {"name": "r", "weight": 0.2, "limit": 3}


@pytest.mark.parametrize(("overrides", "message"), [
    (["stage.lr=abc"], "stage.lr='abc': must be a number (default 0.002 in conf/stage/align.yaml)"),
    (["stage.max_steps=1e3"], "stage.max_steps=1000.0: must be an integer"),
    (["stage=grpo", "stage.ssb.enabled=yes"], "stage.ssb.enabled='yes': must be a boolean (default False in "
                                              "conf/stage/grpo.yaml)"),
    (["stage.trainable=adapter"], "stage.trainable='adapter': must be a list"),
    (["data.n_train=many"], "data.n_train='many': must be an integer (default 4000 in conf/data/synthetic.yaml)"),
    (["distill.batch_size=x"], "distill.batch_size='x': must be an integer"),
])  # fmt: skip
def test_a_setting_of_the_wrong_type_is_one_line_before_anything_is_built(compose, registry, overrides, message):
    """The types are those of the defaults in the chosen option's YAML, the one place each default lives."""
    from r1v.core.config import ConfigError, validate

    with pytest.raises(ConfigError) as err:
        validate(compose(*overrides), registry)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_right_types_pass_and_ints_stand_for_floats(compose, registry):
    from r1v.core.config import validate

    cfg = compose("stage.lr=1", "stage=grpo", "stage.ssb.prefilter_pool=64", "stage.gradient_clip_val=0.5")
    validate(cfg, registry)  # a null default (prefilter_pool, gradient_clip_val) fixes no type


def test_conf_dir_falls_back_to_the_checkouts_conf(monkeypatch):
    """Without an installed ``r1v.conf`` (tests run from a checkout against a wheel's plugins, as on the GPU
    machine) the source tree's conf/ is used; it pointed into r1v/ after config.py moved to r1v/core/."""
    from importlib import resources
    from pathlib import Path

    from r1v.core import config

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(resources, "files", missing)
    assert Path(config.conf_dir()) == Path(__file__).resolve().parents[2] / "conf"
    assert (Path(config.conf_dir()) / "config.yaml").is_file()


def test_a_stage_that_expects_trained_parts_names_what_starts_untrained(compose):
    """GRPO, MPO, SFT … refine a model that already answers: an adapter with no checkpoint= and no pretrained=
    is named in one line (said at the start and the end of the run); align trains it from scratch on purpose."""
    from r1v.stages.setup import untrained_note, untrained_parts

    cfg = compose("stage=grpo")
    assert untrained_parts(cfg) == ["adapter"]
    note = untrained_note(cfg, ["adapter"])
    assert note.startswith("stage=grpo starts from an untrained adapter (no checkpoint=") and "\n" not in note
    assert "checkpoint=<that run>" in note
    assert untrained_parts(compose("stage=grpo", "checkpoint=runs/sft")) == []
    assert untrained_parts(compose("stage=mpo", "model.adapter.pretrained=/w/adapter.safetensors")) == []
    assert untrained_parts(compose()) == []  # align


def test_a_finished_run_names_the_commands_to_run_next(compose, tmp_path):
    """The main job ends with what a newcomer runs next: chat with it, evaluate it, and R1V's next stage."""
    from r1v.stages.setup import next_steps

    lines = next_steps(compose(), tmp_path / "runs" / "align")
    assert lines[0].startswith(f"python -m r1v chat --checkpoint {tmp_path}/runs/align ")
    assert lines[1] == f"python -m r1v.eval checkpoint={tmp_path}/runs/align"
    assert lines[2].startswith(f"python -m r1v.train stage=reassemble model=tiny_reasoner checkpoint={tmp_path}/runs")
    sft = next_steps(compose("stage=sft", "model=tiny_reasoner"), tmp_path / "s")
    assert sft[2].startswith(f"python -m r1v.train stage=grpo model=tiny_reasoner checkpoint={tmp_path}/s ")
    assert len(next_steps(compose("stage=grpo", "model=tiny_reasoner"), tmp_path / "g")) == 2  # the chain's end


def test_a_plugins_own_knobs_need_no_plus(compose):
    """``stage.length`` holds only ``name``; a knob of the chosen controller's factory is accepted as it is, and a
    word that is no knob of it is still one line."""
    cfg = compose("stage=grpo", "stage.length.name=fixed", "stage.length.repetition_penalty=1.3")
    assert cfg["stage"]["length"] == {"name": "fixed", "repetition_penalty": 1.3}
    from r1v.core.config import compose as r1v_compose

    assert r1v_compose(["stage=grpo", "stage.length.name=fixed", "stage.length.repetition_penalty=1.3"])["stage"][
        "length"] == {"name": "fixed", "repetition_penalty": 1.3}  # fmt: skip
    with pytest.raises(ConfigError) as e:
        r1v_compose(["stage=grpo", "stage.length.name=fixed", "stage.length.penalty=1.3"])
    assert "'penalty' is not a key of stage.length" in one_line(e)


def test_a_recipe_override_error_is_explained_against_the_recipe_config():
    """``python -m r1v.recipe``'s primary config is ``recipe``: its override errors are one line, not a traceback
    from composing the training config."""
    with pytest.raises(ConfigError) as e:
        precheck_overrides(["recipe=r1v_omni", "recipe.overrides={sft: ['stage.max_steps=500']}"], config="recipe")
    assert "\n" not in str(e.value)
    assert "adds keys that recipe.overrides does not have" in str(e.value)
    assert "++recipe.overrides={sft: ['stage.max_steps=500']}" in str(e.value)

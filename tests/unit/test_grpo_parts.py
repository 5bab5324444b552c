"""GRPO building blocks against hand-computed values: advantages, every loss variant, KL, the sample
buffer, the adapter reference, chunked log-probs and the reward runner's failure handling."""

from __future__ import annotations

import math
import time

import pytest
import torch

from r1v.core.interfaces import RewardInput
from r1v.rl.grpo import AdapterReference, Rollout, SelectiveSampleBuffer, equal_groups, group_advantages
from r1v.rl.policy_loss import aggregate, grpo, grpo_loss
from r1v.rl.rewards import RewardRunner


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # two groups of 4
    adv = group_advantages(r, 4)
    # group 1: mean 0.5, std (population) 0.5 -> ±1; group 2: all equal -> 0
    assert torch.allclose(adv, torch.tensor([1.0, -1.0, -1.0, 1.0, 0, 0, 0, 0]), atol=1e-5)
    assert torch.allclose(group_advantages(r, 4, scale=False), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    assert equal_groups(r, 4).tolist() == [False, True]
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(r, 3)


def _case():
    # 2 completions, T = 3; the second has one padding token
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -9.0]])
    old = torch.tensor([[-1.1, -1.5, -0.5], [-0.3, -0.8, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -2.0])
    return logp, old, mask, adv


def _per_token_by_hand(logp, old, adv, eps_low, eps_high):
    out = []
    for b in range(2):
        row = []
        for t in range(3):
            ratio = math.exp(logp[b, t] - old[b, t])
            a = float(adv[b])
            row.append(-min(ratio * a, min(max(ratio, 1 - eps_low), 1 + eps_high) * a))
        out.append(row)
    return torch.tensor(out)


@pytest.mark.parametrize("agg", ["seq_mean", "token_mean", "constant"])
@pytest.mark.parametrize("eps", [(0.2, 0.2), (0.2, 0.28)])
def test_clipped_loss_every_aggregation(agg, eps):
    logp, old, mask, adv = _case()
    per_token = _per_token_by_hand(logp, old, adv, *eps)
    m = mask.float()
    expected = {
        "seq_mean": ((per_token * m).sum(1) / m.sum(1)).mean(),
        "token_mean": (per_token * m).sum() / m.sum(),
        "constant": (per_token * m).sum() / (2 * 8),  # Dr. GRPO: B · max_len with max_len = 8
    }[agg]
    loss, metrics = grpo_loss(logp, old, None, adv, mask, eps_low=eps[0], eps_high=eps[1], loss_agg=agg, max_len=8)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    # ratios: row 0 (Â=+1) 1.105, 0.607, 1 — none above 1+ε, and below 1−ε the unclipped term is the min;
    # row 1 (Â=−2) 1, exp(−0.4)=0.670 < 0.8 — clipped: 1 of the 5 real tokens
    assert metrics["clip_fraction"].item() == pytest.approx(0.2) and "kl" not in metrics


def test_ratio_one_gives_minus_mean_advantage_and_masks_padding():
    logp, _, mask, adv = _case()
    loss, m = grpo_loss(logp, logp.clone(), None, adv, mask)  # μ = 1: old = current
    assert loss.item() == pytest.approx(-(1.0 + -2.0) / 2)
    assert m["clip_fraction"].item() == 0 and m["ratio_mean"].item() == pytest.approx(1.0)
    poisoned = logp.clone()
    poisoned[1, 2] = 1e4  # a padding position: must not matter
    assert grpo_loss(poisoned, poisoned.clone(), None, adv, mask)[0].item() == pytest.approx(loss.item())


def test_k3_kl_by_hand_and_beta_zero_ignores_the_reference():
    logp, old, mask, adv = _case()
    ref = logp - 0.1
    base, _ = grpo_loss(logp, old, None, adv, mask)
    with_kl, m = grpo_loss(logp, old, ref, adv, mask, beta=0.5)
    k3 = math.exp(-0.1) + 0.1 - 1  # exp(ref−logp) − (ref−logp) − 1 at every token
    assert m["kl"].item() == pytest.approx(k3, rel=1e-5)
    assert with_kl.item() == pytest.approx(base.item() + 0.5 * k3, rel=1e-5)
    assert grpo_loss(logp, old, ref, adv, mask, beta=0.0)[0].item() == pytest.approx(base.item())
    assert grpo(beta=0.0).beta == 0.0


def test_gradient_of_the_clipped_objective():
    """For Â>0 with ρ > 1+ε the gradient vanishes (clipped); inside the trust region it is −Â·ρ per token."""
    logp = torch.tensor([[0.5, 0.05]], requires_grad=True)
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    loss, _ = grpo_loss(logp, old, None, torch.tensor([1.0]), mask, loss_agg="token_mean")
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0  # ρ = e^0.5 = 1.65 > 1.2: clipped
    assert logp.grad[0, 1].item() == pytest.approx(-math.exp(0.05) / 2)


def test_loss_knobs_are_checked():
    with pytest.raises(ValueError, match="loss_agg 'mean' is not allowed"):
        grpo(loss_agg="mean")
    with pytest.raises(ValueError, match="needs max_len"):
        grpo(loss_agg="constant")
    with pytest.raises(ValueError, match="not allowed"):
        aggregate(torch.zeros(1, 1), torch.ones(1, 1), "median")


def test_selective_sample_buffer_keeps_nonzero_and_replays_by_abs_advantage():
    buf = SelectiveSampleBuffer(capacity=3, seed=0)
    rolls = [Rollout(k, [1], [2], adv, old_logp=torch.zeros(1)) for k, adv in enumerate([0.0, 3.0, -1.0, 0.0])]
    assert buf.add(rolls, indices=[10, 11, 12, 13]) == 2 and len(buf) == 2
    draws = buf.sample(4000)
    share = sum(i == 11 for _, i in draws) / len(draws)
    assert share == pytest.approx(0.75, abs=0.03)  # |3| / (|3| + |−1|)
    buf.add([Rollout(0, [1], [2], 1.0, old_logp=torch.zeros(1)) for _ in range(3)], indices=[20])
    assert len(buf) == 3 and all(i == 20 for _, i in buf.items)  # bounded: oldest out first
    state = buf.state_dict()
    other = SelectiveSampleBuffer(3)
    other.load_state_dict(state)
    assert [i for _, i in other.sample(5)] == [i for _, i in buf.sample(5)]


def test_adapter_reference_swaps_only_the_trainable_copy():
    torch.manual_seed(0)  # float32 add-then-subtract is not exact: fixed weights, and a tolerance below
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    ref = AdapterReference(model, ["1.weight", "1.bias"])
    x = torch.ones(1, 2)
    before = model(x).item()
    with torch.no_grad():
        model[1].weight.add_(1.0)
        model[0].weight.add_(1.0)  # not in the copy: the reference shares it
    trained = model(x).item()
    with ref.active():
        start = model(x).item()
    with torch.no_grad():
        model[1].weight.sub_(1.0)
        shared = model(x).item()
        model[1].weight.add_(1.0)
    assert start == pytest.approx(shared, rel=1e-5, abs=1e-6)
    assert start != pytest.approx(before) and trained != pytest.approx(start)
    assert model(x).item() == trained  # swapped back
    assert ref.initial["1.weight"].data_ptr() != model[1].weight.data_ptr()


def test_chunked_logprobs_equal_the_full_computation(tiny_vlm):
    from r1v.data.synthetic import generate
    from r1v.rl.grpo import token_logprobs

    model, processor = tiny_vlm
    samples = [generate(i, "val")[0] for i in range(3)]
    batch = processor.collate([processor.encode(s, "reasoning") for s in samples], padding_side="left")
    n = 12
    with torch.no_grad():
        chunked, ent = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["pixel_values"], n,
                                      chunk=5, with_entropy=True)  # fmt: skip
        logits = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).logits.float()
    full = torch.log_softmax(logits[:, -n - 1 : -1], -1).gather(2, batch["input_ids"][:, -n:, None])[..., 0]
    assert chunked.shape == (3, n) and torch.allclose(chunked, full, atol=1e-5)
    p = torch.softmax(logits[:, -n - 1 : -1], -1)
    assert torch.allclose(ent, -(p * p.clamp_min(1e-30).log()).sum(-1), atol=1e-4)


class Sleepy:
    """A reward that hangs on one sample (spawned workers import it from this module)."""

    def __call__(self, x: RewardInput) -> dict[str, float]:
        if x.completion == "hang":
            time.sleep(60)
        if x.completion == "nan":
            return {"sleepy": float("nan")}
        if x.completion == "boom":
            raise RuntimeError("bad")
        if x.completion == "plain":
            return 0.25  # a number is the reward's one part, through the pool too
        return {"sleepy": 1.0}


def test_reward_runner_times_out_counts_and_continues():
    runner = RewardRunner({"sleepy": (2.0, Sleepy())}, timeout_s=1.0, isolation="process", workers=2)
    try:
        xs = [RewardInput("q", c, "1", extra={"id": c}) for c in ("ok", "hang", "nan", "boom", "plain")]
        t = time.perf_counter()
        parts, totals = runner.score(xs)
        assert time.perf_counter() - t < 30
        assert totals == [2.0, 0.0, 0.0, 0.0, 0.5] and parts[1] == {"sleepy": 0.0} and parts[4] == {"sleepy": 0.25}
        assert runner.failures["sleepy"] == 3
        _, totals = runner.score([RewardInput("q", "ok", "1")])  # the pool still works afterwards
        assert totals == [2.0]
    finally:
        runner.close()


def test_reward_runner_rejects_unknown_isolation():
    with pytest.raises(ValueError, match=r"stage\.reward_isolation: 'thread' is not allowed"):
        RewardRunner({}, isolation="thread")


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory, registry):
    """A tiny scalar reward model folder (Qwen2 + sequence-classification head, random weights)."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    backbone = registry.build("backbone", "tiny_reasoner")
    tok = backbone.tokenizer
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1,
                         pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rm")
    Qwen2ForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_reward_model_reward_scores_text_and_survives_the_process_pool(tiny_rm, registry):
    rm = registry.build("reward", "reward_model", path=str(tiny_rm), scale=2.0, shift=1.0)
    a, b = RewardInput("How many?", "two</think>\\boxed{2}", "2"), RewardInput("How many?", "zzzz", "2")
    sa, sb = rm(a)["reward_model"], rm(b)["reward_model"]
    assert math.isfinite(sa) and sa != sb
    raw = registry.build("reward", "reward_model", path=str(tiny_rm))(a)["reward_model"]
    assert sa == pytest.approx(2.0 * raw + 1.0, abs=1e-5)
    runner = RewardRunner({"reward_model": (1.0, rm)}, timeout_s=60, isolation="process", workers=1)
    try:
        _, totals = runner.score([a, b])
    finally:
        runner.close()
    assert totals == pytest.approx([sa, sb], abs=1e-4) and not runner.failures


def test_reward_model_needs_a_model_folder(tmp_path, registry):
    with pytest.raises(FileNotFoundError, match="is not a model folder"):
        registry.build("reward", "reward_model", path=str(tmp_path))


def test_layer_by_layer_rollouts_switch_a_whole_weight_engine_to_hf(tiny_vlm, monkeypatch, caplog):
    """When a ZeRO-3 rollout must gather layer by layer, an engine that reads whole weights (rollout=static)
    is replaced by rollout=hf with the same sampling knobs (said once); other engines and whole gathers stay."""
    from types import SimpleNamespace

    from r1v.generation import StaticEngine
    from r1v.runtime import weights
    from r1v.stages.grpo import GRPOStage

    model, _ = tiny_vlm
    static = StaticEngine(temperature=0.7, top_p=0.9)
    stage = {"max_new_tokens": 16, "rollout_gather": "auto", "rollout": {"name": "static", "temperature": 0.7,
                                                                         "top_p": 0.9}}  # fmt: skip
    fake = SimpleNamespace(model=model, stage=stage, engine=static, ds_engine=lambda: "zero3")
    asked = []
    monkeypatch.setattr(weights, "gather_mode", lambda m, e, req, reserve: asked.append((req, reserve)) or "layer")
    mode, engine = GRPOStage.rollout_engine(fake, rows=4)
    cfg = model.backbone.config
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    assert asked == [("auto", kv * 2 * 4 * (16 + 2048))]  # the KV cache of 4 rows at full length is reserved
    assert mode == "layer" and engine is not static and not getattr(engine, "needs_whole_weights", False)
    assert (engine.temperature, engine.top_p) == (0.7, 0.9)
    assert GRPOStage.rollout_engine(fake, rows=4)[1] is engine  # built once
    assert sum("layer by layer with rollout=hf" in r.message for r in caplog.records) == 1
    fake.engine = engine  # an engine that calls modules decodes layer by layer itself
    assert GRPOStage.rollout_engine(fake, rows=4)[1] is engine
    monkeypatch.setattr(weights, "gather_mode", lambda m, e, req, reserve: "whole")
    fake.engine = static
    assert GRPOStage.rollout_engine(fake, rows=4) == ("whole", static)
    # an engine that decodes 2 rows at a time holds the cache of 2 (at 38B with 8k completions the reserve of all
    # 64 rows pushed auto to the layer-by-layer path, which then ran out of memory: benchmarks/estimate_38b_grpo.py)
    monkeypatch.setattr(weights, "gather_mode", lambda m, e, req, reserve: asked.append((req, reserve)) or "whole")
    fake.engine, asked[:] = StaticEngine(max_batch_size=2), []
    GRPOStage.rollout_engine(fake, rows=4)
    assert asked == [("auto", kv * 2 * 2 * (16 + 2048))]


class _RecordingEngine:
    """A rollout engine that records the sampling knobs it is given and answers "<think></think>2" for each row."""

    name = "recording"

    def __init__(self) -> None:
        self.params: list = []

    def generate_ids(self, model, processor, samples, max_new_tokens, greedy=False, sample_params=None):
        self.params.append(sample_params)
        ids = processor.tokenizer("</think>2", add_special_tokens=False)["input_ids"]
        return [list(ids) for _ in samples]


def _grpo(compose, *overrides):
    from r1v.data.synthetic import generate
    from r1v.stages.grpo import GRPOStage

    cfg = compose("stage=grpo", "model=tiny_reasoner", "stage.group_size=2", "stage.reward_isolation=inline",
                  "stage.max_new_tokens=8",
                  *overrides)  # fmt: skip
    stage = GRPOStage(cfg)
    stage.configure_model()
    stage.engine = _RecordingEngine()
    return stage, [generate(i, "train")[0] for i in range(2)]


def test_a_length_controllers_sampling_knobs_reach_every_rollout(compose):
    """``sampling_params`` is asked for every prompt, not only for rows with distillation scores: a fixed
    repetition penalty reaches the engine for each of the G completions of plain synthetic prompts."""
    stage, samples = _grpo(compose, "stage.length.name=fixed", "stage.length.repetition_penalty=1.3")
    stage.rollout(samples)
    assert stage.engine.params == [[{"repetition_penalty": 1.3}] * 4]
    plain, _ = _grpo(compose)  # a controller without knobs: the engine's plain path
    plain.rollout(samples)
    assert plain.engine.params == [None]


def test_a_controller_that_needs_scores_refuses_data_without_them(compose):
    """DRLC needs each row's QDAM/VTIA scores (``stage=distill``): plain rows are refused at start in one line,
    distilled rows give each prompt its own penalty."""
    from r1v.core.errors import DataError

    stage, samples = _grpo(compose, "stage.length.name=drlc")
    with pytest.raises(DataError, match=r"stage.length=drlc needs each row's scores vision, text, integration") as e:
        stage.attach_data(samples, None)
    assert "\n" not in str(e.value) and "use stage.length=fixed" in str(e.value)
    for k, s in enumerate(samples):
        s.meta["distill"] = {"normalised": {"vision": float(k), "text": float(k), "integration": float(k)}}
    stage.attach_data(samples, None)
    stage.rollout(samples)
    penalties = [p["repetition_penalty"] for p in stage.engine.params[0]]
    assert penalties == [2.0, 2.0, 1.0, 1.0]  # easy (scores 0) → max_penalty; hard (scores 1) → 1

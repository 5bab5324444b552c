"""Memory planner: hand-computed per-GPU bytes for small cases, strategy advice for R1V-38B, knob parsing."""

from __future__ import annotations

import pytest

from r1v.runtime import planner
from r1v.runtime.planner import Part, Settings, estimate, parse_knobs, recommend


def test_one_billion_trainable_zero3_on_8_gpus():
    est = estimate([Part("lm", params=10**9, trainable=10**9)], Settings(zero=3, gpus=8, overhead_gib=0))
    assert est.weights == 2 * 10**9 / 8  # bf16, sharded
    assert est.gradients == 4 * 10**9 / 8  # fp32 gradient partitions
    assert est.optimizer == 12 * 10**9 / 8  # fp32 master + m + v
    assert est.activations == est.rollout == est.reference == 0
    assert est.total == 2.25e9


@pytest.mark.parametrize(("zero", "weights", "states"), [(0, 4e9, 12e9), (2, 2e9, 2e9), (3, 2.5e8, 2e9)])
def test_what_each_strategy_shards(zero, weights, states):
    """ZeRO 0 is no DeepSpeed: an fp32-built trainable weight is its own master (4 + 4 + 8 bytes, not sharded)."""
    est = estimate([Part("lm", params=10**9, trainable=10**9)], Settings(zero=zero, gpus=8, overhead_gib=0))
    assert (est.weights, est.gradients + est.optimizer) == (weights, states)


def test_without_deepspeed_bf16_trainable_weights_cost_ten_bytes():
    """trainer=gpu: a bf16-built trainable weight 2 + gradient 2 + Kahan AdamW 6 (r1v/runtime/optim.py); an
    fp32-built one 4 + 4 + 8; frozen weights 2; a reference copy keeps each trainable tensor's dtype. Under
    DeepSpeed the dtype as built does not matter (it casts to bf16 and keeps fp32 masters)."""
    parts = [Part("adapter", params=10**6, trainable=10**6), Part("lm", params=10**9, trainable=10**9, low=10**9),
             Part("vision", params=10**8)]  # fmt: skip
    s = Settings(zero=0, gpus=1, overhead_gib=0, rl=True, beta=0.1, reference="trainable")
    est = estimate(parts, s)
    assert est.weights == 10**6 * 4 + 10**9 * 2 + 10**8 * 2
    assert est.gradients == 10**6 * 4 + 10**9 * 2 and est.optimizer == 10**6 * 8 + 10**9 * 6
    assert est.reference == 10**6 * 4 + 10**9 * 2
    z2 = estimate(parts, Settings(**{**s.__dict__, "zero": 2}))
    assert z2.weights == (10**6 + 10**9 + 10**8) * 2 and z2.optimizer == (10**6 + 10**9) * 12


def test_rollout_merged_lora_is_a_phase_and_fused_copies_stand_apart():
    """The merged LoRA layers live in the rollout phase (against the update's activations, the larger counts); the
    engine's fused copies come only from free memory, so they are reported beside the total, not in it."""
    model = small_model()
    model[2] = Part(**{**model[2].__dict__, "merged": 5 * 10**8, "fused": 3 * 10**8})
    s = Settings(zero=0, gpus=1, micro_batch=2, overhead_gib=0, rl=True, group_size=4, prompt_len=100,
                 completion_len=400)  # fmt: skip
    est = estimate(model, s)
    assert est.merged == 5 * 10**8 * 2 and est.fused == 3 * 10**8 * 2
    assert est.merged > est.activations
    assert est.total == est.weights + est.gradients + est.optimizer + est.merged + est.rollout
    lines = planner.report(model, s)
    assert any(line.strip().startswith("+ fused") and "0.6 GiB" in line for line in lines)
    plain = estimate(small_model(), s)
    assert plain.merged == plain.fused == 0 and plain.total == est.total - est.merged + plain.activations


def small_model() -> list[Part]:
    return [
        Part("vision", params=10**8, trainable=0, layers=4, act_bytes=300, hidden=30, tokens=1000, largest_block=10**6),
        Part("adapter", params=10**6, trainable=10**6, layers=1, act_bytes=50, hidden=20, tokens=256),
        Part("backbone", params=10**9, trainable=0, layers=10, act_bytes=1000, hidden=100, largest_block=10**7,
             vocab=5000, kv_dim=64),
    ]  # fmt: skip


def test_activations_logits_and_zero3_gather_by_hand():
    s = Settings(zero=3, gpus=8, micro_batch=2, seq_len=1000, overhead_gib=0)
    est = estimate(small_model(), s)
    assert est.weights == (10**8 + 10**6 + 10**9) * 2 / 8 + 2 * 10**7 * 2  # shards + 2 gathered largest blocks
    assert est.gradients == 10**6 * 4 / 8 and est.optimizer == 10**6 * 12 / 8
    # frozen vision before the trainable adapter keeps nothing; the frozen backbone after it must pass gradients
    assert "vision" not in est.per_part_activations
    assert est.per_part_activations["adapter"] == 1 * (2 * 256) * 50
    assert est.per_part_activations["backbone"] == 10 * (2 * 1000) * 1000
    assert est.logits == 2 * 1000 * 5000 * 4 * 2  # fp32 logits and their gradient
    assert est.activations == 25_600 + 20_000_000 + 80_000_000


def test_chunked_lm_head_keeps_one_chunk_of_logits():
    s = Settings(zero=0, gpus=1, micro_batch=2, seq_len=1000, overhead_gib=0)
    full, chunked = estimate(small_model(), s), estimate(small_model(), Settings(**{**s.__dict__, "loss_chunk": 256}))
    assert full.logits == 2 * 1000 * 5000 * 4 * 2
    assert chunked.logits == 2 * 256 * 5000 * 4 * 2 and full.total - chunked.total == full.logits - chunked.logits
    longer = estimate(small_model(), Settings(**{**s.__dict__, "loss_chunk": 4096}))
    assert longer.logits == full.logits  # a chunk longer than the sequence is the whole sequence
    # SFT's chunked loss runs the head on answer tokens only; the full-logits loss (chunk 0) on every token
    short = estimate(small_model(), Settings(**{**s.__dict__, "loss_chunk": 256, "answer_tokens": 40}))
    assert short.logits == 2 * 40 * 5000 * 4 * 2
    unchunked = estimate(small_model(), Settings(**{**s.__dict__, "answer_tokens": 40}))
    assert unchunked.logits == full.logits
    assert parse_knobs({"answer_tokens": "40"}, s).answer_tokens == 40


def test_checkpointing_keeps_layer_inputs_plus_one_layer():
    s = Settings(zero=0, gpus=1, micro_batch=2, seq_len=1000, overhead_gib=0, ckpt=("backbone",))
    est = estimate(small_model(), s)
    assert est.per_part_activations["backbone"] == 10 * 2000 * 2 * 100 + 2000 * 1000
    assert est.weights == (10**8 + 10**6 + 10**9) * 2 + 10**6 * 2  # no gather buffer; the fp32 adapter kept as built


def test_rl_rollout_cache_and_reference_by_hand():
    s = Settings(zero=3, gpus=8, micro_batch=2, overhead_gib=0, rl=True, group_size=4, prompt_len=100,
                 completion_len=400, beta=0.1)  # fmt: skip
    est = estimate(small_model(), s)
    assert est.rollout == 2 * 10 * 64 * 2 * 4 * (100 + 400)  # K and V, layers, kv width, bf16, G sequences
    assert est.reference == (10**8 + 10**6 + 10**9) * 2 / 8  # a frozen copy, sharded like the policy
    assert est.logits == 2 * 500 * 5000 * 4 * 2
    trainable_only = estimate(small_model(), Settings(**{**s.__dict__, "reference": "trainable"}))
    assert trainable_only.reference == 10**6 * 2 / 8
    assert estimate(small_model(), Settings(**{**s.__dict__, "beta": 0.0})).reference == 0


def test_zero3_rollout_gather_is_a_phase_of_its_own():
    """A ZeRO-3 rollout with whole weights holds the (1 − 1/N) its shard lacks instead of the update's
    activations (the larger of the two counts); layer by layer it adds nothing; SFT and one GPU never gather."""
    s = Settings(zero=3, gpus=8, micro_batch=2, overhead_gib=0, rl=True, group_size=4, prompt_len=100,
                 completion_len=400)  # fmt: skip
    whole = estimate(small_model(), s)
    params = 10**8 + 10**6 + 10**9
    assert whole.gather == params * 2 * 7 / 8 and whole.gather > whole.activations
    layered = estimate(small_model(), Settings(**{**s.__dict__, "rollout_gather": "layer"}))
    assert layered.gather == 0 and whole.total - layered.total == whole.gather - whole.activations
    assert estimate(small_model(), Settings(**{**s.__dict__, "rl": False})).gather == 0
    assert estimate(small_model(), Settings(**{**s.__dict__, "gpus": 1})).gather == 0


def test_whole_model_r1v38b_grpo_on_8_gpus_must_gather_layer_by_layer(r1v38b_parts):
    """R1V3-style whole-model GRPO at 38B: the states fit sharded (≈ 108 GiB) but not beside a 62.6 GiB gather,
    so the advice is ZeRO-3 with rollouts gathered layer by layer."""
    full = r1v38b_parts("stage=sft", "stage.trainable=[vision,adapter,backbone]")
    s = Settings(zero=3, gpus=8, rl=True, group_size=8, prompt_len=1024, completion_len=1024, beta=0.04,
                 ckpt=planner.CHECKPOINTABLE)  # fmt: skip
    assert estimate(full, s).total > s.capacity
    advice = recommend(full, s)
    assert advice.zero == 3 and "stage.rollout_gather=layer" in advice.text


def test_qwen2_32b_layer_activation_constant():
    assert planner.transformer_layer_bytes(5120, 1024, 27648, 4) == 327_680 == 64 * 5120


@pytest.fixture(scope="module")
def r1v38b_parts(compose):
    from r1v.cli.describe import model_parts
    from r1v.model.meta import build_on_meta

    def parts(*overrides: str) -> list[Part]:
        return model_parts(build_on_meta(compose("model=r1v38b", *overrides)), tiles_per_sample=13)

    return parts


def test_adapter_only_r1v38b_on_one_gpu_is_not_zero3(r1v38b_parts):
    parts = r1v38b_parts("stage=align")
    s = Settings(zero=3, gpus=1, seq_len=16384, tiles=13)
    rec = recommend(parts, s)
    print(rec.text)
    assert rec.zero in (0, 2) and rec.ckpt  # the frozen bf16 trunk (≈77 GB) fits whole; activations need ckpt
    weights = estimate(parts, s).weights
    assert weights == pytest.approx(38.39e9 * 2, rel=0.005)


def test_full_finetune_r1v38b_on_8_gpus_needs_zero3(r1v38b_parts):
    parts = r1v38b_parts("stage=align", "stage.trainable=[all]")
    rec = recommend(parts, Settings(zero=2, gpus=8, seq_len=8192, tiles=13))
    print(rec.text)
    assert rec.zero == 3 and "DDP and ZeRO-2 do not fit" in rec.text


def test_report_prints_every_input(r1v38b_parts):
    lines = planner.report(r1v38b_parts(), Settings(zero=3, gpus=8, tiles=13), {"zero": "trainer.strategy.stage"})
    text = "\n".join(lines)
    print(text)
    needles = ("ZeRO-3 (from trainer.strategy.stage) on 8 GPU(s)", "bf16 weights (2 B)", "gradients 4 B", "AdamW 12 B",
               "micro-batch 1", "16384 tokens", "13 tile(s)", "checkpointing vision off", "weights", "gradients",
               "optimizer", "activations", "rollout KV", "total", "recommended")  # fmt: skip
    for needle in needles:
        assert needle in text, needle


def test_knob_parsing():
    s = planner.parse_knobs({"gpus": "4", "ckpt": "[vision,backbone]", "rl": "true", "gpu_gb": "80"}, Settings())
    assert (s.gpus, s.ckpt, s.rl, s.gpu_gb) == (4, ("vision", "backbone"), True, 80.0)
    assert planner.parse_knobs({"ckpt": "all"}, Settings()).ckpt == planner.CHECKPOINTABLE
    with pytest.raises(ValueError, match="did you mean 'seq_len'"):
        planner.parse_knobs({"seqlen": "3"}, Settings())
    with pytest.raises(ValueError, match=r"planner\.zero=1: use one of 0, 2, 3"):
        planner.parse_knobs({"zero": "1"}, Settings())
    with pytest.raises(ValueError, match="'adapter' cannot be checkpointed"):
        planner.parse_knobs({"ckpt": "adapter"}, Settings())


def test_settings_read_from_the_config(compose):
    from r1v.cli.describe import default_settings

    cfg = {"model": {"max_tiles": 12, "use_thumbnail": True}, "stage": {"name": "align"},
           "trainer": {"devices": 4, "strategy": {"stage": 2}}}  # fmt: skip
    s, sources = default_settings(cfg)
    assert (s.zero, s.gpus, s.tiles, s.rl) == (2, 4, 13, False)
    assert sources == {"zero": "trainer.strategy.stage", "gpus": "trainer.devices"}
    # the GRPO stage's own knob names (conf/stage/grpo.yaml), as a composed run has them
    cfg = compose("stage=grpo", "stage.group_size=16", "stage.policy_loss.beta=0.04", "stage.max_new_tokens=1024",
                  "stage.batch_size=4", "stage.micro_batch_size=2")  # fmt: skip
    s, sources = default_settings(cfg)
    assert (s.rl, s.group_size, s.beta, s.completion_len, s.rollout_batch, s.micro_batch) == (True, 16, 0.04, 1024,
                                                                                              64, 2)  # fmt: skip
    assert sources["beta"] == "stage.policy_loss.beta" and sources["completion_len"] == "stage.max_new_tokens"
    s, _ = default_settings({"model": {"max_tiles": 1}, "stage": {"name": "align"}, "trainer": {"devices": "auto"}})
    assert (s.zero, s.gpus, s.tiles, s.rl, s.ckpt) == (0, 8, 1, False, ())
    stage = {"name": "sft", "activation_checkpointing": ["backbone"]}
    s, sources = default_settings({"model": {"max_tiles": 1}, "stage": stage, "trainer": {"devices": 1}})
    assert s.ckpt == ("backbone",) and sources["ckpt"] == "stage.activation_checkpointing"
    s, sources = default_settings({"model": {"max_tiles": 1}, "stage": {"name": "grpo", "logp_chunk": 512},
                                   "trainer": {"devices": 1}})  # fmt: skip
    assert s.loss_chunk == 512 and sources["loss_chunk"] == "stage.logp_chunk"
    s, _ = default_settings({"model": {"max_tiles": 1}, "stage": {"name": "sft", "loss_chunk_tokens": 2048},
                             "trainer": {"devices": 1}})  # fmt: skip
    assert s.loss_chunk == 2048

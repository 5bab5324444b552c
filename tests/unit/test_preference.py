"""MPO's parts (DPO, BCO with its running δ, length-normalised NLL) and the Bradley-Terry loss against
hand-computed values, and the pair data they train on."""

from __future__ import annotations

import json
import math

import pytest
import torch

from r1v.rl.preference import RunningMean, bco_loss, bradley_terry_loss, dpo_loss, mpo_loss, nll_loss


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


PC, PR = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])  # policy log-probs of chosen / rejected
RC, RR = torch.tensor([-3.5, -5.0]), torch.tensor([-3.0, -2.5])  # reference
LEN = torch.tensor([2.0, 5.0])


def test_dpo_by_hand():
    # pair 0: (−3 + 3.5) − (−4 + 3) = 1.5; pair 1: 0 − 0.5 = −0.5
    got = dpo_loss(PC, PR, RC, RR, beta=0.1)
    assert got.tolist() == pytest.approx([-math.log(sig(0.15)), -math.log(sig(-0.05))], rel=1e-6)


def test_bco_by_hand_and_delta_shifts_it():
    # rewards: chosen 0.1·0.5 = 0.05, 0; rejected 0.1·(−1) = −0.1, 0.05
    got = bco_loss(PC, PR, RC, RR, beta=0.1, delta=0.0)
    want = [-math.log(sig(0.05)) - math.log(sig(0.1)), -math.log(sig(0.0)) - math.log(sig(-0.05))]
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    shifted = bco_loss(PC, PR, RC, RR, beta=0.1, delta=0.2)
    want = [-math.log(sig(0.05 - 0.2)) - math.log(sig(0.1 + 0.2)), -math.log(sig(-0.2)) - math.log(sig(-0.05 + 0.2))]
    assert shifted.tolist() == pytest.approx(want, rel=1e-6)


def test_nll_is_length_normalised():
    assert nll_loss(PC, LEN).tolist() == pytest.approx([1.5, 1.0])


def test_running_mean_is_the_mean_of_everything_seen():
    rm = RunningMean()
    assert rm.update(torch.tensor([1.0, 3.0])) == pytest.approx(2.0)
    assert rm.update(torch.tensor([8.0])) == pytest.approx(4.0)  # (1 + 3 + 8) / 3
    other = RunningMean()
    other.load_state_dict(rm.state_dict())
    assert other.update(torch.tensor([])) == pytest.approx(4.0) and other.count == 3


def test_mpo_combines_the_parts_with_weights_and_updates_delta():
    delta = RunningMean()
    loss, m = mpo_loss(PC, PR, RC, RR, LEN, 0.1, (0.8, 0.2, 1.0), delta)
    d = (0.05 + 0.0 - 0.1 + 0.05) / 4  # δ includes the current batch's rewards (TRL's order)
    assert float(m["delta"]) == pytest.approx(d)
    want = (0.8 * dpo_loss(PC, PR, RC, RR, 0.1).mean() + 0.2 * bco_loss(PC, PR, RC, RR, 0.1, d).mean()
            + 1.0 * nll_loss(PC, LEN).mean())  # fmt: skip
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    assert float(m["margin"]) == pytest.approx((0.15 + -0.05) / 2)
    assert float(m["pair_accuracy"]) == 0.5 and float(m["reward_chosen"]) == pytest.approx(0.025)


def test_mpo_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    loss, _ = mpo_loss(pc, pr, RC, RR, LEN, 0.1, (1.0, 0.0, 0.0))
    loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descent raises log π(chosen), lowers log π(rejected)


def test_bradley_terry_by_hand():
    loss, m = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert float(loss) == pytest.approx((-math.log(sig(1.0)) - math.log(sig(-1.0))) / 2)
    assert float(m["pair_accuracy"]) == 0.5 and float(m["margin"]) == pytest.approx(0.0)


# -- pair data ----------------------------------------------------------------------------------------
def write_pairs(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pairs_file_bad_rows_one_line_each(tmp_path):
    from r1v.data.datasets import DataError, PairsDataset

    rows = [{"question": "q", "chosen": "a", "rejected": "b"}, {"question": "q", "chosen": "same", "rejected": "same "},
            {"question": "q", "chosen": "a"}]  # fmt: skip
    path = write_pairs(tmp_path, rows)
    ds = PairsDataset(path)  # skip and count
    assert len(ds) == 1 and ds[0].meta["chosen"] == "a" and ds[0].answer == ""
    assert sum(ds.skipped.values()) == 2
    with pytest.raises(DataError) as e:
        PairsDataset(path, on_bad_sample="error")
    assert f"{path}:2: identical pair" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError) as e:
        PairsDataset(write_pairs(tmp_path, rows[2:]), on_bad_sample="error")
    assert ":1: missing field 'rejected'" in str(e.value) and "chosen and rejected" in str(e.value)


def test_synthetic_pairs_are_right_versus_wrong():
    from r1v.data.datasets import SyntheticPairs
    from r1v.evaluation.answers import equivalent, extract_answer

    for style in ("answer", "reasoning"):
        ds = SyntheticPairs(20, "train", style=style)
        for i in range(20):
            s = ds[i]
            assert equivalent(extract_answer(s.meta["chosen"]), s.answer)
            assert not equivalent(extract_answer(s.meta["rejected"]), s.answer)
            assert "</think>" in s.meta["chosen"] and "</think>" in s.meta["rejected"]


def test_reward_folder_without_scalar_head_is_one_line(registry, tmp_path):
    from r1v_plugins.rewards import check_reward_folder

    lm = registry.build("backbone", "tiny_instruct").model
    lm.save_pretrained(tmp_path / "lm")  # a causal LM: no scalar head
    with pytest.raises(ValueError) as e:
        check_reward_folder(str(tmp_path / "lm"))
    assert "has no scalar head (architectures ['Qwen2ForCausalLM']" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("stage: {name: sft}\n")
    (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="is an r1v run of stage 'sft', which has no scalar head"):
        check_reward_folder(str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        check_reward_folder(str(tmp_path / "nothing"))


def test_reward_scores_read_the_last_real_token(tiny_vlm):
    """scores() takes the head at each row's last attended position, whatever the padding around it."""
    from r1v.rl.grpo import completion_rows
    from r1v.stages.reward_model import add_head, scores

    model, processor = tiny_vlm
    add_head(model)
    try:
        a, b_, c, d = (processor.tokenizer(t, add_special_tokens=False)["input_ids"]
                       for t in ("How many shapes", "red", "three", "I see two circles"))  # fmt: skip
        ids, attn, _ = completion_rows([a, b_], [c, d], pad_id=processor.tokenizer.pad_token_id)
        with torch.no_grad():
            got = scores(model.eval(), ids, attn, None)
            for b, seq in enumerate([a + c, b_ + d]):
                h = model.backbone.base_model(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
                assert float(got[b]) == pytest.approx(float(model.reward_head(h)), abs=1e-5)
    finally:
        del model.reward_head  # the session's shared tiny model


def test_softmin_head_pools_the_completions_tokens(tiny_vlm):
    """pool=softmin: −τ·logsumexp(−s_t/τ) over the completion's own tokens, whatever the padding; small τ gives
    the hard minimum of the per-token head, large τ approaches mean − τ·log T. Bad knobs are one line each."""
    from r1v.core.errors import ConfigError
    from r1v.rl.grpo import completion_rows
    from r1v.stages.reward_model import add_head, head_knobs, scores

    model, processor = tiny_vlm
    add_head(model)
    try:
        tok = processor.tokenizer
        a, b_, c, d = (tok(t, add_special_tokens=False)["input_ids"]
                       for t in ("How many shapes", "red", "three", "I see two circles"))  # fmt: skip
        ids, attn, cmask = completion_rows([a, b_], [c, d], pad_id=tok.pad_token_id)
        with torch.no_grad():
            per_token = []
            for p, comp in ((a, c), (b_, d)):  # the head on each completion token, run alone
                h = model.backbone.base_model(input_ids=torch.tensor([p + comp])).last_hidden_state[0, len(p) :]
                per_token.append(model.reward_head(h).squeeze(-1))
            for tau in (1e-3, 0.5, 50.0):
                got = scores(model.eval(), ids, attn, None, cmask, "softmin", tau)
                for b, s in enumerate(per_token):
                    want = -tau * torch.logsumexp(-s / tau, 0)
                    assert float(got[b]) == pytest.approx(float(want), abs=1e-4), (tau, b)
            hard = scores(model, ids, attn, None, cmask, "softmin", 1e-4)
            assert torch.allclose(hard, torch.stack([s.min() for s in per_token]), atol=1e-3)
    finally:
        del model.reward_head  # the session's shared tiny model
    assert head_knobs({"head": {"pool": "softmin", "temperature": 0.5}}) == ("softmin", 0.5)
    assert head_knobs({}) == ("last", 1.0)  # a run from before the knob
    with pytest.raises(ConfigError, match=r"stage\.head\.pool: 'min' is not one of last, softmin"):
        head_knobs({"head": {"pool": "min"}})
    with pytest.raises(ConfigError, match=r"stage\.head\.temperature: 0 must be > 0"):
        head_knobs({"head": {"pool": "softmin", "temperature": 0}})

"""The process (step-level) reward model: the step labels ``data=synthetic_hard`` gives each flaw kind, where a
completion's steps end among its tokens, the per-step loss against hand-computed values, the objective's knob
checks, and a tiny fit whose loss falls."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

from r1v.data.steps import step_spans
from r1v.data.synthetic_hard import FLAWS, SyntheticHardPairs, generate_item, step_labels
from r1v.rl.process import process_loss, step_batch, step_softmin


def _flawed(item) -> list[str]:
    return [item.chain[a:b] for a, b, ok in step_labels(item.steps) if not ok]


def _listed_before(chain: str, end: int) -> int:
    """The number of objects the listing sentence just before ``chain[:end]``'s last sentence names."""
    listing = chain[:end].rsplit(". That makes", 1)[0].rsplit(": ", 1)[1]
    return 0 if listing == "none" else len(listing.split(", "))


@pytest.mark.parametrize("kind", ["none", *FLAWS])
def test_step_labels_mark_the_flawed_step_and_only_it(kind):
    for i in range(24):  # every task, several scenes
        item = generate_item(i, "train", 0, force_flaw=kind)
        labels = step_labels(item.steps)
        assert [(a, b) for a, b, _ in labels] == step_spans(item.chain, "clause")  # one label per clause
        for a, b, ok in labels:  # every sound count and sum is right; every flawed one (of these two kinds) wrong
            text = item.chain[a:b]
            if m := re.fullmatch(r"That makes (\d+)\.", text):
                assert (int(m[1]) == _listed_before(item.chain, b)) == (ok or kind == "loop"), (kind, i, text)
            if m := re.fullmatch(r"(\d+) ([-+]) (\d+) = (\d+)\.", text):
                x, y, r = int(m[1]), int(m[3]), int(m[4])
                assert ((x - y if m[2] == "-" else x + y) == r) == ok, (kind, i, text)
        flawed = _flawed(item)
        if kind == "none":
            assert flawed == []
        elif kind == "wrong_steps":  # the miscount, and the sum that uses it if there is one
            assert 1 <= len(flawed) <= 2 and flawed[0].startswith("That makes "), flawed
            assert all(re.fullmatch(r"\d+ [-+] \d+ = \d+\.", f) for f in flawed[1:]), flawed
        elif kind == "contradicts_image":  # the description's one object that is not in the scene, nothing else
            assert len(flawed) == 1 and flawed[0].removeprefix("I see ").rstrip(";.") == item.extra["ghost"]
            assert item.chain.index(flawed[0]) < item.chain.index(". ")  # in the description
        else:  # loop: everything after the sound chain, and nothing before it
            assert item.chain.startswith(item.sound_chain)
            assert " ".join(flawed) == item.chain[len(item.sound_chain) + 1 :]


def test_the_pairs_carry_step_labels_of_their_completions():
    pairs = SyntheticHardPairs(6, "train", flaws={"wrong_steps": 0.4, "contradicts_image": 0.4, "loop": 0.2})
    for i in range(len(pairs)):
        meta = pairs[i].meta
        assert [ok for *_, ok in meta["chosen_steps"]] == [1] * len(meta["chosen_steps"])
        assert 0 in [ok for *_, ok in meta["rejected_steps"]]
        for side in ("chosen", "rejected"):
            chain = meta[side].split("\n</think>")[0]
            assert [(a, b) for a, b, _ in meta[f"{side}_steps"]] == step_spans(chain, "clause")


def test_step_batch_reads_each_steps_full_stop(tiny_vlm):
    tok = tiny_vlm[1].tokenizer
    good = "The red ones: red circle. That makes 1. 1 - 0 = 1.\n</think>\n\n\\boxed{1}"
    bad = "The red ones: red circle. That makes 2. 2 - 0 = 1.\n</think>\n\n\\boxed{1.5}"  # no step after </think>
    labels = [[[0, 25, 1], [26, 39, 1], [40, 50, 1]], [[0, 25, 1], [26, 39, 0], [40, 50, 0]]]
    width = 40
    mask, targets = step_batch(tok, [good, bad, "no step here"], width, [*labels, None])
    for b, text in enumerate((good, bad)):
        ids = tok(text + tok.eos_token, add_special_tokens=False)["input_ids"]
        ends = mask[b].nonzero().flatten().tolist()
        assert len(ends) == 3 and [tok.decode([ids[j]]) for j in ends] == ["."] * 3
        assert targets[b, ends].tolist() == [float(ok) for *_, ok in labels[b]]
        assert (targets[b][mask[b] == 0] == -1).all()
    n = len(tok("no step here" + tok.eos_token, add_special_tokens=False)["input_ids"])
    assert mask[2].nonzero().flatten().tolist() == [n - 1] and (targets[2] == -1).all()  # no step: its last token


def test_a_sentence_step_is_flawed_when_any_clause_in_it_is(tiny_vlm):
    """Clause labels (the data's) read at sentence ends: the description is flawed if one object is; read at
    clause ends, only that object's clause is."""
    tok = tiny_vlm[1].tokenizer
    text = "I see red circle at top; blue square at left. That makes 2.\n</think>\n\n\\boxed{2}"
    clauses = step_spans(text.split("\n")[0], "clause")
    assert [text[a:b] for a, b in clauses] == ["I see red circle at top;", "blue square at left.", "That makes 2."]
    labels = [[*clauses[0], 0], [*clauses[1], 1], [*clauses[2], 1]]
    for unit, want in (("sentence", [0.0, 1.0]), ("clause", [0.0, 1.0, 1.0])):
        mask, targets = step_batch(tok, [text], 60, [labels], unit)
        assert targets[0, mask[0] == 1].tolist() == want, unit
    labels[0][2], labels[1][2] = 1, 0  # the second object is the wrong one
    mask, targets = step_batch(tok, [text], 60, [labels], "sentence")
    assert targets[0, mask[0] == 1].tolist() == [0.0, 1.0]


def test_process_loss_and_chain_score_against_hand_computed_values():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 3.0, 0.0]])
    y = torch.tensor([[1.0, -1.0, 0.0], [0.0, -1.0, -1.0]])  # −1: not a labelled step end
    loss, metrics = process_loss(s, y)

    def sig(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    want = -(math.log(sig(2.0)) + math.log(1 - sig(-1.0)) + math.log(1 - sig(0.5))) / 3
    assert float(loss) == pytest.approx(want, abs=1e-6)
    assert float(metrics["step_accuracy"]) == pytest.approx(2 / 3)  # 0.5 > 0 calls a flawed step sound
    assert float(metrics["flawed_step_recall"]) == pytest.approx(1 / 2)
    weighted, _ = process_loss(s, y, flawed_weight=4.0)  # each flawed step's term counts four times
    want = -(math.log(sig(2.0)) + 4 * math.log(1 - sig(-1.0)) + 4 * math.log(1 - sig(0.5))) / 9
    assert float(weighted) == pytest.approx(want, abs=1e-6)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    assert step_softmin(s, mask, 1e-4).tolist() == pytest.approx([-1.0, 0.5], abs=1e-3)  # the worst step
    tau = 0.5
    want = [-tau * math.log(math.exp(-2 / tau) + math.exp(1 / tau)), -tau * math.log(math.exp(-1) + math.exp(-6))]
    assert step_softmin(s, mask, tau).tolist() == pytest.approx(want, abs=1e-5)


def test_bad_objective_values_are_one_line():
    from r1v.core.errors import ConfigError
    from r1v.stages.reward_model import objective_knob, step_unit

    assert objective_knob({}) == "pairwise"  # a run from before the knob
    assert objective_knob({"objective": "process", "head": {"pool": "steps"}}) == "process"
    with pytest.raises(ConfigError, match=r"^stage\.objective: 'outcome' is not one of pairwise, process$"):
        objective_knob({"objective": "outcome"})
    with pytest.raises(ConfigError, match=r"^stage\.head\.pool: 'last' with stage\.objective=process; .*pool=steps$"):
        objective_knob({"objective": "process"})
    assert step_unit({}) == "sentence" and step_unit({"head": {"step_unit": "clause"}}) == "clause"
    with pytest.raises(ConfigError, match=r"^stage\.head\.step_unit: 'word' is not one of sentence, clause$"):
        step_unit({"head": {"step_unit": "word"}})


def test_process_objective_loss_falls_on_a_tiny_fit(tiny_vlm):
    """A few Adam steps of the per-step loss on four fixed pairs (the stage's path: pair collator → step targets →
    the head on each step's end) drive it well down; the session's model is copied, not trained."""
    from r1v.data.collate import PairCollator
    from r1v.stages.reward_model import _hidden, add_head, token_scores

    torch.manual_seed(0)
    model, processor = copy.deepcopy(tiny_vlm[0]), tiny_vlm[1]
    add_head(model)
    pairs = SyntheticHardPairs(4, "train", flaws={"wrong_steps": 0.5, "contradicts_image": 0.5, "loop": 0.0})
    batch = PairCollator(processor)([pairs[i] for i in range(4)])
    samples = batch["samples"]
    texts = [s.meta["chosen"] for s in samples] + [s.meta["rejected"] for s in samples]
    labels = [s.meta["chosen_steps"] for s in samples] + [s.meta["rejected_steps"] for s in samples]
    width = batch["completion_mask"].shape[1]
    _, targets = step_batch(processor.tokenizer, texts, width, labels, "clause")
    params = [p for n, p in model.named_parameters() if n.startswith(("reward_head", "backbone"))]
    opt = torch.optim.Adam(params, lr=3e-3)
    model.train()
    losses = []
    for _ in range(12):
        hidden = _hidden(model, batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
        loss, _ = process_loss(token_scores(model, hidden, width), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses

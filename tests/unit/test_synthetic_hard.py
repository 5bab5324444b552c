"""data=synthetic_hard (issue 27): compositional questions checked against a brute-force count, a held-out set
that never meets training, and flawed chains that are present at their shares and really flawed."""

from __future__ import annotations

import re

import pytest

from r1v.core.errors import DataError
from r1v.data.synthetic import describe
from r1v.data.synthetic_hard import FLAWS, SyntheticHard, SyntheticHardPairs, generate_item


def _objects(description: str) -> set[str]:
    """'I see red circle at top; ...' -> {'red circle at top', ...}."""
    return {x.strip() for x in description.removeprefix("I see ").rstrip(".").split(";")}


def _brute_force(question: str, scene: list) -> int:
    """The answer from the scene alone, parsed from the question's words (independent of the generator)."""

    def rc(o):
        return divmod(o.cell, 3)

    if m := re.fullmatch(r"How many (\w+)s are (left of|right of|above|below) the (\w+) (\w+)\?", question):
        shape, rel, color, kind = m.groups()
        (anchor,) = [o for o in scene if (o.color, o.shape) == (color, kind)]  # the anchor is unique
        (ar, ac) = rc(anchor)
        test = {"left of": lambda r, c: c < ac, "right of": lambda r, c: c > ac, "above": lambda r, c: r < ar,
                "below": lambda r, c: r > ar}[rel]  # fmt: skip
        return sum(o.shape == shape and test(*rc(o)) for o in scene)
    if m := re.fullmatch(r"How many more (\w+) shapes than (\w+) ones, plus the number of (\w+)s\?", question):
        c1, c2, shape = m.groups()
        return sum(o.color == c1 for o in scene) - sum(o.color == c2 for o in scene) + sum(o.shape == shape
                                                                                           for o in scene)  # fmt: skip
    m = re.fullmatch(r"How many more shapes are in the (\w+) row than in the (\w+) row\?", question)
    assert m, question
    rows = {"top": 0, "middle": 1, "bottom": 2}
    return sum(o.cell // 3 == rows[m[1]] for o in scene) - sum(o.cell // 3 == rows[m[2]] for o in scene)


def test_same_seed_same_samples_other_seed_other_samples():
    a, b, c = SyntheticHard(12, "train", seed=0), SyntheticHard(12, "train", seed=0), SyntheticHard(12, "train", 1)
    for i in range(12):
        sa, sb = a[i], b[i]
        assert (sa.question, sa.reasoning, sa.answer, sa.meta) == (sb.question, sb.reasoning, sb.answer, sb.meta)
        assert sa.images[0].tobytes() == sb.images[0].tobytes()
    assert sum(a[i].reasoning != c[i].reasoning for i in range(12)) >= 10


def test_held_out_has_1000_questions_disjoint_from_training(compose, registry):
    cfg = compose("data=synthetic_hard")
    assert cfg["data"]["n_val"] >= 1000 and (0.25 / cfg["data"]["n_val"]) ** 0.5 <= 0.016  # one SE at 50%
    from r1v.data.build import build_datasets

    _, val = build_datasets(cfg, registry)
    assert len(val) == cfg["data"]["n_val"]
    key = lambda it: (it.question, describe(it.scene))  # noqa: E731
    held = {key(generate_item(i, "val")) for i in range(len(val))}
    assert len(held) >= 0.95 * len(val)  # distinct questions, not one repeated
    assert not held & {key(generate_item(i, "train")) for i in range(3000)}
    assert all(generate_item(i, "val").flaw == "none" for i in range(200))  # held-out chains are sound
    assert compose()["data"]["name"] == "synthetic"  # the default regime is unchanged


@pytest.mark.parametrize("flaws", [None, {"wrong_steps": 0.3, "contradicts_image": 0.0, "loop": 0.1}])
def test_each_flaw_kind_at_its_share(flaws):
    n = 3000
    data = SyntheticHard(n, "train", flaws=flaws)
    kinds = [generate_item(i, "train", flaws=data.flaws).flaw for i in range(n)]
    for kind in FLAWS:
        assert abs(kinds.count(kind) / n - data.flaws[kind]) < 0.03, (kind, kinds.count(kind))
    assert abs(kinds.count("none") / n - (1 - sum(data.flaws.values()))) < 0.03


def test_flawed_chains_are_flawed_and_still_reach_the_answer():
    seen = {k: 0 for k in ("none", *FLAWS)}
    for i in range(400):
        it = generate_item(i, "train")
        seen[it.flaw] += 1
        steps, words = it.steps, it.chain.split()
        texts = [s.text for s in steps]  # the chain is these sentences joined
        assert steps[-1].value == int(it.answer) or steps[-1].text.endswith(f"{it.answer}.")  # right final answer
        claimed_wrong = [s for s in steps if s.value is not None and s.value != s.true]
        if it.flaw == "none":
            assert not claimed_wrong and len(set(texts)) == len(texts) and it.chain == it.sound_chain
            assert _objects(texts[0]) == _objects("I see " + describe(it.scene))
        elif it.flaw == "wrong_steps":
            (bad,) = claimed_wrong  # one intermediate count differs from the scene's
            assert bad.kind == "count" and bad is not steps[-1] and f"That makes {bad.value}." in bad.text
            assert steps[-1].value == steps[-1].true == int(it.answer)
        elif it.flaw == "contradicts_image":
            named = _objects(it.chain.split(". ")[0])
            absent = named - {o.text() for o in it.scene}
            assert absent and it.extra["ghost"] in absent  # names a shape that is not in the image
            assert not claimed_wrong
        else:  # loop: a repeated step, and longer than the sound chain by the repeats
            assert len(set(texts)) < len(texts) and len(words) > 1.3 * len(it.sound_chain.split())
            assert it.chain.startswith(it.sound_chain) and texts[-1] == f"So the answer is {it.answer}."
    assert all(v >= 30 for v in seen.values()), seen


def test_compositional_answers_match_a_brute_force_count():
    answers = []
    for split in ("train", "val"):
        for i in range(300):
            it = generate_item(i, split)
            assert int(it.answer) == _brute_force(it.question, it.scene) >= 0, it.question
            answers.append(it.answer)
    assert len(set(answers)) >= 5  # not a constant answer


def test_chains_fit_the_tiny_context():
    from r1v.model.parts import tiny

    tok = tiny.tokenizer()
    longest = max(len(tok(generate_item(i, "train", force_flaw="loop").chain + generate_item(i, "train").question)[
        "input_ids"]) for i in range(0, 300, 3))  # fmt: skip
    assert longest < 400  # + 16 image tokens and the template, under the tiny backbone's 512 positions


def test_pairs_prefer_the_sound_chain_both_with_the_right_answer():
    pairs = SyntheticHardPairs(60, "train", flaws={"wrong_steps": 0.5, "contradicts_image": 0.0, "loop": 0.5})
    kinds = []
    for i in range(60):
        s = pairs[i]
        assert s.meta["chosen"] != s.meta["rejected"]
        assert s.meta["chosen"].endswith(f"\\boxed{{{s.answer}}}") and s.meta["rejected"].endswith(
            f"\\boxed{{{s.answer}}}")  # fmt: skip
        assert s.meta["chosen"].startswith(s.reasoning)  # chosen is the sound chain
        kinds.append(s.meta["flaw"])
    assert set(kinds) == {"wrong_steps", "loop"}


@pytest.mark.parametrize(("knobs", "says"), [
    ({"flaws": {"loop": 1.5}}, "data.flaws.loop: 1.5 is outside [0, 1]"),
    ({"flaws": {"loop": -0.1}}, "data.flaws.loop: -0.1 is outside [0, 1]"),
    ({"flaws": {"wrong_steps": 0.6, "loop": 0.6}}, "data.flaws: the shares sum to 1.2, above 1"),
    ({"flaws": {"loops": 0.1}}, "data.flaws: unknown flaw kind 'loops'"),
    ({"tasks": ["count_all"]}, "data.tasks: unknown task 'count_all'"),
    ({"loop_repeats": 0}, "data.loop_repeats: 0 is below 1"),
])  # fmt: skip
def test_bad_knobs_are_one_clear_line(registry, knobs, says):
    factory = registry.get("dataset", "synthetic_hard").factory
    with pytest.raises(DataError) as err:
        factory(split="train", **knobs)
    assert says in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="every share is 0"):
        registry.get("dataset", "synthetic_hard_pairs").factory(split="train", flaws={"loop": 0.0})


def test_iterative_selection_counts_the_flaws_each_tau_lets_in(tmp_path):
    import json

    from r1v.data.datasets import OverlayDataset
    from r1v.stages.iterative import IterativeSFT

    base = SyntheticHard(40, "train")
    pool = list(range(40))
    kinds = {i: generate_item(i, "train").flaw for i in pool}
    scores = {"score": {i: 5.0 if kinds[i] == "none" else 1.0 for i in pool}, "raw": {}}  # a perfect reward model
    stage = IterativeSFT({"stage": {"errors": {"enabled": False}}})
    sel = stage._select(1, 3.0, OverlayDataset(base, pool), pool, {}, scores, None, tmp_path)
    assert sel["flaws"] == {"none": sum(k == "none" for k in kinds.values())}
    rows = [json.loads(x) for x in (tmp_path / "lineage.jsonl").read_text().splitlines()]
    assert {r["flaw"] for r in rows} == {"none"} and len(rows) == sel["n_used"]
    sel = stage._select(1, 1.0, OverlayDataset(base, pool), pool, {}, scores, None, tmp_path)
    assert sum(sel["flaws"].values()) == 40 and set(sel["flaws"]) == {"none", *FLAWS}


def test_the_trained_reward_model_scorer_builds_without_loading(registry):
    scorer = registry.build("scorer", "trained_reward_model", path="runs/does-not-exist-yet")
    assert scorer.scale == "unbounded" and scorer._model is None  # loaded on first use: validation stays cheap

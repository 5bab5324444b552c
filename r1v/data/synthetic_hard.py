"""A harder synthetic regime (issue 27): compositional questions and a distillation pool with realistic flaws.

The bundled regime (:mod:`r1v.data.synthetic`) asks one-step questions and ships every chain correct, so a
reward-model threshold has nothing to filter and the errors left are perception errors. This one draws the same
kind of scenes (3–6 shapes on the 3×3 grid, the same renderer, so the tiny vision parts still see them) and asks
two-step questions where the chain's text skill matters:

* ``relation_count`` — "How many circles are left of the blue square?" (locate a unique anchor, filter by a
  spatial relation, then by shape);
* ``more_plus`` — "How many more red shapes than green ones, plus the number of triangles?" (three counts, a
  difference and a sum);
* ``rows_diff`` — "How many more shapes are in the top row than in the bottom row?" (two counts, a difference).

Every chain is built from structured steps (:class:`Step`), so each sample records what each step claims and
what the scene says. A share of the **training** chains is flawed, as a self-distilled pool is after its answers
were checked — every flawed chain still ends in the right answer, so only a reward model can filter it:

* ``wrong_steps`` — an intermediate count is off by one (its listed objects are right) and the step that uses
  it writes the true result anyway: right answer by wrong steps;
* ``contradicts_image`` — the "I see" description names an object that is not in the scene (a hallucinated
  shape in an empty cell, or a real one with the wrong colour);
* ``loop`` — after the answer the chain "checks again" and repeats a counting step ``loop_repeats`` times: an
  over-long chain with repeated sentences.

``meta["flaw"]`` labels each chain (``none`` for sound ones) and ``meta["steps"]`` holds the claimed and true
values of every counting step. Each step also knows what of it is flawed (:attr:`Step.flaw`), so
:func:`step_labels` gives a process reward model one label per clause of the chain (the finest step unit of
:mod:`r1v.data.steps`; a coarser unit is flawed when any clause in it is); the pairs carry them as
``meta["chosen_steps"]`` / ``meta["rejected_steps"]``.
Held-out questions (``val``/``test``) are always sound and never share a (scene, question) with training: the two
sides are split by a hash of that key, so no size setting can make them overlap. Sample ``i`` of a split depends
only on (seed, split, i).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from r1v.core.errors import DataError
from r1v.core.interfaces import IMAGE_PLACEHOLDER, THINK_CLOSE, Sample
from r1v.data.steps import step_spans
from r1v.data.synthetic import COLORS, SHAPES, SPLIT_OFFSET, Obj, check_synthetic, describe, draw

TASKS = ("relation_count", "more_plus", "rows_diff")
FLAWS = ("wrong_steps", "contradicts_image", "loop")
DEFAULT_FLAWS = {"wrong_steps": 0.15, "contradicts_image": 0.15, "loop": 0.15}
RELATIONS = ("left of", "right of", "above", "below")
ROWS = ("top", "middle", "bottom")
HELD_OUT_BUCKETS = 10  # 1 in 10 (scene, question) keys is held out; the other 9 are training-only


@dataclass
class Step:
    """One sentence of a chain. ``value``/``true`` are set on counting and arithmetic steps (what the chain
    claims, what the scene gives); ``kind`` is see | locate | count | arith | loop. ``flaw`` says what of it is
    wrong: ``""`` nothing, ``"end"`` its last clause (a miscount's "That makes N."), ``"all"`` every clause, or
    the text of the one wrong clause (a description's object that is not in the scene: "red square at top")."""

    kind: str
    text: str
    value: int | None = None
    true: int | None = None
    sources: tuple[int, ...] = ()  # arith: the steps its two operands come from (indices into the chain)
    flaw: str = ""

    def copy(self) -> Step:
        return Step(self.kind, self.text, self.value, self.true, self.sources, self.flaw)


@dataclass
class HardItem:
    """One question of the regime without its image: enough to check every claim of its chain."""

    scene: list[Obj]
    task: str
    question: str
    answer: str
    steps: list[Step]
    flaw: str = "none"
    sound_chain: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chain(self) -> str:
        return " ".join(s.text for s in self.steps)


def check_flaws(flaws: dict[str, float] | None) -> dict[str, float]:
    """The flaw shares, checked: known kinds, each in [0, 1], summing to at most 1 (the rest is sound)."""
    shares = dict(DEFAULT_FLAWS if flaws is None else flaws)
    for kind, share in shares.items():
        if kind not in FLAWS:
            raise DataError(f"data.flaws: unknown flaw kind '{kind}' (known: {', '.join(FLAWS)})")
        if not isinstance(share, int | float) or not 0.0 <= float(share) <= 1.0:
            raise DataError(f"data.flaws.{kind}: {share} is outside [0, 1] (a share of the training chains)")
    total = sum(float(v) for v in shares.values())
    if total > 1.0 + 1e-9:
        raise DataError(f"data.flaws: the shares sum to {total:g}, above 1 (what is left over is the sound share)")
    return {k: float(shares.get(k, 0.0)) for k in FLAWS}


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def _listed(objs: list[Obj]) -> str:
    return ", ".join(o.text() for o in objs) or "none"


def _count(what: str, objs: list[Obj]) -> Step:
    return Step("count", f"{what}: {_listed(objs)}. That makes {len(objs)}.", len(objs), len(objs))


def _arith(steps: list[Step], i: int, op: str, j: int) -> Step:
    """``steps[i] op steps[j]`` on the values those steps claim."""
    a, b = steps[i].value, steps[j].value
    assert a is not None and b is not None
    r = a - b if op == "-" else a + b
    return Step("arith", f"{a} {op} {b} = {r}.", r, r, (i, j))


def _in_relation(o: Obj, anchor: Obj, rel: str) -> bool:
    (r, c), (ar, ac) = divmod(o.cell, 3), divmod(anchor.cell, 3)
    return {"left of": c < ac, "right of": c > ac, "above": r < ar, "below": r > ar}[rel]


def _scene(rng: random.Random, min_objects: int, max_objects: int) -> list[Obj]:
    n = rng.randint(min_objects, max_objects)
    return [Obj(rng.choice(list(COLORS)), rng.choice(SHAPES), c) for c in sorted(rng.sample(range(9), n))]


def make_question(scene: list[Obj], task: str, rng: random.Random) -> tuple[str, str, list[Step]] | None:
    """(question, answer, sound steps) for ``task`` on ``scene``; None when the scene cannot pose it."""
    see = Step("see", "I see " + describe(scene))
    if task == "relation_count":
        combos = [(o.color, o.shape) for o in scene]
        anchors = [o for o in scene if combos.count((o.color, o.shape)) == 1]  # "the blue square" must be unique
        if not anchors:
            return None
        anchor, rel, target = rng.choice(anchors), rng.choice(RELATIONS), rng.choice(SHAPES)
        near = [o for o in scene if o is not anchor and _in_relation(o, anchor, rel)]
        hits = [o for o in near if o.shape == target]
        steps = [see, Step("locate", f"The {anchor.color} {anchor.shape} is at {anchor.position}."),
                 _count(f"{rel.capitalize()} it", near), _count(f"The {target}s among them", hits)]  # fmt: skip
        q = f"How many {target}s are {rel} the {anchor.color} {anchor.shape}?"
        return q, str(len(hits)), steps
    if task == "more_plus":
        c1, c2 = rng.sample(list(COLORS), 2)
        n1, n2 = (sum(o.color == c for o in scene) for c in (c1, c2))
        if n1 < n2:  # "how many more" is asked of the larger side
            c1, c2 = c2, c1
        shape = rng.choice(SHAPES)
        a, b = [o for o in scene if o.color == c1], [o for o in scene if o.color == c2]
        t = [o for o in scene if o.shape == shape]
        steps = [see, _count(f"The {c1} ones", a), _count(f"The {c2} ones", b)]
        steps.append(_arith(steps, 1, "-", 2))
        steps.append(_count(f"The {shape}s", t))
        steps.append(_arith(steps, 3, "+", 4))
        q = f"How many more {c1} shapes than {c2} ones, plus the number of {shape}s?"
        return q, str(len(a) - len(b) + len(t)), steps
    if task == "rows_diff":
        r1, r2 = rng.sample(range(3), 2)
        rows = [[o for o in scene if o.cell // 3 == r] for r in (r1, r2)]
        if len(rows[0]) < len(rows[1]):
            r1, r2, rows = r2, r1, rows[::-1]
        steps = [see, _count(f"The {ROWS[r1]} row", rows[0]), _count(f"The {ROWS[r2]} row", rows[1])]
        steps.append(_arith(steps, 1, "-", 2))
        q = f"How many more shapes are in the {ROWS[r1]} row than in the {ROWS[r2]} row?"
        return q, str(len(rows[0]) - len(rows[1])), steps
    raise DataError(f"data.tasks: unknown task '{task}' (known: {', '.join(TASKS)})")


# -- flaws -----------------------------------------------------------------------------------------------


def _off_by_one(n: int, rng: random.Random) -> int:
    return n + 1 if n == 0 or rng.random() < 0.5 else n - 1


def flaw_wrong_steps(steps: list[Step], rng: random.Random) -> list[Step]:
    """Miscount one intermediate count (never the last step, which carries the answer): its list stays right,
    its number is off by one, and an arithmetic step that uses it still writes the true result."""
    out = [s.copy() for s in steps]
    counts = [i for i, s in enumerate(out[:-1]) if s.kind == "count"]
    i = rng.choice(counts)
    s = out[i]
    assert s.value is not None
    wrong = _off_by_one(s.value, rng)
    s.text, s.value = s.text.replace(f"That makes {s.true}.", f"That makes {wrong}."), wrong
    s.flaw = "end"  # the listing is right, the number is not
    user = next((a for a in out[i + 1 :] if a.kind == "arith" and i in a.sources), None)
    if user is not None:  # the operation takes the wrong operand but still writes the true result
        head, result = user.text.rsplit(" = ", 1)
        x, op, y = head.split(" ")
        x, y = (str(wrong), y) if user.sources[0] == i else (x, str(wrong))
        user.text = f"{x} {op} {y} = {result}"
        user.flaw = "all"  # wrong arithmetic: x op y is not the result written
    return out


def flaw_contradicts_image(scene: list[Obj], steps: list[Step], rng: random.Random) -> tuple[list[Step], Obj]:
    """Describe the scene with an object that is not there: a hallucinated shape in an empty cell, or a real
    one recoloured. The later steps still follow the real scene (the answer stays right)."""
    described = list(scene)
    empty = [c for c in range(9) if c not in {o.cell for o in scene}]
    if empty and rng.random() < 0.5:
        ghost = Obj(rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(empty))
        described = sorted([*described, ghost], key=lambda o: o.cell)
    else:
        k = rng.randrange(len(scene))
        real = scene[k]
        ghost = Obj(rng.choice([c for c in COLORS if c != real.color]), real.shape, real.cell)
        described[k] = ghost
    out = [s.copy() for s in steps]
    out[0] = Step("see", "I see " + describe(described), flaw=ghost.text())
    return out, ghost


def flaw_loop(steps: list[Step], repeats: int) -> list[Step]:
    """After the answer, "check again" and repeat the first counting step ``repeats`` times, each time reaching
    the same number: the over-long, looping chain of a reasoner that does not stop."""
    count = next(s for s in steps if s.kind == "count")
    repeated = Step(count.kind, count.text, count.value, count.true, count.sources, flaw="all")
    again = [Step("loop", "Wait, let me count again.", flaw="all"), repeated]
    return [*steps, *(again * repeats), Step("loop", f"So the answer is {steps[-1].value}.", flaw="all")]


def step_labels(steps: list[Step]) -> list[tuple[int, int, bool]]:
    """``(start, end, sound)`` for each clause of the chain ``" ".join(step texts)`` (character spans, as
    :func:`r1v.data.steps.step_spans` finds them with ``unit="clause"``): a clause is flawed when its step is
    wholly flawed, when it is the last clause of a step whose last clause is wrong, or when it is the step's
    one wrong clause (an object that is not in the scene); every other clause is sound."""
    out, offset = [], 0
    for step in steps:
        spans = step_spans(step.text, "clause")
        for k, (a, b) in enumerate(spans):
            clause = step.text[a:b].removeprefix("I see ").rstrip(";.")
            flawed = step.flaw in ("all", clause) or (step.flaw == "end" and k == len(spans) - 1)
            out.append((offset + a, offset + b, not flawed))
        offset += len(step.text) + 1  # the joining space
    return out


# -- samples ---------------------------------------------------------------------------------------------


def _held_out(question: str, scene: list[Obj]) -> bool:
    key = f"{question}|{describe(scene)}".encode()
    return int(hashlib.sha1(key).hexdigest()[:8], 16) % HELD_OUT_BUCKETS == 0


def pick_flaw(u: float, shares: dict[str, float]) -> str:
    """The flaw kind a uniform draw ``u`` in [0, 1) falls on (cumulative shares; past them: sound)."""
    acc = 0.0
    for kind in FLAWS:
        acc += shares.get(kind, 0.0)
        if u < acc:
            return kind
    return "none"


def generate_item(index: int, split: str = "train", seed: int = 0, tasks: tuple[str, ...] = TASKS,
                  flaws: dict[str, float] | None = None, loop_repeats: int = 3, min_objects: int = 3,
                  max_objects: int = 6, force_flaw: str | None = None) -> HardItem:  # fmt: skip
    """Question ``index`` of ``split`` (no image). Training chains are flawed at the ``flaws`` shares;
    ``force_flaw`` (a kind, or ``none``) overrides the draw, for paired comparisons of one question's chains."""
    if split not in SPLIT_OFFSET:
        raise DataError(f"unknown split '{split}' (known: {', '.join(SPLIT_OFFSET)})")
    shares = check_flaws(flaws)
    rng = random.Random(f"r1v-synthetic-hard/{seed}/{SPLIT_OFFSET[split] + index}")
    task = tasks[index % len(tasks)]
    while True:  # rejection: a scene that can pose the task, on this split's side of the held-out hash
        scene = _scene(rng, min_objects, max_objects)
        made = make_question(scene, task, rng)
        if made is not None and _held_out(made[0], scene) == (split != "train"):
            break
    question, answer, steps = made
    item = HardItem(scene, task, question, answer, steps)
    item.sound_chain = item.chain
    frng = random.Random(f"r1v-synthetic-hard/{seed}/{SPLIT_OFFSET[split] + index}/flaw")
    u = frng.random()  # drawn even when forced, so the flaw's own draws do not depend on the forcing
    kind = force_flaw if force_flaw is not None else (pick_flaw(u, shares) if split == "train" else "none")
    if kind == "wrong_steps":
        item.steps = flaw_wrong_steps(steps, frng)
    elif kind == "contradicts_image":
        item.steps, ghost = flaw_contradicts_image(scene, steps, frng)
        item.extra["ghost"] = ghost.text()
    elif kind == "loop":
        item.steps = flaw_loop(steps, loop_repeats)
    elif kind != "none":
        raise DataError(f"unknown flaw kind '{kind}' (known: none, {', '.join(FLAWS)})")
    item.flaw = kind
    return item


def meta_of(item: HardItem) -> dict[str, Any]:
    """What a sample carries about its chain: task, scene, flaw kind and every step's claimed and true value."""
    steps = [{"kind": s.kind, "value": s.value, "true": s.true} for s in item.steps if s.value is not None]
    return {"task": item.task, "scene": describe(item.scene), "flaw": item.flaw, "steps": steps, **item.extra}


# -- data sets -------------------------------------------------------------------------------------------


def completion(chain: str, answer: str) -> str:
    """What the model writes after the pre-filled ``<think>\\n``: the chain, the closing tag, the boxed answer."""
    return f"{chain}\n{THINK_CLOSE}\n\n\\boxed{{{answer}}}"


class SyntheticHard(Dataset):
    """``data=synthetic_hard``: the regime's questions with images; training chains flawed at ``flaws``."""

    def __init__(self, n: int, split: str, seed: int = 0, image_size: int = 64, tasks: tuple[str, ...] = TASKS,
                 flaws: dict[str, float] | None = None, loop_repeats: int = 3, min_objects: int = 3,
                 max_objects: int = 6) -> None:  # fmt: skip
        check_synthetic("synthetic_hard", n, split, tasks, TASKS)
        if loop_repeats < 1:
            raise DataError(f"data.loop_repeats: {loop_repeats} is below 1 (a looping chain repeats a step)")
        if not 1 <= min_objects <= max_objects <= 8:  # 8: one cell stays free for a hallucinated shape
            raise DataError(f"data.min_objects/max_objects: need 1 ≤ {min_objects} ≤ {max_objects} ≤ 8")
        self.n, self.split, self.seed, self.image_size = n, split, seed, image_size
        self.tasks, self.flaws = tuple(tasks), check_flaws(flaws)
        self.knobs = {"loop_repeats": loop_repeats, "min_objects": min_objects, "max_objects": max_objects}
        self.skipped: Counter[str] = Counter()

    def __len__(self) -> int:
        return self.n

    def item(self, i: int, force_flaw: str | None = None) -> HardItem:
        return generate_item(i, self.split, self.seed, self.tasks, self.flaws, force_flaw=force_flaw, **self.knobs)

    def _sample(self, i: int, item: HardItem) -> Sample:
        jitter = random.Random(f"r1v-synthetic-hard/{self.seed}/{self.split}/{i}/img")
        return Sample(id=f"synthetic_hard-{self.split}-{self.seed}-{i}",
                      question=f"{IMAGE_PLACEHOLDER}\n{item.question}", answer=item.answer,
                      images=[draw(item.scene, self.image_size, jitter)], reasoning=item.chain,
                      meta=meta_of(item))  # fmt: skip

    def __getitem__(self, i: int) -> Sample:
        return self._sample(i, self.item(i))


class SyntheticHardPairs(SyntheticHard):
    """``data=synthetic_hard_pairs`` (``stage=reward_model``, ``stage=mpo``): for each question, chosen = its sound
    chain, rejected = the same question's chain with one flaw (drawn by the ``flaws`` shares, renormalised) —
    both end in the right answer, so the pair teaches the reward model to judge the steps, not the answer.
    ``meta["flaw"]`` names the rejected chain's flaw; ``meta["chosen_steps"]`` / ``meta["rejected_steps"]`` label
    each sentence of either chain ``[start, end, 1 sound | 0 flawed]`` (``stage.objective=process``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kinds = [k for k in FLAWS if self.flaws[k] > 0]
        if not self.kinds:
            raise DataError("data.flaws: every share is 0; pairs need at least one flaw kind for the rejected side")

    def __getitem__(self, i: int) -> Sample:
        total = sum(self.flaws[k] for k in self.kinds)
        u = random.Random(f"r1v-synthetic-hard/{self.seed}/{self.split}/{i}/pair").random() * total
        kind = pick_flaw(u, {k: self.flaws[k] for k in self.kinds}) if u < total else self.kinds[-1]
        sound, flawed = self.item(i, force_flaw="none"), self.item(i, force_flaw=kind)
        s = self._sample(i, sound)
        s.meta.update(
            flaw=kind,
            chosen=completion(sound.chain, s.answer),
            rejected=completion(flawed.chain, s.answer),
            chosen_steps=[[a, b, int(ok)] for a, b, ok in step_labels(sound.steps)],
            rejected_steps=[[a, b, int(ok)] for a, b, ok in step_labels(flawed.steps)],
        )
        return s

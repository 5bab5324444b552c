"""Chain revisers for AL-CoTD: what happens to a distilled chain whose answer was wrong.

``rationalize`` is the built-in offline reviser (STaR's rationalisation): the model regenerates the
chain with the correct answer given as a hint and the chain is kept only if it reaches that answer
and does not mention the hint. ``drop`` discards wrong chains. ``openai_judge`` (r1v_plugins.judge)
asks a stronger model behind an OpenAI-compatible endpoint.
"""

from __future__ import annotations

from dataclasses import replace

from r1v import hookimpl
from r1v.core.interfaces import Sample, ScoreContext
from r1v.evaluation.answers import chain_of, equivalent, extract_answer


class Rationalize:
    def __init__(self, attempts: int, hint: str, greedy: bool) -> None:
        if attempts < 1:
            raise ValueError(f"reviser 'rationalize': attempts must be ≥ 1, got {attempts}")
        if "{answer}" not in hint:
            raise ValueError("reviser 'rationalize': hint must contain {answer}")
        self.attempts, self.hint, self.greedy = attempts, hint, greedy

    def revise(self, samples: list[Sample], wrong_chains: list[str], ctx: ScoreContext) -> list[str | None]:
        out: list[str | None] = [None] * len(samples)
        todo = list(range(len(samples)))
        for _ in range(self.attempts):
            if not todo:
                break
            hinted = [replace(s, question=f"{s.question}\n{self.hint.format(answer=s.answer)}")
                      for s in (samples[i] for i in todo)]  # fmt: skip
            texts = ctx.engine.generate(ctx.model, ctx.processor, hinted, ctx.max_new_tokens, greedy=self.greedy)
            for i, text in zip(todo, texts, strict=True):
                chain = chain_of(text)
                if chain and "hint" not in chain.lower() and equivalent(extract_answer(text), samples[i].answer):
                    out[i] = chain
            todo = [i for i in todo if out[i] is None]
        return out


class Drop:
    def revise(self, samples: list[Sample], wrong_chains: list[str], ctx: ScoreContext) -> list[str | None]:
        return [None] * len(samples)


def rationalize(attempts: int = 2, hint: str = "(Hint: the correct answer is {answer}.)",
                greedy: bool = False) -> Rationalize:  # fmt: skip
    """STaR rationalisation: regenerate with the answer as a hint; keep only chains that reach it."""
    return Rationalize(attempts, hint, greedy)


def drop() -> Drop:
    """Discard wrong chains (no revision)."""
    return Drop()


@hookimpl
def register_revisers(register):
    register("rationalize", rationalize)
    register("drop", drop)

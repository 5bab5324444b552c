"""An optional LLM judge for evaluation (R1V's maintainers recommend one: rule extraction under-scores
reasoning models that state the answer in prose). Any OpenAI-compatible endpoint (vLLM, SGLang, a hosted
API) via :class:`r1v.evaluation.endpoint.ChatEndpoint`; the endpoint is checked before anything is generated.

``mode=fallback`` (default) asks the judge only when the rule-based check says wrong; ``always`` asks for
every completion. The verdict replaces the rule's; ``samples.jsonl`` records both.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from r1v.evaluation.endpoint import ChatEndpoint, JudgeError
from r1v.evaluation.scoring import LETTERS, EvalItem

PROMPT = """You are grading an answer to a question against the reference answer.

Question:
{question}

Reference answer: {reference}

End of the response to grade:
{response}

Does the response's final answer mean the same as the reference answer (equivalent values, expressions or
option)? Reply with one line: "Verdict: correct" or "Verdict: incorrect"."""
_VERDICT = re.compile(r"verdict\s*:\s*(correct|incorrect)", re.IGNORECASE)
MODES = ("fallback", "always")


log = logging.getLogger(__name__)
MIN_ASKED, MAX_FAILURE_SHARE = 10, 0.5  # a judge whose replies mostly lack a verdict is misconfigured


class AnswerJudge:
    def __init__(self, url: str, model: str, mode: str = "fallback", api_key_env: str | None = "OPENAI_API_KEY",
                 timeout_s: float = 60.0, tail_chars: int = 2000) -> None:  # fmt: skip
        if mode not in MODES:
            raise JudgeError(f"judge.mode '{mode}' is not allowed (use {', '.join(MODES)})")
        self.endpoint = ChatEndpoint(url, model, api_key_env, timeout_s)
        self.mode, self.tail_chars = mode, tail_chars
        self.asked = 0
        self.failures = 0  # replies without a verdict: the rule's verdict stands, counted (too many stop the run)

    def check(self) -> None:
        self.endpoint.check()

    def __call__(self, item: EvalItem, completion: str, rule_correct: bool) -> bool:
        """The verdict for one completion (the rule's when the judge is not asked)."""
        if rule_correct and self.mode == "fallback":
            return True
        reference = item.answer
        if item.kind == "mc" and item.answer in LETTERS[: len(item.choices)]:
            reference = f"{item.answer}. {item.choices[LETTERS.index(item.answer)]}"
        tail = completion.rsplit("</think>", 1)[-1][-self.tail_chars :]
        reply = self.endpoint.chat([{"role": "user", "content": PROMPT.format(
            question=item.question, reference=reference, response=tail)}])  # fmt: skip
        self.asked += 1
        found = _VERDICT.findall(reply)
        if not found:
            self.failures += 1
            message = f"judge {self.endpoint.url}: no 'Verdict: correct|incorrect' in its reply {reply[:80]!r}"
            if self.asked >= MIN_ASKED and self.failures / self.asked > MAX_FAILURE_SHARE:
                raise JudgeError(f"{message}; {self.failures} of {self.asked} replies had none (above "
                                 f"{MAX_FAILURE_SHARE:.0%}): check judge.url / judge.model")  # fmt: skip
            if self.failures == 1:
                log.warning("%s (the rule's verdict stands; further ones are only counted)", message)
            return rule_correct
        return found[-1].lower() == "correct"


def build_judge(node: dict[str, Any] | None) -> AnswerJudge | None:
    """The ``judge`` node of the eval config (null: rule-based only), checked before use."""
    if not node or not node.get("url"):
        return None
    judge = AnswerJudge(**node)
    judge.check()
    return judge

"""``openai_judge``: a scorer and a reviser backed by any OpenAI-compatible chat endpoint (GPT-4o as in
R1V, or a local vLLM/SGLang server). Both check the endpoint when built, so an unreachable judge stops
the run before anything is generated."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from r1v import hookimpl
from r1v.core.interfaces import Sample, ScoreContext
from r1v.evaluation.answers import equivalent, extract_answer
from r1v.evaluation.endpoint import ChatEndpoint, parse_score, user_message

RUBRICS = {
    "quality": "How clear, well-posed and answerable is this question? 0 = garbled or unanswerable, "
               "5 = perfectly clear.",
    "difficulty": "How difficult is this question for a strong student? 0 = trivial, 5 = very hard.",
    "reasoning_demand": "How many reasoning steps does answering need? 0 = none (pure lookup), "
                        "5 = long multi-step reasoning.",
    "necessity": "How necessary is the image to answer? 0 = answerable from the text alone, 5 = impossible without it.",
    "integration": "How much must visual details and the text be combined (relations between several objects, "
                   "why/how questions, domain knowledge)? 0 = plain identification, 5 = deep integration.",
    "sample": "Rate this training sample (question, reasoning, answer) as a reward model would: correctness, "
              "coherence, no needless repetition. 0 = useless, 5 = excellent.",
}  # fmt: skip


class JudgeScorer:
    """Scores on 0–5 from the judge's "Score: x" reply, one request per sample, ``workers`` in flight."""

    scale = "0-5"

    def __init__(self, endpoint: ChatEndpoint, aspect: str, workers: int) -> None:
        if aspect not in RUBRICS:
            raise ValueError(f"scorer openai_judge: aspect '{aspect}' is not allowed ({', '.join(RUBRICS)})")
        self.endpoint, self.aspect, self.workers = endpoint, aspect, workers

    def prompt(self, s: Sample) -> str:
        text = f"{RUBRICS[self.aspect]}\n\nQuestion: {s.question.replace('<image>', '').strip()}"
        if self.aspect == "sample":
            text += f"\nReasoning: {s.reasoning or ''}\nAnswer: {s.answer}"
        return text + "\n\nReply with one line: Score: <0-5>"

    def one(self, s: Sample) -> float:
        value = parse_score(self.endpoint.chat(user_message(self.prompt(s), s.images)))
        if not 0 <= value <= 5:
            raise ValueError(f"judge score {value} is outside 0–5")
        return value

    def score(self, samples: list[Sample], ctx: ScoreContext) -> list[float]:
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            return list(pool.map(self.one, samples))


class JudgeReviser:
    """Asks the stronger model for a corrected chain that reaches the known answer; kept only if it does."""

    def __init__(self, endpoint: ChatEndpoint, workers: int) -> None:
        self.endpoint, self.workers = endpoint, workers

    def one(self, s: Sample, wrong: str) -> str | None:
        text = (f"Question: {s.question.replace('<image>', '').strip()}\n\nA student reasoned:\n{wrong}\n\n"
                f"The correct final answer is {s.answer}. Write a corrected, concise step-by-step reasoning that "
                f"reaches it, then end with \\boxed{{{s.answer}}}.")  # fmt: skip
        reply = self.endpoint.chat(user_message(text, s.images))
        if not equivalent(extract_answer(reply), s.answer):
            return None
        chain = reply.split("</think>", 1)[0] if "</think>" in reply else reply.rsplit("\\boxed", 1)[0]
        return chain.strip().removeprefix("<think>").strip() or None

    def revise(self, samples: list[Sample], wrong_chains: list[str], ctx: ScoreContext) -> list[str | None]:
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            return list(pool.map(self.one, samples, wrong_chains))


def _endpoint(url: str, model: str, api_key_env: str | None, timeout_s: float) -> ChatEndpoint:
    endpoint = ChatEndpoint(url, model, api_key_env, timeout_s)
    endpoint.check()  # fail fast, before any generation
    return endpoint


def openai_judge_scorer(url: str = "http://localhost:8000/v1", model: str = "gpt-4o", aspect: str = "sample",
                        api_key_env: str | None = "OPENAI_API_KEY", timeout_s: float = 60.0,
                        workers: int = 8) -> JudgeScorer:  # fmt: skip
    """A judge model behind an OpenAI-compatible endpoint scores each sample 0–5 on one aspect."""
    return JudgeScorer(_endpoint(url, model, api_key_env, timeout_s), aspect, workers)


def openai_judge_reviser(url: str = "http://localhost:8000/v1", model: str = "gpt-4o",
                         api_key_env: str | None = "OPENAI_API_KEY", timeout_s: float = 60.0,
                         workers: int = 8) -> JudgeReviser:  # fmt: skip
    """A stronger model behind an OpenAI-compatible endpoint revises wrong chains toward the answer."""
    return JudgeReviser(_endpoint(url, model, api_key_env, timeout_s), workers)


@hookimpl
def register_scorers(register):
    register("openai_judge", openai_judge_scorer)


@hookimpl
def register_revisers(register):
    register("openai_judge", openai_judge_reviser)

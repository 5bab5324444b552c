"""Scoring samples for AL-CoTD and iterative SFT: running scorer plugins over a data set with a
failure policy, min-max normalisation, and the calibration that puts any scorer on R1V's 0–5 scale.

Calibration (``rm.calibration``):

* ``none`` — the scorer already speaks 0–5 (R1V's reward model, a judge with a 0–5 rubric); a value
  outside [0, 5] stops the run with one line naming the scorer, sample and value.
* ``quantile`` — for unbounded scalars (a Bradley-Terry reward model, a log-likelihood): the data
  set's scores are cut at the quantiles ``q1 < … < q5`` (default: sixths) and a sample's calibrated
  score is the number of cuts it reaches, 0…5. τ = 5 then keeps the top sixth whatever the scorer's
  units, τ = 2 the top two thirds; ties at a cut go up (a sample equal to a cut reaches it).
"""

from __future__ import annotations

import logging
import math
import pickle
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from r1v.core.errors import ScoringError
from r1v.core.interfaces import IMAGE_PLACEHOLDER, Sample, ScoreContext
from r1v.runtime.workers import WorkerPool, time_limit

log = logging.getLogger(__name__)
SCORER_POLICIES = ("keep", "drop", "error")
CALIBRATIONS = ("none", "quantile")
DEFAULT_QUANTILES = (1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6)


ISOLATIONS = ("process", "inline")


def _score_in_worker(scorer: Any, samples: list[Sample]) -> list[float]:
    return [float(v) for v in scorer.score(samples, ScoreContext())]


class ScorerPool:
    """Worker processes for the scorers that do not need the live model (``needs_model`` unset): a call stuck in C
    code (a regular expression, an image decoder) is killed at its time limit, which SIGALRM in the training
    process cannot do. Scorers that run the model (``needs_model = True``) and scorers that cannot be pickled
    (said once) score in the training process, under SIGALRM's limit on Python code."""

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self._pool = WorkerPool(workers)
        self._inline: set[str] = set()

    def isolates(self, name: str, scorer: Any) -> bool:
        """Whether ``scorer`` runs in a worker process."""
        if getattr(scorer, "needs_model", False) or name in self._inline:
            return False
        try:
            pickle.dumps(scorer)
        except Exception as e:
            self._inline.add(name)
            log.warning("scorer %s cannot be sent to a worker process (%s: %s); it scores in the training process, "
                        "where a call stuck in C code cannot be interrupted", name, type(e).__name__, e)  # fmt: skip
            return False
        return True

    def score(self, scorer: Any, samples: list[Sample], timeout_s: float | None) -> list[float]:
        """``scorer.score(samples)`` in a worker; past ``timeout_s`` the workers are killed and TimeoutError raised."""
        return self._pool.call(_score_in_worker, scorer, samples, timeout_s=timeout_s)

    def close(self, kill: bool = False) -> None:
        self._pool.close(kill)


def run_scorer(name: str, scorer: Any, samples: list[Sample], ctx: ScoreContext, failures: Counter[str],
               policy: str = "keep", timeout_s: float | None = None,
               pool: ScorerPool | None = None) -> list[float | None]:  # fmt: skip
    """Scores of ``samples``; a batch that raises (or runs past ``timeout_s`` per sample) is retried sample by
    sample, and a sample that still fails (raises, times out, gives NaN or inf) yields None and is counted in
    ``failures[name]`` — unless ``policy=error``. With ``pool``, a scorer that does not need the model scores in a
    worker process (:class:`ScorerPool`)."""
    isolated = pool is not None and pool.isolates(name, scorer)

    def call(batch: list[Sample], limit: float | None) -> list[float]:
        if isolated:
            return pool.score(scorer, batch, limit)  # type: ignore[union-attr]
        with time_limit(limit):
            return [float(v) for v in scorer.score(batch, ctx)]

    try:
        values = call(samples, timeout_s * len(samples) if timeout_s else None)
        if len(values) != len(samples):
            raise ScoringError(f"scorer '{name}' returned {len(values)} scores for {len(samples)} samples")
    except ScoringError:
        raise
    except Exception:
        values = []
        for s in samples:
            try:
                values.append(call([s], timeout_s)[0])
            except Exception as e:
                if policy == "error":
                    raise ScoringError(f"scorer '{name}' failed on sample {s.id}: {type(e).__name__}: {e} (set "
                                       "on_scorer_error=keep or drop to continue without it)") from None  # fmt: skip
                log.warning("scorer %s failed on sample %s: %s", name, s.id, e)
                values.append(math.nan)
    out: list[float | None] = []
    for s, v in zip(samples, values, strict=True):
        if not math.isfinite(v):
            if policy == "error":
                raise ScoringError(f"scorer '{name}' gave no score (NaN) for sample {s.id}")
            failures[name] += 1
            out.append(None)
        else:
            out.append(v)
    return out


def minmax(values: Sequence[float | None]) -> list[float | None]:
    """Min-max normalise to [0, 1] over the non-missing values; a constant column maps to 0.5."""
    known = [v for v in values if v is not None]
    if not known:
        return [None] * len(values)
    lo, hi = min(known), max(known)
    if hi - lo < 1e-12:
        return [None if v is None else 0.5 for v in values]
    return [None if v is None else (v - lo) / (hi - lo) for v in values]


def impute_mean(values: Sequence[float | None]) -> list[float]:
    """Missing values (a failed scorer, policy ``keep``) become the column mean; neutral for DRLC."""
    known = [v for v in values if v is not None]
    mean = sum(known) / len(known) if known else 0.5
    return [mean if v is None else v for v in values]


def calibrate(values: Sequence[float | None], calibration: str, scorer: str, ids: Sequence[str],
              quantiles: Sequence[float] = DEFAULT_QUANTILES) -> list[float | None]:  # fmt: skip
    """Map raw scores onto R1V's 0–5 scale (see the module docstring)."""
    if calibration not in CALIBRATIONS:
        raise ScoringError(f"rm.calibration: '{calibration}' is not allowed (use none or quantile)")
    if calibration == "none":
        for v, sid in zip(values, ids, strict=True):
            if v is not None and not 0.0 <= v <= 5.0:
                raise ScoringError(
                    f"rm.scorer '{scorer}' scored sample {sid} {v:g}, outside R1V's 0–5 scale; use a 0–5 scorer "
                    "or set stage.rm.calibration=quantile to map its scores onto 0–5"
                )
        return list(values)
    qs = list(quantiles)
    if len(qs) != 5 or any(not 0 < q < 1 for q in qs) or qs != sorted(qs):
        raise ScoringError(f"rm.quantiles: need 5 increasing values in (0, 1), got {qs}")
    known = sorted(v for v in values if v is not None)
    if not known:
        return list(values)
    cuts = [_quantile(known, q) for q in qs]
    return [None if v is None else float(sum(v >= c for c in cuts)) for v in values]


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default) of an ascending list."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def batches(items: Sequence[int], size: int) -> Iterable[list[int]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


# -- model-based scores (the model itself as judge) ------------------------------------------------------


def without_images(sample: Sample) -> Sample:
    """The text-only ablation of a sample: same question and answer, images and placeholders removed."""
    question = sample.question.replace(f"{IMAGE_PLACEHOLDER}\n", "").replace(IMAGE_PLACEHOLDER, "")
    return Sample(sample.id, question, sample.answer, [], sample.reasoning, dict(sample.meta))


@torch.no_grad()
def completion_nll(ctx: ScoreContext, samples: list[Sample], target: str = "answer",
                   transform: Callable[[Sample], Sample] | None = None,
                   reduce: str = "mean") -> list[float]:  # fmt: skip
    """Negative log-likelihood of each sample's reference completion (``target``: the direct answer or the
    reasoning chain) under ``ctx.model``: the model's own judgement of how surprising the reference is, per token
    on average (``reduce="mean"``) or at its most surprising token (``reduce="max"``: one wrong step in a long
    chain is not diluted by the rest)."""
    if ctx.model is None or ctx.processor is None:
        raise ScoringError("this scorer needs the model (run it inside a stage that has one)")
    processor, model = ctx.processor, ctx.model
    items = [transform(s) if transform else s for s in samples]
    batch = processor.collate([processor.encode(s, target) for s in items], padding_side="right")
    device = next(model.parameters()).device
    pixels = None if batch["pixel_values"] is None else batch["pixel_values"].to(device)
    logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device), pixels).logits.float()
    labels = batch["labels"].to(device)[:, 1:]  # (B, L-1): token t+1 predicted at t
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, L-1, V)
    mask = labels != -100
    tok = torch.gather(logp, 2, labels.clamp(min=0)[..., None])[..., 0]  # (B, L-1)
    if reduce == "max":
        nll = (-tok).masked_fill(~mask, float("-inf")).max(1).values
    else:
        nll = -(tok * mask).sum(1) / mask.sum(1).clamp(min=1)
    return [float(v) for v in nll]


def per_part(rows: Mapping[str, Sequence[float | None]], n: int) -> list[dict[str, float | None]]:
    """{part: column} -> one {part: value} dict per sample."""
    return [{part: col[i] for part, col in rows.items()} for i in range(n)]

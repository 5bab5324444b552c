"""``stage=make_pairs``: preference pairs from the current model (R1V2's MPO data, on-policy).

For each training prompt (or the first ``stage.limit``): sample ``stage.k`` responses with the
``stage.rollout`` engine from the model of ``checkpoint=``, score each with the configured rewards
(``reward=[...]``: rule checks such as accuracy and format, a ``reward_model``, an ``openai_judge``
scorer — time-limited and failure-counted as in GRPO), and pair the best with the worst. The pair is
kept when their score gap is at least ``stage.threshold``: R1V2 found a high threshold stable and low
ones reward-hacked. Output in the run folder:

- ``pairs.jsonl`` — the ``data=pairs`` schema (id, images, question, answer, chosen, rejected) with
  ``meta.make_pairs`` = both scores and their parts, the gap, and every candidate's score;
- ``pairs_dropped.jsonl`` — prompts without a pair and why (``all_equal`` / ``below_threshold``);
- ``pairs.json`` — the summary (prompts, pairs, gaps, reward failures).

Train on it with ``stage=mpo data=pairs data.train=<run>/pairs.jsonl`` or ``stage=reward_model``.
A threshold that leaves no pair stops the run with one line (the largest gap seen), after writing the
summary.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from statistics import mean
from typing import Any

from r1v.core.config import ConfigError, build_plugin
from r1v.core.interfaces import RewardInput
from r1v.core.registry import get_registry
from r1v.data.datasets import image_refs
from r1v.rl.rewards import RewardRunner
from r1v.runtime.runs import write_json_atomic

log = logging.getLogger(__name__)


class NoPairsError(ConfigError):
    """The threshold left no pair (a user error: one line, the run stops cleanly)."""


class MakePairs:
    """``stage=make_pairs`` (runs once, outside Lightning): see the module docstring."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = dict(cfg)
        st = self.cfg["stage"]
        self.k, self.threshold = int(st["k"]), float(st["threshold"])
        if not self.cfg.get("rewards"):
            raise ConfigError(
                "stage=make_pairs needs at least one reward to score responses (reward=[accuracy,format])"
            )

    def run_stage(self, run_dir: Path) -> dict[str, Any] | None:
        from r1v.data.build import build_datasets
        from r1v.model.load import autocast, inference_model, stage_device
        from r1v.runtime.runs import already_finished
        from r1v.stages.base import build_rewards

        if already_finished(run_dir, "pairs.json", self.cfg.get("resume"), "pairs"):
            return None
        st = self.cfg["stage"]
        engine = build_plugin(get_registry(), "rollout", st["rollout"], "stage.rollout")
        runner = RewardRunner(build_rewards(self.cfg), float(st["reward_timeout_s"]), str(st["reward_isolation"]),
                              int(st["reward_workers"]), st.get("max_reward_failure_share"))  # fmt: skip
        train, _ = build_datasets(self.cfg, get_registry())
        n = len(train) if st.get("limit") is None else min(int(st["limit"]), len(train))
        model, processor = inference_model(self.cfg)
        device = stage_device(self.cfg)
        kept, dropped, gaps = 0, Counter(), []
        bs = int(st["batch_size"])
        try:
            with (run_dir / ".pairs.jsonl.tmp").open("w") as out, \
                    (run_dir / ".pairs_dropped.jsonl.tmp").open("w") as dropped_f:  # fmt: skip
                for start in range(0, n, bs):
                    samples = [train[i] for i in range(start, min(n, start + bs))]
                    expanded = [s for s in samples for _ in range(self.k)]
                    with autocast(self.cfg, device):
                        texts = engine.generate(model, processor, expanded, int(st["max_new_tokens"]))
                    parts, totals = runner.score([RewardInput.of(s, t, id=s.id)
                                                  for s, t in zip(expanded, texts, strict=True)])  # fmt: skip
                    for j, s in enumerate(samples):
                        row, why, gap = self._pair(s, texts, parts, totals, j * self.k, run_dir)
                        gaps.append(gap)
                        if why is None:
                            kept += 1
                            out.write(json.dumps(row) + "\n")
                        else:
                            dropped[why] += 1
                            dropped_f.write(json.dumps(row) + "\n")
                    log.info("make_pairs: %d/%d prompts, %d pairs", min(n, start + bs), n, kept)
        finally:
            runner.close()
        for line in runner.summary():  # a reward that failed on every call, too few calls to stop the run
            log.warning(line)
        (run_dir / ".pairs.jsonl.tmp").replace(run_dir / "pairs.jsonl")
        (run_dir / ".pairs_dropped.jsonl.tmp").replace(run_dir / "pairs_dropped.jsonl")
        summary = {"prompts": n, "pairs": kept, "dropped": dict(dropped), "k": self.k, "threshold": self.threshold,
                   "gap": {"mean": round(mean(gaps), 4), "max": max(gaps)} if gaps else None,
                   "reward_failures": dict(runner.failures)}  # fmt: skip
        write_json_atomic(run_dir / "pairs.json", summary)
        if not kept:
            raise NoPairsError(f"stage.threshold={self.threshold}: none of the {n} prompts gave a score gap that "
                               f"large (largest gap {max(gaps, default=0.0):.3g} over k={self.k} responses); "
                               "lower the threshold or raise stage.k")  # fmt: skip
        log.info("make_pairs: %d pairs from %d prompts (%s) -> %s", kept, n, dict(dropped), run_dir / "pairs.jsonl")
        return summary

    def _pair(self, s: Any, texts: list[str], parts: list[dict[str, float]], totals: list[float], first: int,
              run_dir: Path) -> tuple[dict[str, Any], str | None, float]:  # fmt: skip
        """Sample ``s``'s k responses (from ``first``) → (row, why it was dropped or None, score gap)."""
        rng = range(first, first + self.k)
        best, worst = max(rng, key=lambda x: totals[x]), min(rng, key=lambda x: totals[x])
        gap = totals[best] - totals[worst]
        prov = {"chosen_score": totals[best], "rejected_score": totals[worst], "gap": gap,
                "chosen_parts": parts[best], "rejected_parts": parts[worst], "k": self.k,
                "threshold": self.threshold, "candidates": [totals[x] for x in rng]}  # fmt: skip
        if gap >= self.threshold and gap > 0:
            return ({"id": s.id, "images": image_refs(s, run_dir), "question": s.question, "answer": s.answer,
                     "chosen": texts[best], "rejected": texts[worst], "meta": {**s.meta, "make_pairs": prov}},
                    None, gap)  # fmt: skip
        why = "all_equal" if gap <= 1e-9 else "below_threshold"
        return {"id": s.id, "why": why, "make_pairs": prov}, why, gap

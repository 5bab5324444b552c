"""``stage=grpo``: Group Relative Policy Optimisation (R1V's hybrid-optimisation stage 3), with the
variants users compare (Dr. GRPO, DAPO) and R1V2's Selective Sample Buffer.

One ``training_step`` is one rollout batch, made into an :class:`~r1v.stages.grpo.phases.Experience` phase by
phase (``phases.py``: rollout → rewards → advantages → dynamic-sampling refill → old log-probs → R1V2's Selective
Sample Buffer → reference log-probs), then :meth:`GRPOStage.update`: μ (``stage.mu``) optimizer steps over the
batch, each accumulating micro-batches of ``stage.micro_batch_size`` completions through the ``stage.policy_loss``
plugin (clipped ratio against the stored old log-probs, + β·KL(k3) to the frozen reference when β > 0).

A **step** is one optimizer update, so ``max_steps`` counts μ per rollout batch. Per-token log-probs
come in chunks (no [B, T, vocab] fp32 logits); the reference for adapter-only training is the same
trunk with a copy of the initial adapter swapped in (:class:`r1v.rl.grpo.AdapterReference`); with ``stage.lora``
the base with LoRA switched off plus that copy (:class:`r1v.rl.grpo.LoraReference`): no second model either way.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader

from r1v.core.config import ConfigError, build_plugin
from r1v.core.errors import DataError
from r1v.core.interfaces import Sample, sampling_params
from r1v.core.registry import did_you_mean, get_registry
from r1v.data.audio import audio_batch, audio_inputs
from r1v.data.sampler import mark
from r1v.generation.choose import choose_engine
from r1v.rl.grpo import Reference, Rollout, SelectiveSampleBuffer, completion_rows, reference_for, token_logprobs
from r1v.rl.packed import packed_rows, packed_token_logprobs
from r1v.rl.rewards import RewardRunner
from r1v.runtime.faults import maybe_die, poisoned
from r1v.runtime.steps import grads_finite
from r1v.runtime.weights import GATHER_MODES, gathered
from r1v.stages.base import LightningStage
from r1v.stages.grpo.phases import (
    Experience,
    grouped_rollouts,
    mark_lockstep_pads,
    old_logprobs,
    reference_logprobs,
    refill,
    replay_from_buffer,
    score,
    stored_old_logprobs,
    unpadded,
)

log = logging.getLogger(__name__)


class _Indexed(torch.utils.data.Dataset):
    """(data-set index, Sample) pairs: the buffer and the refill stream refer to prompts by index. A prompt
    fetched for a lock-step pad of the sampler is marked (:func:`r1v.data.sampler.is_pad`)."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, Sample]:
        return int(i), mark(self.ds[int(i)], i)


def _build(kind: str, node: Mapping[str, Any], where: str) -> Any:
    return build_plugin(get_registry(), kind, node, where)


def loss_shares(micro: list[list[Rollout]], agg: str) -> list[float]:
    """The weight of each micro-batch's aggregated loss in the update, so that their weighted sum is the
    aggregate over the whole batch's real completions. A lock-step pad's tokens are masked (``_batch``), so it
    adds nothing to a micro-batch's sum and counts in no denominator; a micro-batch of pads only weighs 0."""
    real = [[r for r in mb if not r.meta.get("pad")] for mb in micro]
    if agg == "token_mean":  # sum over tokens / tokens: each micro-batch by its share of the real tokens
        n_tokens = sum(len(r.completion_ids) for mb in real for r in mb)
        return [sum(len(r.completion_ids) for r in mb) / max(n_tokens, 1) for mb in real]
    n_items = sum(len(mb) for mb in real)  # seq_mean / constant divide by the micro-batch's row count
    return [len(mb) / n_items if ok else 0.0 for mb, ok in zip(micro, real, strict=True)]


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed per (run seed, optimizer step, rank): distinct across steps and ranks."""
    import hashlib

    digest = hashlib.blake2b(f"{seed}/{step}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class GRPOStage(LightningStage):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg)
        st = self.stage
        self.automatic_optimization = False  # μ updates per rollout batch, micro-batched
        self.G = int(st["group_size"])
        if not self.cfg.get("rewards"):
            raise ConfigError("stage=grpo needs at least one reward (reward=[accuracy,format])")
        self.mu = int(st["mu"])
        self.loss_fn = _build("policy_loss", st["policy_loss"], "stage.policy_loss")
        self.beta = float(getattr(self.loss_fn, "beta", 0.0))
        self.length = _build("length", st["length"], "stage.length")
        self.engine = _build("rollout", st["rollout"], "stage.rollout")
        gather = str(st["rollout_gather"])
        if gather not in GATHER_MODES:
            raise ConfigError(f"stage.rollout_gather={gather}: must be one of {', '.join(GATHER_MODES)}"
                              f"{did_you_mean(gather, GATHER_MODES)}")  # fmt: skip
        self.runner = RewardRunner(self.rewards(), float(st["reward_timeout_s"]), str(st["reward_isolation"]),
                                   int(st["reward_workers"]), st["max_reward_failure_share"])  # fmt: skip
        ssb = st["ssb"]
        self.ssb = SelectiveSampleBuffer(int(ssb.get("capacity", 1024)), int(cfg["seed"])) if ssb.get("enabled") \
            else None  # fmt: skip
        self.reference: Reference | None = None
        self._media: dict[int, tuple[torch.Tensor | None, dict[str, Any]]] = {}  # one step's tiles and audio, by prompt
        self._refill = random.Random(int(cfg["seed"]) + 1)

    # -- model and data --------------------------------------------------------------------------
    def configure_model(self) -> None:
        super().configure_model()
        ctx = getattr(self.model.backbone.config, "max_position_embeddings", None)
        if ctx and int(self.stage["max_new_tokens"]) >= int(ctx):
            raise ConfigError(f"stage.max_new_tokens={self.stage['max_new_tokens']} does not fit the backbone's "
                              f"context of {ctx} tokens (prompts need room too)")  # fmt: skip
        if self.beta > 0 and self.reference is None:  # β = 0: no reference at all
            self.reference = reference_for(self.model, self.trainable, self.lora_fresh)

    def train_dataloader(self) -> DataLoader:
        return self.resumable_loader(_Indexed(self.datasets["train"]), list)  # prompts stay Samples

    def on_fit_start(self) -> None:
        super().on_fit_start()
        ssb = self.stage["ssb"]
        if ssb.get("prefilter"):
            self.prefilter(int(ssb.get("prefilter_pool") or len(self.datasets["train"])))

    def prefilter(self, pool: int) -> None:
        """R1V2's offline pre-filtering: roll out G completions for each of the first ``pool`` prompts and
        keep only prompts whose rewards differ (an all-equal group can never give a learning signal).
        The decision per prompt is written to ``<run>/prefilter.jsonl`` and reused on resume."""
        import json
        from pathlib import Path

        from torch.utils.data import Subset

        path = Path(self.trainer.default_root_dir) / "prefilter.jsonl"
        if path.exists():
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        else:
            ds, rows = self.datasets["train"], []
            n = min(pool, len(ds))
            for start in range(0, n, int(self.stage["batch_size"])):
                idx = list(range(start, min(n, start + int(self.stage["batch_size"]))))
                samples = [ds[i] for i in idx]
                rollouts, _, _ = self.rollout(samples)
                for k, i in enumerate(idx):
                    rewards = [r.reward for r in rollouts[k * self.G : (k + 1) * self.G]]
                    rows.append({"index": i, "id": samples[k].id, "rewards": rewards,
                                 "kept": max(rewards) - min(rewards) > 1e-9})  # fmt: skip
            if self.trainer.is_global_zero:
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
                tmp.replace(path)
        kept = [r["index"] for r in rows if r["kept"]]
        if not kept:
            raise ConfigError(f"stage.ssb.prefilter: none of the {len(rows)} prompts gave different rewards across "
                              f"its {self.G} completions; nothing left to train on")  # fmt: skip
        log.info("grpo: pre-filter kept %d of %d prompts (the rest gave all-equal rewards)", len(kept), len(rows))
        self.datasets["train"] = Subset(self.datasets["train"], kept)

    def attach_data(self, train: Any, val: Any) -> None:
        """A length controller that needs per-sample scores (``needs_scores``, e.g. DRLC's QDAM/VTIA scores from
        ``stage=distill``) is refused at start when the data's rows do not carry them."""
        super().attach_data(train, val)
        if getattr(self.length, "needs_scores", ()) and len(train):
            self.length_scores(train[0])

    def length_scores(self, sample: Sample) -> dict[str, float]:
        """The sample's normalised scores for the length controller (``meta.distill.normalised``; {} when the
        controller needs none). One line naming the sample and the way out when a needed score is missing."""
        need = tuple(getattr(self.length, "needs_scores", ()))
        scores = dict((sample.meta.get("distill") or {}).get("normalised") or {})
        missing = [k for k in need if k not in scores]
        if missing:
            name = self.stage["length"].get("name")
            raise DataError(f"stage.length={name} needs each row's scores {', '.join(need)} (meta.distill.normalised, "
                            f"written by stage=distill), but sample {sample.id} has no {', '.join(missing)}; train on "
                            "distilled data or use stage.length=fixed / none")  # fmt: skip
        return scores

    def validation_step(self, samples: list[Sample], batch_idx: int) -> None:
        self.validate_answers(samples, batch_idx)

    # -- rollout ---------------------------------------------------------------------------------
    def rollout_engine(self, rows: int) -> tuple[str, Any]:
        """How this rollout gets its weights under ZeRO-3 (``stage.rollout_gather``: auto | whole | layer, see
        :func:`r1v.runtime.weights.gather_mode`; the KV cache of ``rows`` sequences, or of the engine's
        ``max_batch_size`` when it decodes in parts, is reserved) and the engine that
        can decode that way: an engine that reads whole weight tensors (``rollout=static``) cannot decode
        layer by layer, so those rollouts use ``rollout=hf`` with the same sampling knobs (said once)."""
        from r1v.runtime.planner import kv_cache_bytes
        from r1v.runtime.weights import gather_mode, gathered_bytes, zero3_offload

        cfg = self.model.backbone.config
        kv_dim = cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
        context = int(self.stage["max_new_tokens"]) + 2048  # prompts (image tokens included) rarely pass 2k
        split = getattr(self.engine, "max_batch_size", None)  # the static engine decodes that many rows at a time
        cached = min(rows, int(split)) if split else rows
        reserve = kv_cache_bytes(cfg.num_hidden_layers, kv_dim, cached, context)  # bf16, every row at full length
        engine = self.ds_engine()
        mode = gather_mode(self.model, engine, str(self.stage["rollout_gather"]), reserve)
        if zero3_offload(engine) is not None and getattr(self, "_gather_said", None) != mode:  # once per change
            self._gather_said = mode
            log.info("rollout: ZeRO-3 weights gathered %s (stage.rollout_gather=%s; %.1f GiB gathered, %.1f GiB "
                     "KV cache reserved)", "whole, once per rollout" if mode == "whole" else "layer by layer",
                     self.stage["rollout_gather"], gathered_bytes(self.model) / 2**30,
                     reserve / 2**30)  # fmt: skip
        if mode == "whole" or not getattr(self.engine, "needs_whole_weights", False):
            return mode, self.engine
        if not hasattr(self, "_layer_engine"):
            node = self.stage["rollout"]
            knobs = {k: v for k, v in node.items() if k != "name"}
            self._layer_engine = choose_engine(self.model, str(node["name"]), mode, **knobs)[0]
            log.warning("rollout: the gathered model does not fit beside its ZeRO-3 shards (stage.rollout_gather="
                        "%s), so rollouts fetch it layer by layer with rollout=hf instead of rollout=%s",
                        self.stage["rollout_gather"], node.get("name"))  # fmt: skip
        return mode, self._layer_engine

    @torch.no_grad()
    def rollout(self, samples: list[Sample]) -> tuple[list[Rollout], list[dict[str, float]], list[str]]:
        """Phases 1–3 for ``samples``: G completions per prompt (grouped by prompt), their reward parts (:func:`score`)
        and advantages (:func:`grouped_rollouts`), and the decoded completions."""
        for s in samples:
            if not s.answer and any(getattr(fn, "needs_answer", False) for _, fn in self.rewards().values()):
                raise ConfigError(f"sample {s.id} has no ground-truth 'answer', which reward 'accuracy' needs")
        expanded = [s for s in samples for _ in range(self.G)]
        params = [sampling_params(self.length, self.length_scores(s)) for s in expanded]  # every prompt's knobs
        if not any(params):
            params = None  # a controller that only shapes rewards: the engine's plain sampling path
        was_training = self.model.training
        self.model.eval()
        gather, engine = self.rollout_engine(len(expanded))
        with self.decode_ready(gather):  # ZeRO-3: gathered once (no per-module hooks in decode) or layer by layer
            ids = self.run_engine("rollout", engine, partial(engine.generate_ids, self.model, self.processor, expanded,
                                  int(self.stage["max_new_tokens"]), greedy=False, sample_params=params))  # fmt: skip
        self.model.train(was_training)
        maybe_die("mid_rollout", self.global_step)
        texts = [self.processor.decode_completion(x) for x in ids]
        parts, totals = score(self.runner, self.length, expanded, texts, ids)
        prompt_ids = [self.processor.encode(s, target=None)["input_ids"] for s in samples]
        eos = self.processor.tokenizer.eos_token_id
        rollouts = grouped_rollouts(prompt_ids, ids, totals, self.G, bool(self.stage["scale_rewards"]), eos)
        return rollouts, parts, texts

    # -- tensors ---------------------------------------------------------------------------------
    def _batch(self, items: list[tuple[Rollout, Sample]]) -> dict[str, Any]:
        """Rows [left pad | prompt | completion | right pad]: completions end-aligned to width T."""
        ids, attn, cmask = completion_rows([r.prompt_ids for r, _ in items], [r.completion_ids for r, _ in items],
                                           self.processor.tokenizer.pad_token_id)  # fmt: skip
        for b, (r, _) in enumerate(items):
            if r.meta.get("pad"):  # a lock-step pad: none of its tokens enters the loss
                cmask[b] = 0
        t = cmask.shape[1]
        tiles, clips = [], []
        for _, s in items:
            if id(s) not in self._media:  # images and video frames, and the clips that fill the <audio_ctx> slots
                feats, frames, windows, _ = self.processor.audios(s)
                self._media[id(s)] = (self.processor.visuals(s)[1], {"audio_features": feats, "audio_frames": frames,
                                                                      "audio_windows": windows})  # fmt: skip
            px, clip = self._media[id(s)]
            tiles += [] if px is None else [px]
            clips += [clip] if s.audios else []
        dev = self.device
        audio = {k: v.to(dev) for k, v in audio_inputs(audio_batch(clips)).items()}  # {} without audio
        packed = packed_rows([r.prompt_ids for r, _ in items], [r.completion_ids for r, _ in items]).to(dev) if (
            self.stage["packing"]) else None  # stage.packing: one padding-free row (r1v/rl/packed.py)  # fmt: skip
        return {"input_ids": ids.to(dev), "attention_mask": attn.to(dev), "completion_mask": cmask.to(dev),
                "pixel_values": torch.cat(tiles).to(dev) if tiles else None, "T": t, "packed": packed,
                "advantages": torch.tensor([r.advantage for r, _ in items], device=dev), **audio}  # fmt: skip

    def _micro(self, items: list[tuple[Rollout, Sample]]) -> list[list[tuple[Rollout, Sample]]]:
        n = int(self.stage["micro_batch_size"])
        return [items[i : i + n] for i in range(0, len(items), n)]

    def _logp(self, batch: dict[str, Any], entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        args = (int(self.stage["logp_chunk"]), entropy)
        if batch["packed"] is not None:
            return packed_token_logprobs(self.model, batch["packed"], batch["pixel_values"],
                                         *batch["completion_mask"].shape, *args, **audio_inputs(batch))  # fmt: skip
        return token_logprobs(self.model, batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                              batch["T"], *args, **audio_inputs(batch))  # fmt: skip

    # -- the step --------------------------------------------------------------------------------
    def training_step(self, batch: list[tuple[int, Sample]], batch_idx: int) -> None:
        """One rollout batch: its experience, phase by phase (r1v/stages/grpo/phases.py), then μ updates on it."""
        self.position.batches_done += 1
        self._media = {}
        # Sampling draws from a stream that is a function of (seed, step, rank) alone: a run resumed from any
        # checkpoint samples exactly the completions an uninterrupted one does, whatever else consumed the
        # global RNG in between (the data loader's iterator draws its base seed from it on creation).
        torch.manual_seed(step_seed(int(self.cfg.get("seed", 0)), self.global_step, self.global_rank))
        exp = Experience(prompts=[s for _, s in batch], indices=[i for i, _ in batch])
        if self.global_step == 0 and self.position.batches_done == 1 and int(self.stage["logp_probe"]):
            self.write_logp_probe(int(self.stage["logp_probe"]))
        n_prompts = len(exp.prompts)
        exp.rollouts, exp.parts, exp.texts = self.rollout(exp.prompts)  # phases 1-3
        self._write_completions(exp.prompts, exp.rollouts, exp.parts, exp.texts)
        mark_lockstep_pads(exp)
        ds = self.stage["dynamic_sampling"]
        if ds.get("enabled"):  # phase 4
            refill(exp, self.rollout, lambda: self._refill.randrange(len(self.datasets["train"])),
                   self.datasets["train"], self.G, int(ds.get("max_refills", 2)))  # fmt: skip
        exp.items = [(r, exp.prompts[r.sample_index]) for r in exp.rollouts]
        exp.seconds["rollout"] = time.perf_counter() - exp.started

        t1 = time.perf_counter()
        micro = int(self.stage["micro_batch_size"])
        need_old = self.mu > 1 or self.ssb is not None  # μ = 1 without replay: the detached current ones are equal
        if need_old:  # phase 5
            old_logprobs(exp.items, micro, self._items_logp)
        if self.ssb is not None:  # phase 6
            replay_from_buffer(exp, self.ssb, self.datasets["train"], n_prompts * self.G)
        if not exp.items:
            log.warning("grpo: step %d has no completion with a learning signal (all groups equal)", self.global_step)
            self._log_step(exp, {})
            return None
        if self.reference is not None:  # phase 7
            with self.reference.active():
                exp.reference = reference_logprobs(exp.items, micro, self._items_logp)
        exp.seconds["reference"] = time.perf_counter() - t1
        self._log_step(exp, self.update(exp, need_old))
        return None

    def _items_logp(self, items: list[tuple[Rollout, Sample]]) -> torch.Tensor:
        return self._logp(self._batch(items))[0]

    def update(self, exp: Experience, need_old: bool) -> dict[str, list[float]]:
        """μ optimizer steps on ``exp.items``, each accumulating its micro-batches through the ``stage.policy_loss``
        plugin, weighted so the sum is the aggregate over the whole batch (:func:`loss_shares`); a non-finite
        gradient skips that step. Returns the loss plugin's metrics per micro-batch."""
        t2 = time.perf_counter()
        opt, sched = self.optimizers(), self.lr_schedulers()
        micro = self._micro(exp.items)
        agg = self.stage["policy_loss"].get("loss_agg", "seq_mean")
        shares = loss_shares([[r for r, _ in mb] for mb in micro], agg)  # lock-step pads weigh nothing
        metrics: dict[str, list[float]] = {}
        for _ in range(self.mu):
            opt.zero_grad()
            for k, mb in enumerate(micro):
                batch = self._batch(mb)
                logp, ent = self._logp(batch, entropy=True)
                old = stored_old_logprobs(mb, logp) if need_old else logp.detach()
                ref = exp.reference[k] if exp.reference else None
                loss, m = self.loss_fn(logp, old, ref, batch["advantages"], batch["completion_mask"])
                share = shares[k]
                if poisoned("nan_loss", self.global_step):
                    loss = loss * float("nan")
                self.manual_backward(loss * share)
                m["loss"] = loss.detach()
                m["entropy"] = (ent * batch["completion_mask"]).sum() / batch["completion_mask"].sum().clamp(min=1)
                for key, v in m.items():
                    metrics.setdefault(key, []).append(float(v))
            if grads_finite(self.model) is False:
                opt.zero_grad(set_to_none=True)  # skip this update: weights and Adam moments untouched
                self.nonfinite("loss or gradient")
                continue
            self.guard.ok()
            clip = self.stage["clip_grad_norm"]
            if clip:
                self.clip_gradients(opt, gradient_clip_val=float(clip), gradient_clip_algorithm="norm")
            opt.step()
            sched.step()
        exp.seconds["update"] = time.perf_counter() - t2
        return metrics

    @torch.no_grad()
    def write_logp_probe(self, k: int) -> None:
        """``stage.logp_probe=k``: before the first update, the per-token log-probs of the first ``k`` training
        prompts followed by their reference answer (teacher-forced, eval mode, the training forward's
        precision) go to ``<run>/logp_probe.pt``. The same file from two runs shows whether strategies
        (ZeRO-2 vs ZeRO-3), precisions or loaders start from the same policy. Collective under ZeRO-3."""
        from pathlib import Path

        ds, tok = self.datasets["train"], self.processor.tokenizer
        items = []
        for i in range(min(k, len(ds))):
            s = ds[i]
            prompt = self.processor.encode(s, target=None)["input_ids"]
            completion = tok(self.processor.completion(s, "answer") + tok.eos_token, add_special_tokens=False)
            items.append((Rollout(i, prompt, completion["input_ids"], 0.0), s))
        was_training = self.model.training
        self.model.eval()
        rows = []
        for mb in self._micro(items):
            lp, _ = self._logp(self._batch(mb))  # [b, T]
            rows += [row[: len(r.completion_ids)].float().cpu() for row, (r, _) in zip(lp, mb, strict=True)]
        self.model.train(was_training)
        tensors = {}  # name -> (dtype, fp64 sum): equal weights, whatever the sharding
        for name, t in [*self.model.named_parameters(), *self.model.named_buffers()]:
            with gathered([t]):
                tensors[name] = (str(t.dtype), float(t.detach().double().sum()))
        if self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / "logp_probe.pt"
            torch.save({"ids": [s.id for _, s in items], "completion_ids": [r.completion_ids for r, _ in items],
                        "logp": rows, "tensors": tensors}, path)  # fmt: skip
            log.info("grpo: log-probs of %d fixed sequences written to %s", len(rows), path)

    def _log_step(self, exp: Experience, metrics: Mapping[str, list[float]]) -> None:
        parts, rollouts = exp.parts, unpadded(exp.rollouts)
        n = len(parts)
        rewards = torch.tensor([r.reward for r in rollouts])
        logs = {"reward/total": float(rewards.mean()), "reward/total_std": float(rewards.std()) if n > 1 else 0.0}
        for key in sorted({k for p in parts for k in p}):
            vals = torch.tensor([p.get(key, 0.0) for p in parts])
            logs[f"reward/{key}"] = float(vals.mean())
            logs[f"reward/{key}_std"] = float(vals.std()) if n > 1 else 0.0
        lengths = torch.tensor([float(len(r.completion_ids)) for r in rollouts])
        logs.update({"completion/length_mean": float(lengths.mean()), "completion/length_max": float(lengths.max()),
                     "completion/clipped_share": sum(r.meta["truncated"] for r in rollouts) / len(rollouts),
                     "effective_share": exp.effective_share, "time/rollout_s": exp.seconds["rollout"],
                     "time/reference_s": exp.seconds.get("reference", 0.0),
                     "time/update_s": exp.seconds.get("update", 0.0),
                     "reward/failures": float(sum(self.runner.failures.values()))})  # fmt: skip
        for key in self.runner.rewards:  # per plugin: which one fails matters more than how many in all
            logs[f"reward/failures/{key}"] = float(self.runner.failures[key])
        if self.ssb is not None:
            logs["ssb/size"], logs["ssb/replayed"] = float(len(self.ssb)), float(exp.replayed)
        for key, vals in metrics.items():
            logs[f"train/{key}"] = sum(vals) / len(vals)
        self.log_dict(logs, batch_size=len(rollouts))
        self.log("train/reward", logs["reward/total"], prog_bar=True, batch_size=len(rollouts))

    def _write_completions(self, samples: list[Sample], rollouts: list[Rollout], parts: list[dict[str, float]],
                           texts: list[str]) -> None:  # fmt: skip
        """Every ``stage.completions_every`` rollout batches (and the first), the first
        ``stage.completions_prompts`` prompts' G completions with their rewards, parts, advantages and media (image
        thumbnail, audio names and durations, video frames) go to ``<run>/completions.jsonl`` (rank 0): what the
        policy writes, over time (``python -m r1v report`` shows them)."""
        every = int(self.stage["completions_every"])
        if not every or not self.trainer.is_global_zero or (self.position.batches_done - 1) % every:
            return
        import json
        from pathlib import Path

        from r1v.reports.html import sample_media

        lines = []
        for i, s in enumerate(samples[: max(1, int(self.stage["completions_prompts"]))]):
            group = range(i * self.G, (i + 1) * self.G)
            lines.append({"step": self.global_step, "id": s.id, "question": s.question, "answer": s.answer,
                          **sample_media(s),  # the image thumbnail; audio names and durations, video frames
                          "completions": [{"text": texts[k], "reward": rollouts[k].reward, "parts": parts[k],
                                           "advantage": rollouts[k].advantage,
                                           "tokens": len(rollouts[k].completion_ids)} for k in group]})  # fmt: skip
        with (Path(self.trainer.default_root_dir) / "completions.jsonl").open("a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in lines))

    # -- checkpoints: SSB and the refill stream ------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["r1v"]["grpo"] = {"refill": self._refill.getstate(),
                                     "ssb": self.ssb.state_dict() if self.ssb is not None else None,
                                     "rewards": self.runner.state_dict()}  # fmt: skip

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("r1v", {}).get("grpo") or {}
        if state.get("refill"):
            self._refill.setstate(state["refill"])
        if state.get("ssb") and self.ssb is not None:
            self.ssb.load_state_dict(state["ssb"])
        self.runner.load_state_dict(state.get("rewards") or {"failures": state.get("reward_failures")})

    def on_train_start(self) -> None:
        """On resume, drop completions.jsonl rows of steps after the checkpoint: they are about to be redone."""
        import json
        from pathlib import Path

        path = Path(self.trainer.default_root_dir) / "completions.jsonl"
        if self.global_step == 0 or not path.is_file() or not self.trainer.is_global_zero:
            return
        rows = path.read_text().splitlines()
        keep = [r for r in rows if r.strip() and json.loads(r).get("step", 0) < self.global_step]
        if len(keep) != len(rows):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(r + "\n" for r in keep))
            tmp.replace(path)

    def on_train_end(self) -> None:
        for line in self.runner.summary():  # rewards that failed on every call, too few calls to stop the run
            log.warning(line)
        self.runner.close()

    def release(self) -> None:
        self.runner.close(kill=True)  # the reward worker processes and their semaphores

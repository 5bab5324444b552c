"""Building blocks of GRPO-family training: group advantages, memory-bounded per-token log-probs,
R1V2's Selective Sample Buffer and the reference models that share the policy's trunk (adapter-only training:
:class:`AdapterReference`; LoRA: :class:`LoraReference`).

Shapes: B completions (= prompts × G, grouped consecutively), T completion tokens, L = prompt + T.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from r1v.model.lora import lora_disabled, lora_names
from r1v.runtime.kernels import fused_head, fused_logprobs


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """``[B]`` rewards, groups of ``group_size`` consecutive completions -> ``[B]`` advantages
    Â_i = (r_i − mean(r_group)) / (std(r_group) + eps), std unbiased=False; without ``scale``
    (Dr. GRPO) only the mean is removed. An all-equal group gives 0 for all its members."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)  # [P, G]
    centred = r - r.mean(1, keepdim=True)
    if scale:
        centred = centred / (r.std(1, unbiased=False, keepdim=True) + eps)
    return centred.view(-1)


def equal_groups(rewards: torch.Tensor, group_size: int, tol: float = 1e-9) -> torch.Tensor:
    """``[P]`` bool: groups whose rewards are all equal (zero advantage: no learning signal)."""
    r = rewards.float().view(-1, group_size)
    return (r.max(1).values - r.min(1).values) <= tol


def token_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   pixel_values: torch.Tensor | None, n_completion: int, chunk: int = 1024,
                   with_entropy: bool = False, **media: Any) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Log-probs ``[B, T]`` of the last ``n_completion`` tokens of each row (and their entropies).

    The LM head runs on ``chunk`` positions at a time (:func:`chunked_logprobs`), so the full
    ``[B, L, vocab]`` fp32 logits never exist, in the forward nor, with gradients, kept for the backward
    (152k vocab × 8k tokens × 4 B = 5 GB per row). Rows are right-aligned prompts + completions (left
    padding), as the rollout produces them.
    """
    # ``media``: the batch's other encoder inputs (audio_features/audio_frames, see r1v.data.audio.audio_inputs)
    hidden = model.hidden_states(input_ids, attention_mask, pixel_values, **media)  # [B, L, D]
    head = model.backbone.get_output_embeddings()
    h = hidden[:, -n_completion - 1 : -1]  # [B, T, D]: position t predicts token t+1
    targets = input_ids[:, -n_completion:]  # [B, T]
    return chunked_logprobs(head, h, targets, chunk, with_entropy)


def chunked_logprobs(head: torch.nn.Module, h: torch.Tensor, targets: torch.Tensor, chunk: int = 1024,
                     with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Hidden states ``[B, T, D]`` and target ids ``[B, T]`` -> the targets' log-probs ``[B, T]`` (and the
    entropies), through the LM head ``chunk`` positions at a time in fp32.

    With gradients each chunk is recomputed in the backward (activation checkpointing): autograd keeps only
    the chunk's hidden states, not its ``[B, chunk, V]`` log-softmax, so the peak is one chunk's logits
    instead of all of them (what a plain chunked loop still keeps for the backward). A head marked by
    ``stage.kernels=liger`` (:func:`r1v.runtime.kernels.apply_kernels`) runs Liger's fused kernel instead.
    """

    def one(hc: torch.Tensor, tc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logp = torch.log_softmax(head(hc).float(), dim=-1)  # [B, c, V]
        ent = -(logp.exp() * logp).sum(-1).detach() if with_entropy else logp.new_zeros(())
        return torch.gather(logp, 2, tc[..., None])[..., 0], ent

    # ZeRO-3 releases the head's weight after each forward, the recompute's too: the weight saved by the
    # recomputed chunk then reads as an empty placeholder, which the checkpoint's metadata check would take for
    # a different recomputation (its values are the same: ZeRO-3 gathers it again for the backward).
    check = "none" if hasattr(getattr(head, "weight", None), "ds_id") else "default"
    if fused_head(head, h):  # stage.kernels=liger: Liger's fused linear cross-entropy (r1v.runtime.kernels)
        logp = fused_logprobs(head, h, targets)
        if not with_entropy:
            return logp, None
        with torch.no_grad():  # a metric only: one more pass over the head, no graph kept
            return logp, torch.cat([one(h[:, s : s + chunk].detach(), targets[:, s : s + chunk])[1]
                                    for s in range(0, h.shape[1], chunk)], 1)  # fmt: skip
    out, ent = [], []
    for s in range(0, h.shape[1], chunk):
        args = (h[:, s : s + chunk], targets[:, s : s + chunk])
        if torch.is_grad_enabled():
            lp, e = torch.utils.checkpoint.checkpoint(one, *args, use_reentrant=False, determinism_check=check)
        else:
            lp, e = one(*args)
        out.append(lp)
        ent.append(e)
    return torch.cat(out, 1), (torch.cat(ent, 1) if with_entropy else None)


def completion_rows(prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Rows ``[left pad | prompt | completion | right pad]`` for :func:`token_logprobs`: ids and attention
    ``[B, Lp + T]`` and the completion mask ``[B, T]`` (T = the longest completion, at least 1)."""
    lp = max(len(p) for p in prompts)
    t = max(max(len(c) for c in completions), 1)
    ids = torch.full((len(prompts), lp + t), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    cmask = torch.zeros((len(prompts), t), dtype=torch.long)  # [B, T]
    for b, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[b, lp - len(p) : lp] = torch.as_tensor(p, dtype=torch.long)
        ids[b, lp : lp + len(c)] = torch.as_tensor(c, dtype=torch.long)
        attn[b, lp - len(p) : lp + len(c)] = 1
        cmask[b, : len(c)] = 1
    return ids, attn, cmask


@dataclass
class Rollout:
    """One completion ready for the policy update (what the buffer stores)."""

    sample_index: int  # position of its prompt's Sample in the step's prompt list
    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    old_logp: torch.Tensor | None = None  # [T] stored for replay (CPU)
    reward: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


class SelectiveSampleBuffer:
    """R1V2's SSB: keeps completions with non-zero advantage and replays them with probability ∝ |Â|,
    together with the old log-probs stored when they were generated. Bounded (oldest out first)."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.items: list[tuple[Rollout, int]] = []  # (rollout, its prompt's data-set index)
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, rollouts: list[Rollout], indices: list[int]) -> int:
        """Keep the rollouts with Â ≠ 0 (``indices[r.sample_index]`` is each one's data-set index)."""
        kept = [(r, indices[r.sample_index]) for r in rollouts if abs(r.advantage) > 1e-8 and r.old_logp is not None]
        self.items.extend(kept)
        del self.items[: max(0, len(self.items) - self.capacity)]
        return len(kept)

    def sample(self, n: int) -> list[tuple[Rollout, int]]:
        """``n`` items drawn with replacement, weights |Â|."""
        if not self.items or n <= 0:
            return []
        weights = [abs(r.advantage) for r, _ in self.items]
        return self.rng.choices(self.items, weights=weights, k=n)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "items": [(vars(r), s) for r, s in self.items]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self.items = [(Rollout(**r), s) for r, s in state["items"]]


class AdapterReference:
    """The frozen reference policy for training that touches only a few parameters (R1V: the adapter):
    the trunk is shared with the policy and only a copy of the trainable tensors' initial values is
    kept, swapped in for the reference forward pass — no second 38B model. For whole-model training
    the copy is the whole model's trainable weights (on ``device``, CPU to save GPU memory).

    Under ZeRO-3 a parameter's ``.data`` is an empty placeholder that the engine's hooks fill on each
    forward from the rank's partition (``ds_tensor``), so swapping ``.data`` would be undone by the next
    fetch. There each rank keeps the initial values of its own partitions only (1/N of the copy, on
    ``device``, CPU by default) and swaps them in and out of the partitions in place: no collective and no
    whole-model gather, which whole-model training at 38B could not afford (64 GiB per GPU, 77 GB of host
    memory per rank). Persistent parameters (small ones every rank holds whole) are swapped whole as well.
    """

    def __init__(self, model: torch.nn.Module, names: list[str], device: str | torch.device | None = None) -> None:
        params = dict(model.named_parameters())
        self.params = {n: params[n] for n in names}
        self.zero3 = any(hasattr(p, "ds_id") for p in self.params.values())
        if self.zero3:
            self.initial = self._zero3_values("cpu" if device is None else device)
            return
        self.initial = {n: p.detach().to(device or p.device, copy=True) for n, p in self.params.items()}

    def _zero3_values(self, device: str | torch.device | None) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Each parameter's partition on this rank, and the whole value of persistent ones (small: gathered
        if they are not whole right now); copies on ``device`` (None: where they are)."""
        import deepspeed
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        out = {}
        for n, p in self.params.items():
            persist = getattr(p, "ds_persist", False)
            if p.ds_status != ZeroParamStatus.NOT_AVAILABLE and not persist:
                if p.ds_active_sub_modules:  # a module mid-forward holds it whole: its partition would not be read
                    raise RuntimeError(f"reference swap: ZeRO-3 parameter '{n}' is gathered by a running module")
                p.partition(param_list=[p], has_been_updated=False)  # released, as DeepSpeed's hooks would
            whole = None
            if persist:
                with deepspeed.zero.GatheredParameters([p]) if p.ds_status == ZeroParamStatus.NOT_AVAILABLE \
                        else contextlib.nullcontext():  # fmt: skip
                    whole = p.data.detach().to(device or p.ds_tensor.device, copy=True)
            out[n] = (p.ds_tensor.detach().to(device or p.ds_tensor.device, copy=True), whole)
        return out

    def _zero3_write(self, values: dict[str, tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        with torch.no_grad():
            for n, p in self.params.items():
                shard, whole = values[n]
                p.ds_tensor.data.copy_(shard)
                if whole is not None and p.ds_status == ZeroParamStatus.AVAILABLE:  # held whole: read as is
                    p.data.copy_(whole)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within this block the model computes the reference policy."""
        if self.zero3:
            current = self._zero3_values(None)  # the policy's partitions, copied where they are (1/N of the model)
            self._zero3_write(self.initial)
            try:
                yield
            finally:
                self._zero3_write(current)
            return
        saved = {n: p.data for n, p in self.params.items()}
        try:
            for n, p in self.params.items():
                p.data = self.initial[n].to(saved[n].device, saved[n].dtype)
            yield
        finally:
            for n, p in self.params.items():
                p.data = saved[n]


class LoraReference:
    """The reference of a LoRA run: the base with LoRA switched off (LoRA's B starts at 0, so the base *is* the
    starting policy: no copy at all) plus :class:`AdapterReference`'s initial copy of the other trainable tensors
    (the projector). Gives KL = 0 at step 0 up to float rounding."""

    def __init__(self, model: torch.nn.Module, names: list[str], device: str | torch.device | None = None) -> None:
        self.model = model
        lora = set(lora_names(model))
        self.rest = AdapterReference(model, [n for n in names if n not in lora], device)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within this block the model computes the reference policy."""
        with lora_disabled(self.model), self.rest.active():
            yield


Reference = AdapterReference | LoraReference  # what a stage's frozen reference can be


def reference_for(model: torch.nn.Module, trainable: list[str], lora_fresh: bool = True,
                  device: str | torch.device | None = None) -> Reference:  # fmt: skip
    """The frozen starting policy of a stage that trains ``trainable``: with fresh LoRA weights the base with LoRA
    off (:class:`LoraReference`); LoRA weights continued from a checkpoint are not the base, so their (small) copy
    is kept like the adapter's (:class:`AdapterReference`)."""
    if lora_fresh and lora_names(model):
        return LoraReference(model, trainable, device)
    return AdapterReference(model, trainable, device)

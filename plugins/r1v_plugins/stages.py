"""Training stages as plugins: ``stage.name`` picks the LightningModule."""

from __future__ import annotations

from typing import Any

from r1v import hookimpl


def sft_stage(cfg: dict[str, Any]) -> Any:
    """Supervised next-token training on completions (align: adapter + substitute LM; sft: reasoning)."""
    from r1v.stages.sft import SFTStage

    return SFTStage(cfg)


def reassemble_stage(cfg: dict[str, Any]) -> Any:
    """R1V re-assembly: a trained adapter in front of another backbone and its tokenizer (no training)."""
    from r1v.stages.reassemble import Reassemble

    return Reassemble(cfg)


def distill_stage(cfg: dict[str, Any]) -> Any:
    """R1V AL-CoTD: QDAM/VTIA scores, DRLC penalty, self-distilled <think> chains, revision of wrong ones."""
    from r1v.stages.distill import Distill

    return Distill(cfg)


def iterative_sft_stage(cfg: dict[str, Any]) -> Any:
    """R1V iterative SFT: T rounds on {RM score ≥ τ_t} ∪ {answered wrongly by the previous round}."""
    from r1v.stages.iterative import IterativeSFT

    return IterativeSFT(cfg)


def grpo_stage(cfg: dict[str, Any]) -> Any:
    """GRPO (R1V stage 3; Dr. GRPO / DAPO variants; R1V2's Selective Sample Buffer)."""
    from r1v.stages.grpo import GRPOStage

    return GRPOStage(cfg)


def mpo_stage(cfg: dict[str, Any]) -> Any:
    """R1V2 MPO: w1·DPO + w2·BCO + w3·NLL on preference pairs, reference = the starting policy."""
    from r1v.stages.mpo import MPOStage

    return MPOStage(cfg)


def make_pairs_stage(cfg: dict[str, Any]) -> Any:
    """Preference pairs from the current model: k samples per prompt, reward-scored, best vs worst by a gap."""
    from r1v.stages.make_pairs import MakePairs

    return MakePairs(cfg)


def reward_model_stage(cfg: dict[str, Any]) -> Any:
    """A scalar-head (Bradley-Terry) reward model on preference pairs; the run folder is the reward model."""
    from r1v.stages.reward_model import RewardModelStage

    return RewardModelStage(cfg)


@hookimpl
def register_stages(register):
    register("align", sft_stage, "adapter alignment with a substitute LM (R1V step 1): SFT on direct answers")
    register("sft", sft_stage, "supervised fine-tuning on R1-format reasoning chains")
    register("reassemble", reassemble_stage)
    register("distill", distill_stage)
    register("iterative_sft", iterative_sft_stage)
    register("grpo", grpo_stage)
    register("mpo", mpo_stage)
    register("make_pairs", make_pairs_stage)
    register("reward_model", reward_model_stage)

"""AdamW for bf16 weights without DeepSpeed (r1v/runtime/optim.py): plain torch AdamW loses most updates at R1V's
learning rates; the Kahan-compensated one tracks fp32 AdamW; fp32 parameters are updated as torch updates them."""

from __future__ import annotations

from types import SimpleNamespace

import optimi
import pytest
import torch

from r1v.runtime.optim import adamw, uses_deepspeed

LR, WD, BETAS, STEPS = 1e-5, 0.01, (0.9, 0.999), 200


def run(dtype: torch.dtype, make) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) of a (256, 256) weight of scale 0.02 after STEPS steps of optimiser ``make`` on fixed
    pseudo-random gradients (mean 0.3, so the updates have a direction)."""
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(256, 256, generator=gen) * 0.02
    p = torch.nn.Parameter(w0.to(dtype, copy=True))
    opt = make([p])
    for _ in range(STEPS):
        p.grad = (torch.randn(256, 256, generator=gen) + 0.3).to(dtype)
        opt.step()
    return w0.to(dtype).float(), p.detach().float()


def torch_adamw(params):
    return torch.optim.AdamW(params, lr=LR, betas=BETAS, weight_decay=WD)


def r1v_adamw(params):
    return adamw(params, LR, BETAS, WD, deepspeed=False)


def test_fp32_parameters_are_updated_as_torch_adamw_updates_them():
    start, ref = run(torch.float32, torch_adamw)
    _, got = run(torch.float32, r1v_adamw)
    assert isinstance(r1v_adamw([torch.nn.Parameter(torch.zeros(2))]), torch.optim.AdamW)
    assert (ref - start).abs().mean() > 5e-4  # the reference moved
    assert torch.allclose(got, ref, atol=1e-7, rtol=0)


def test_bf16_weights_keep_updates_below_their_resolution():
    start32, ref = run(torch.float32, torch_adamw)
    start, plain = run(torch.bfloat16, torch_adamw)
    _, kahan = run(torch.bfloat16, r1v_adamw)
    moved = (ref - start32).abs().mean()
    # torch AdamW in bf16: most updates round away (the failure this module exists for)
    assert (plain - start).abs().mean() < 0.2 * moved
    # Kahan-compensated: moves as far as fp32 AdamW, and stays within bf16 rounding of its weights
    assert abs((kahan - start).abs().mean() / moved - 1) < 0.05
    assert (kahan - ref).abs().mean() < 0.1 * moved
    assert (plain - ref).abs().mean() > 5 * (kahan - ref).abs().mean()


def test_deepspeed_keeps_torch_adamw_for_its_fp32_masters():
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    assert type(adamw([p], LR, BETAS, WD, deepspeed=True)) is torch.optim.AdamW
    assert isinstance(adamw([p], LR, BETAS, WD, deepspeed=False), optimi.AdamW)


class DeepSpeedStrategy:  # only the name matters to uses_deepspeed
    pass


@pytest.mark.parametrize("strategy, deepspeed", [(object(), False), (DeepSpeedStrategy(), True), (None, False)])
def test_a_stage_picks_the_optimiser_by_strategy_and_dtype(compose, strategy, deepspeed):
    from r1v.stages.sft import SFTStage

    stage = SFTStage(compose("stage=sft", "stage.trainable=[adapter,backbone]"))
    stage.configure_model()
    stage.model.backbone.to(torch.bfloat16)  # as real backbones are built (backbone.dtype)
    trainer = SimpleNamespace(strategy=strategy, estimated_stepping_batches=10)
    assert uses_deepspeed(trainer) is deepspeed
    stage.trainer = trainer
    opt = stage.configure_optimizers()["optimizer"]
    assert (type(opt) is torch.optim.AdamW) if deepspeed else isinstance(opt, optimi.AdamW)
    n_trainable = sum(1 for p in stage.model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable

"""Shared check of sampled tokens against the tempered nucleus distribution (sort and Triton samplers)."""

from __future__ import annotations

import torch


def assert_follows_nucleus(draws: torch.Tensor, logits: torch.Tensor, t: float, p: float) -> None:
    """(n,) draws from one (V,) row: never outside the nucleus, frequencies within 4 sigma of
    softmax(logits / t) renormalised on it (transformers' top-p rule: keep while the mass above is < p)."""
    n, v = draws.numel(), logits.numel()
    probs = (logits / t).softmax(-1)
    order = probs.argsort(descending=True)
    keep = torch.zeros(v, dtype=torch.bool)
    keep[order[(probs[order].cumsum(0) - probs[order]) < p]] = True
    expected = torch.where(keep, probs, 0.0)
    expected /= expected.sum()
    freq = torch.bincount(draws, minlength=v).double() / n
    sigma = (expected * (1 - expected) / n).sqrt().double()
    assert (freq[~keep] == 0).all()
    assert ((freq - expected.double()).abs() <= 4 * sigma + 1e-9).all(), (freq, expected)

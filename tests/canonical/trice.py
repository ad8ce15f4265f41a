"""Canonical TRICE loss (Phan, Hoffman et al. 2023, "Training Chain-of-Thought via Latent-Variable
Inference", arXiv 2312.02179), written from the paper's estimator with a loop over the minibatch's
examples; never imports unigrad.

Each example m is a dict: ``proposal`` (the row of z̃_m ~ π_θ), ``accepted`` (z̃_m gave the correct answer)
and ``memory`` (the row of z_m after the update: the proposal's row when accepted, the old rationale's row
when rejected, None when the example has no rationale yet). ℓ(z) = Σ_t logp·mask of its row. The estimator

    ĝ = (1/M) Σ_m [ ∇ℓ(z_m) − β_m ∇ℓ(z̃_m) ],   β_m = (1/(M−1)) Σ_{m'≠m} 1[accepted_{m'}]   (0 when M = 1)

is the gradient of the (ascent) surrogate (1/M) Σ_m [ℓ(z_m) − β_m ℓ(z̃_m)] with β_m a constant; the loss
returned is its negation. An example without a rationale contributes nothing (it still counts in M and
in the other examples' β). ``control_variate=False`` drops the β term. ``memory_nll`` is the value the
method reports: −(1/M) Σ_{m with a rationale} ℓ(z_m).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _seq(logp: Tensor, mask: Tensor, row: int) -> Tensor:
    return (logp[row] * mask[row]).sum()


def trice_loss(logp: Tensor, mask: Tensor, examples: list[dict], control_variate: bool = True) -> Tensor:
    M = len(examples)
    total = logp.new_zeros(())
    for m, ex in enumerate(examples):
        if ex["memory"] is None:
            continue
        others = [float(e["accepted"]) for j, e in enumerate(examples) if j != m]
        beta = sum(others) / len(others) if others and control_variate else 0.0
        total = total + _seq(logp, mask, ex["memory"]) - beta * _seq(logp, mask, ex["proposal"])
    return -total / M


def memory_nll(logp: Tensor, mask: Tensor, examples: list[dict]) -> Tensor:
    M = len(examples)
    return -sum((_seq(logp, mask, ex["memory"]) for ex in examples if ex["memory"] is not None),
                logp.new_zeros(())) / M

"""Curvature estimates for Sophia (Liu et al. 2024, "Sophia: A Scalable Stochastic Second-order
Optimizer for Language Model Pre-training", ICLR, arXiv 2305.14342, §2.3): an unbiased-in-expectation
estimate ĥ of the Hessian's diagonal from the step's data, which ``optim.Sophia`` folds into its
moving average every k steps (``updates.CurvatureRefresh``).

- **Gauss–Newton–Bartlett** (Sophia-G): labels ŷ_t ~ π_θ(· | prefix) drawn from the model itself at
  each of the step's N completion positions, L̂ = (1/N) Σ_t −log π_θ(ŷ_t), ĝ = ∇L̂, and

      ĥ = N · ĝ ⊙ ĝ,

  whose expectation (by Bartlett's identity E_ŷ[∇ log π(ŷ)] = 0) is the diagonal of the Gauss–Newton
  matrix of the token-level cross-entropy, i.e. of the model's Fisher — the curvature of the policy,
  whatever method's loss is being minimised.
- **Hutchinson** (Sophia-H): u ~ N(0, I), ĥ = u ⊙ ∇⟨∇L, u⟩ with L the method's loss on the step (a
  Hessian-vector product by double backward: the forward keeps the graph of the first backward).

Both take the estimator protocol's ``(micro_batches, backward, key)`` and return ``StepSums`` whose
``direction`` is the list of ĥ tensors, one per trainable parameter; the random draws come from
``(seed, key)``, so a resumed run repeats them. ``reduce`` sums the gradients' buffers over processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from unigrad.estimator.protocols import Output
from unigrad.gradients.base import StepSums
from unigrad.logprobs.producers import SampledLabels

STRIDE = 1_000_003


def _seed(seed: int, key: int, part: int) -> int:
    return ((seed * STRIDE + key) * STRIDE + part) % (2 ** 63)


@dataclass(frozen=True)
class SampledLabelNLL:
    """L̂ = (1/N) Σ_t −log π_θ(ŷ_t) over the step's N completion tokens (the labels are the producer's)."""
    requires: ClassVar[frozenset[str]] = frozenset({"logp"})

    def loss(self, batch) -> Output:
        loss = -(batch.logp * batch.mask).sum() / batch.tokens_total
        return Output(loss, loss.detach(), {"curvature_tokens": batch.tokens_total})


def _take_gradients(params: list) -> list:
    out = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for p in params:
        p.grad = None
    return out


def _clear(params: list) -> None:
    for p in params:
        p.grad = None


@dataclass(frozen=True, eq=False)
class GaussNewtonBartlett:
    """ĥ = N · ĝ ⊙ ĝ, ĝ the gradient of the mean NLL of labels drawn from the model (module docstring)."""
    params: list
    chunk_size: int = 1024
    seed: int = 0
    rank: int = 0
    reduce: Callable[[list], None] = lambda params: None

    def __call__(self, micro_batches, backward, key: int = 0) -> StepSums:
        _clear(self.params)
        sums, tokens = StepSums(), 0.0
        for i, loss_of in enumerate(micro_batches):
            producer = SampledLabels(self.chunk_size, _seed(self.seed, key, self.rank * len(micro_batches) + i))
            out, n = loss_of(objective=SampledLabelNLL(), logprobs=producer)
            backward(out.loss)
            sums.objective += float(out.objective)
            sums.tokens += n
            tokens = out.metrics["curvature_tokens"]
        self.reduce(self.params)
        sums.direction = [tokens * g * g for g in _take_gradients(self.params)]
        return sums


@dataclass(frozen=True, eq=False)
class Hutchinson:
    """ĥ = u ⊙ H u, u ~ N(0, I), H the Hessian of the method's loss on the step (module docstring)."""
    params: list
    seed: int = 0
    reduce: Callable[[list], None] = lambda params: None

    def __call__(self, micro_batches, backward, key: int = 0) -> StepSums:
        generator = torch.Generator(device=self.params[0].device)
        generator.manual_seed(_seed(self.seed, key, 0))
        u = [torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) for p in self.params]
        _clear(self.params)
        sums = StepSums()
        for loss_of in micro_batches:
            with sdpa_kernel(SDPBackend.MATH):     # the fused attention kernels have no double backward
                out, n = loss_of()
            grads = torch.autograd.grad(out.loss, self.params, create_graph=True, allow_unused=True)
            inner = sum((g * v).sum() for g, v in zip(grads, u) if g is not None)
            if torch.is_tensor(inner) and inner.requires_grad:
                for p, hv in zip(self.params, torch.autograd.grad(inner, self.params, allow_unused=True)):
                    if hv is not None:
                        p.grad = hv if p.grad is None else p.grad + hv
            sums.objective += float(out.objective)
            sums.tokens += n
        self.reduce(self.params)
        sums.direction = [v * hu for v, hu in zip(u, _take_gradients(self.params))]
        return sums


CURVATURES = ("gauss-newton-bartlett", "hutchinson")


def curvature(name: str, params: list, chunk_size: int = 1024, seed: int = 0,
              reduce: Callable[[list], None] = lambda params: None, rank: int = 0):
    """The curvature estimator ``name`` over ``params``."""
    if name == "gauss-newton-bartlett":
        return GaussNewtonBartlett(list(params), chunk_size, seed, rank, reduce)
    if name == "hutchinson":
        return Hutchinson(list(params), seed, reduce)
    raise ValueError(f"unknown curvature estimate {name!r}; available: {', '.join(CURVATURES)}")


__all__ = ["CURVATURES", "GaussNewtonBartlett", "Hutchinson", "SampledLabelNLL", "curvature"]

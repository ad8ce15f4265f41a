"""Rollout corrections: weights for the mismatch between the sampler's log-probs and the trainer's.

The sampler (vLLM, another kernel or precision) draws y from π_sampler while the update treats the
rollouts as drawn from the trainer's behaviour policy π_old. The correction weight of a token (or of
a whole sequence) is a function w(ρ) of the detached ratio

    token:     ρ_t = π_old(y_t) / π_sampler(y_t) = exp(ℓ^old_t − ℓ^sampler_t)
    sequence:  ρ   = exp(Σ_t (ℓ^old_t − ℓ^sampler_t))        (log-ratio clamped to ±20, as verl)

and multiplies the objective's term, gradient and value alike: m ← w(ρ) · m. ``Corrected(inner,
correction)`` is that mask; ``with_correction`` wraps every Estimator of an objective whose
denominator is π_old (the ones a sampler/trainer mismatch biases). The corrections live in a room of
their own, not in ``masks.py``: a mask is a function of (r, Â) alone, a correction reads two batch
fields the rollout producer fills (``logp_old`` recomputed by the trainer, ``logp_sampler`` kept).

TIS (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training",
fengyao.notion.site/off-policy-rl): w = min(ρ, C), C = 2, per token. MIS / IcePop (masked IS;
IcePop, Ling team 2025, "Small Leak Can Sink a Great Ship"): w = ρ · 1[low ≤ ρ ≤ high]; TRL's
default is the sequence mask with high = 3 (``vllm_importance_sampling_mode``), IcePop's the token
one. ρ and its clamp follow TRL and verl.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.checks import ParameterError, number, one_of
from unigrad.estimator.core import Estimator
from unigrad.estimator.protocols import Mask

LOG_RATIO_CLAMP = 20.0       # exp(±20) keeps a sequence ratio finite in float32 (verl's SAFETY_BOUND)
LEVELS = ("token", "sequence")
LEVEL = "a weight per token (ρ_t) or one per sequence (ρ = Π_t ρ_t)"
KEEPS_ON_POLICY = "a token the sampler and trainer agree on (ρ = 1) must keep its whole weight"


def rollout_ratio(batch: Batch, level: str) -> Tensor:
    """ρ = π_old / π_sampler, detached: [B, T] per token (1 past the completion) or [B] per sequence."""
    mask = batch.mask.to(batch.logp.dtype)
    log_rho = (batch.require("logp_old").to(mask.dtype) - batch.require("logp_sampler").to(mask.dtype)) * mask
    if level == "sequence":
        log_rho = log_rho.sum(1)
    return torch.exp(log_rho.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).detach()


class Correction(Protocol):
    """A rollout correction: its ``level``, the weight w(ρ), and where it cut ρ (truncated or masked)."""

    @property
    def level(self) -> str: ...

    def weight(self, rho: Tensor) -> Tensor: ...

    def cut(self, rho: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class TruncatedIS:
    """Truncated importance sampling (TIS): w = min(ρ, cap), cap C = 2 (Yao et al. 2025)."""

    cap: float = 2.0
    level: str = "token"
    cut_name: ClassVar[str] = "truncated"

    def __post_init__(self):
        number(self, "cap", self.cap, KEEPS_ON_POLICY, low=1)
        one_of(self, "level", self.level, LEVELS, LEVEL)

    def weight(self, rho: Tensor) -> Tensor:
        return rho.clamp(max=self.cap)

    def cut(self, rho: Tensor) -> Tensor:
        return rho > self.cap


@dataclass(frozen=True)
class MaskedIS:
    """Masked importance sampling (MIS / IcePop): w = ρ · 1[low ≤ ρ ≤ high]; a row (or token) whose
    ratio left the band is dropped from the update. Defaults: TRL's sequence mask, high = 3."""

    low: float = 0.0
    high: float = 3.0
    level: str = "sequence"
    cut_name: ClassVar[str] = "masked"

    def __post_init__(self):
        number(self, "low", self.low, KEEPS_ON_POLICY, low=0, high=1)
        number(self, "high", self.high, KEEPS_ON_POLICY, low=1)
        one_of(self, "level", self.level, LEVELS, LEVEL)

    def weight(self, rho: Tensor) -> Tensor:
        return rho * ~self.cut(rho)

    def cut(self, rho: Tensor) -> Tensor:
        return (rho < self.low) | (rho > self.high)


def _aligned(weight: Tensor, ratio: Tensor) -> Tensor:
    """A sequence weight [B] broadcast over a token-unit ratio [B, T]."""
    if weight.dim() == ratio.dim():
        return weight.to(ratio.dtype)
    if weight.dim() == 1:
        return weight.to(ratio.dtype)[:, None]
    raise ValueError("a token-level rollout correction needs a token-unit estimator; use level: sequence")


@dataclass(frozen=True)
class Corrected:
    """m = w(ρ) · m_inner and r̃ = w(ρ) · r̃_inner: the inner mask's term weighted by the rollout
    correction (its gradient and its logged value alike, as TRL and verl multiply the per-token loss)."""

    inner: Mask
    correction: Correction

    @property
    def requires(self) -> frozenset[str]:
        return self.inner.requires | {"logp_sampler", "logp_old"}

    def _weight(self, ratio: Tensor, batch: Batch) -> Tensor:
        return _aligned(self.correction.weight(rollout_ratio(batch, self.correction.level)), ratio)

    def __call__(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor:
        return self._weight(ratio, batch) * self.inner(ratio, advantage, batch)

    def value_ratio(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor:
        return self._weight(ratio, batch) * self.inner.value_ratio(ratio, advantage, batch)

    def metrics(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> dict[str, float]:
        """Mean ρ and the fraction of tokens (or sequences) the correction truncated or masked."""
        rho = rollout_ratio(batch, self.correction.level)
        valid = batch.mask > 0 if rho.dim() == 2 else torch.ones_like(rho, dtype=torch.bool)
        count = max(int(valid.sum()), 1)
        cut = self.correction.cut(rho) & valid
        return {**self.inner.metrics(ratio, advantage, batch), "correction/rho_mean": float((rho * valid).sum()) / count,
                f"correction/{self.correction.cut_name}_fraction": int(cut.sum()) / count}


def _corrects(estimator) -> bool:
    """An Estimator whose π_den is the behaviour policy: its importance ratio assumes π_old sampled."""
    return "logp_old" in estimator.denominator.requires


def _walk(node, wrap):
    """``node`` with ``wrap`` applied to every Estimator reachable through dataclass fields and tuples."""
    if isinstance(node, Estimator):
        return wrap(node)
    if isinstance(node, (tuple, list)):
        walked = [_walk(item, wrap) for item in node]
        return node if all(a is b for a, b in zip(walked, node)) else type(node)(walked)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        changes = {f.name: _walk(getattr(node, f.name), wrap) for f in dataclasses.fields(node) if f.init}
        changes = {name: value for name, value in changes.items() if value is not getattr(node, name)}
        return dataclasses.replace(node, **changes) if changes else node
    return node


def with_correction(objective, correction: Correction):
    """``objective`` with every Estimator whose denominator is π_old masked by ``Corrected(mask,
    correction)``; other terms (an SFT term, a KL penalty) are left as they are. An objective with no
    such Estimator is refused (ρ would correct nothing)."""
    wrapped = []

    def wrap(estimator):
        if not _corrects(estimator):
            return estimator
        if correction.level == "token" and estimator.likelihood.unit != "token":
            raise ParameterError("with_correction", "level", correction.level, "'sequence'",
                                 "the method's importance ratio is one per sequence; use level: sequence")
        wrapped.append(estimator)
        return dataclasses.replace(estimator, mask=Corrected(estimator.mask, correction))
    corrected = _walk(objective, wrap)
    if not wrapped:
        raise ParameterError("with_correction", "objective", type(objective).__name__,
                             "an objective with an Estimator on π_old (denominator BehaviourPolicy)",
                             "the method's terms never use π_old, so a rollout correction has nothing to reweight")
    return corrected


def correction_of(settings) -> Correction | None:
    """The correction a ``rollout.correction`` config asks for (None for kind: none); its level
    defaults to the kind's (TIS per token, MIS per sequence). Domains raise ConfigError with the key."""
    from unigrad.config import ConfigError
    if settings.kind == "none":
        return None
    level = settings.level or ("token" if settings.kind == "tis" else "sequence")
    try:
        if settings.kind == "tis":
            return TruncatedIS(settings.cap, level)
        return MaskedIS(settings.low, settings.high, level)
    except ParameterError as error:
        raise ConfigError(error.at("rollout.correction")) from None


def apply_rollout_correction(objective, settings):
    """The run's objective with its ``rollout.correction`` applied (unchanged for kind: none)."""
    from unigrad.config import ConfigError
    correction = correction_of(settings)
    if correction is None:
        return objective
    try:
        return with_correction(objective, correction)
    except ParameterError as error:
        raise ConfigError(f"rollout.correction: {error.why}") from None


__all__ = ["Corrected", "MaskedIS", "TruncatedIS", "apply_rollout_correction", "correction_of", "rollout_ratio", "with_correction"]

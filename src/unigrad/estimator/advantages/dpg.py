"""f-DPG's pseudo-reward: the advantage of minimising an f-divergence to an evaluable target.

Go et al. 2023, "Aligning Language Models with Preferences through f-divergence Minimization"
(ICML, arXiv 2302.08215). Per prompt x, the target p(y) = P(y)/Z with an unnormalised score P:

    "exponential":  P(y) = π_ref(y) · exp(R(y)/β)        (the RLHF target, R the reward)
    "product":      P(y) = π_ref(y) · R(y)                (a(y)·b(y) with a = π_ref, b = R ≥ 0, e.g. a
                                                           0/1 constraint given as the reward function)

Z(x) ≈ (1/n) Σ_{j∈G(x)} P(y_j)/q(y_j), the importance-sampling estimate over the prompt's rollouts in
the step, q = π_old the proposal (a prompt's rollouts are one unit, never split over micro-batches).
The loss D_f(π_θ ‖ p) = E_p[f(π_θ/p)] has the gradient E_q[(π_θ/q) f′(π_θ/p) ∇log π_θ], so with the
sequence ratio π_θ(y)/q(y) (π_den = π_old, sequence sum) the weight is

    Â(y) = R_θ(y) − b,   R_θ(y) = −f′(π_θ(y)/p(y))   (the pseudo-reward, π_θ detached),

b a moving average of R_θ over the last ``window`` rollouts of earlier steps (1024, as disco). The
objective is the self-normalised IS estimate (1/N) Σ_y w̃(y) f(π_θ(y)/p(y)), w̃ = (P/q)/Z.

Divergences (``divergence``), D_f(π‖p) = E_p[f(π/p)]:
    "kl"          f(t) = −log t             KL(p‖π): R = p/π (DPG)
    "reverse-kl"  f(t) = t log t            KL(π‖p): R = −log(π/p) − 1
    "js"          f(t) = t log t − (t+1) log((t+1)/2)   (twice JS): R = −log(2t/(1+t))
    "tv"          f(t) = |t − 1|/2          TV: R = −sign(t − 1)/2

Followed: the authors' library (naver/disco ``FDivergenceLoss`` and its ``KLLoss``, ``ReverseKLLoss``,
``JSLoss``, ``TVLoss``, ``WindowedMovingAverage``): the baseline is the previous value of the window
before this batch enters it (no baseline on the first batch), the loss is the mean of
(sg π/q)·(−Â)·log π(y). Deviation: disco keeps Z as a running mean over all the samples of a context;
here Z is estimated per prompt on the step's rollouts (prompts rarely repeat in RL on a dataset).
A prompt whose rollouts all have P = 0 (product target) has no target: its rows get Â = 0 and stay out
of the baseline.

The baseline is state (``MovingBaseline``): it is updated once per step with that step's rows (keyed by
the rollout producer's ``train_step`` and the rows' positions in the step, so a second call on the same
step — another epoch, an update rule's second pass — adds nothing), and it is checkpointed. Each
process keeps the baseline of the rows it trains.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.advantages.group import _reward, _totals, group_index
from unigrad.estimator.checks import ParameterError, integer, one_of, positive, text
from unigrad.estimator.protocols import Weighted
from unigrad.objectives.divergences import ForwardKL, JensenShannon, ReverseKL

TARGETS = ("exponential", "product")
LOG_T_CAP = 1e4
REVERSE_KL_PRODUCT = ("reverse KL(π‖p) is infinite wherever b(y) = 0 and π puts mass; use js, kl or tv with "
                      "target: product, or the exponential target")


@dataclass(frozen=True)
class TotalVariation:
    """f(t) = |t − 1|/2;  f′(t) = sign(t − 1)/2 (a subgradient; 0 at t = 1, as ``torch.sign``)."""

    def f(self, log_u: Tensor) -> Tensor:
        return torch.expm1(log_u).abs() / 2

    def fprime(self, log_u: Tensor) -> Tensor:
        return torch.sign(log_u) / 2


TARGET_DIVERGENCES = {"kl": ForwardKL, "reverse-kl": ReverseKL, "js": JensenShannon, "tv": TotalVariation}


class MovingBaseline:
    """The mean of the last ``window`` pseudo-rewards of earlier steps (disco's ``WindowedMovingAverage``),
    fed once per step: ``value(step)`` first moves the rows recorded for the previous step into the
    window (in row order, so the order of micro-batches does not matter), then answers for ``step``;
    ``record(step, rows, values)`` keeps the rows of ``step`` not recorded yet."""

    def __init__(self, window: int = 1024, state_name: str = "f_dpg_baseline"):
        self.window, self.state_name = window, state_name
        self.buffer: list[float] = []
        self.pending: dict[int, float] = {}
        self.step: int | None = None

    def value(self, step: int) -> float | None:
        if step != self.step:
            self.buffer = (self.buffer + [self.pending[row] for row in sorted(self.pending)])[-self.window:]
            self.pending, self.step = {}, step
        return sum(self.buffer) / len(self.buffer) if self.buffer else None

    def record(self, step: int, rows: list[int], values: list[float]) -> None:
        if step != self.step:
            raise ValueError(f"baseline: rows recorded for step {step} while step {self.step} is open")
        for row, value in zip(rows, values):
            self.pending.setdefault(int(row), float(value))

    def checkpoint_state(self) -> dict:
        rows = sorted(self.pending)
        return {"buffer": torch.tensor(self.buffer, dtype=torch.float64),
                "pending_rows": torch.tensor(rows, dtype=torch.long),
                "pending_values": torch.tensor([self.pending[r] for r in rows], dtype=torch.float64),
                "step": self.step, "window": self.window}

    def restore_state(self, state: dict) -> None:
        self.buffer = state["buffer"].tolist()
        self.pending = dict(zip(state["pending_rows"].tolist(), state["pending_values"].tolist()))
        self.step = state["step"]

    def __repr__(self) -> str:
        return f"MovingBaseline(window={self.window}, state_name={self.state_name!r})"


def check_target(owner, divergence, beta, target, window) -> None:
    """The domains of f-DPG's parameters (shared by the part and the ``f_dpg`` factory)."""
    one_of(owner, "divergence", divergence, TARGET_DIVERGENCES, "the f-divergence D_f(π_θ‖p) minimised")
    positive(owner, "beta", beta, "the temperature of the target π_ref·exp(R/β)")
    one_of(owner, "target", target, TARGETS, "P = π_ref·exp(R/β), or π_ref·R with R ≥ 0 (a(y)·b(y))")
    integer(owner, "window", window, "the number of earlier pseudo-rewards the baseline averages")
    if target == "product" and divergence == "reverse-kl":
        raise ParameterError(owner, "divergence", divergence, "js, kl or tv with target: product", REVERSE_KL_PRODUCT)


def _group_logmeanexp(values: Tensor, group: Tensor) -> Tensor:
    """log (1/n) Σ_{j∈G(i)} exp(values_j) per row (−inf for a group whose values are all −inf)."""
    inverse, counts = group_index(group)
    top = torch.full((counts.numel(),), -math.inf, dtype=values.dtype, device=values.device)
    top = top.scatter_reduce(0, inverse, values, "amax")
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    sums = _totals(torch.exp(values - shift[inverse]), inverse, counts)
    return (torch.log(sums / counts.to(values.dtype)) + shift)[inverse]


@dataclass(frozen=True)
class FDivergenceTarget:
    """Â = −f′(π_θ(y)/p(y)) − b at the sequence level (see the module docstring)."""

    divergence: Literal["kl", "reverse-kl", "js", "tv"] = "js"
    beta: float = 1.0
    target: Literal["exponential", "product"] = "exponential"
    window: int = 1024
    baseline: MovingBaseline = field(default=None, compare=False)
    requires: ClassVar[frozenset[str]] = frozenset({"reward", "group", "logp_old", "logp_ref", "train_step"})

    def __post_init__(self):
        check_target(self, self.divergence, self.beta, self.target, self.window)
        if self.baseline is None:
            object.__setattr__(self, "baseline", MovingBaseline(self.window))
        text(self, "baseline.state_name", self.baseline.state_name, "the key of the baseline in checkpoints")

    def log_target(self, batch: Batch) -> Tensor:
        """log P(y) per row, from the sequence log-probs of π_ref and the reward."""
        mask = batch.mask.to(batch.logp.dtype)
        log_ref = (batch.require("logp_ref").detach() * mask).sum(-1)
        reward = _reward(batch)
        if self.target == "exponential":
            return log_ref + reward / self.beta
        if torch.any(reward < 0):
            raise ValueError("f-dpg with target: product reads the reward as b(y) ≥ 0; got a negative reward")
        return log_ref + torch.log(reward)

    def __call__(self, batch: Batch) -> Weighted:
        mask = batch.mask.to(batch.logp.dtype)
        log_pi = (batch.logp.detach() * mask).sum(-1)
        log_q = (batch.require("logp_old").detach() * mask).sum(-1)
        log_P = self.log_target(batch)
        log_Z = _group_logmeanexp(log_P - log_q, batch.require("group"))
        has_target = torch.isfinite(log_Z)
        zero = torch.zeros_like(log_pi)
        # P(y) = 0 gives t = +inf; the cap keeps f′ at its limit (JS: log 2, KL: 0, TV: 1/2) instead of NaN
        log_t = torch.where(has_target, log_pi - (log_P - log_Z), zero).clamp(max=LOG_T_CAP)
        f = TARGET_DIVERGENCES[self.divergence]()
        pseudo = torch.where(has_target, -f.fprime(log_t), zero)
        step = int(batch.require("train_step").reshape(-1)[0])
        b = self.baseline.value(step)
        rows = batch.rows.tolist() if batch.rows is not None else list(range(log_pi.shape[0]))
        kept = [row for row, keep in zip(rows, has_target.tolist()) if keep]
        if torch.is_grad_enabled():   # a pass without gradient (an evaluation, a perturbed point) is not the step's
            self.baseline.record(step, kept, pseudo[has_target].tolist())
        advantage = torch.where(has_target, pseudo - (b if b is not None else 0.0), zero)
        weight_is = torch.where(has_target, torch.exp(log_P - log_q - log_Z), zero)
        value = torch.where(weight_is > 0, weight_is * f.f(log_t), zero)
        n_target = int(has_target.sum())
        return Weighted(advantage, objective=value.sum() / batch.sequences_total,
                        metrics={"pseudo_reward": float(pseudo[has_target].mean()) if n_target else 0.0,
                                 "baseline": b if b is not None else 0.0,
                                 "log_z": float(log_Z[has_target].mean()) if n_target else 0.0})

__all__ = ["FDivergenceTarget", "check_target", "MovingBaseline", "TARGET_DIVERGENCES", "TARGETS", "TotalVariation"]

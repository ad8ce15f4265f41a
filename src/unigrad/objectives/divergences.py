"""f-divergences D_f(p‖q) = E_q[f(p/q)], given by f, f′ and u·f″ evaluated at log u.

Working in log u keeps them finite where u = π/π_ref under- or overflows. Used by f-DPO
(Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse
Divergence Constraints", Table 1), where the implied reward is β f′(π_θ/π_ref), and by DPH-RL's
terms on reference samples (``estimator.advantages.divergence``), whose value is E_ref[f(u)].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from unigrad.estimator.checks import number, one_of

ALPHA = "0 < alpha < 1 for the α-divergence; its limits are reverse_kl (α → 0) and forward_kl (α → 1)"


class FDivergence(Protocol):
    """f(u), f′(u) and u·f″(u), all as functions of log u."""

    def f(self, log_u: Tensor) -> Tensor: ...

    def fprime(self, log_u: Tensor) -> Tensor: ...

    def u_fsecond(self, log_u: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class ReverseKL:
    """f(u) = u log u;  f′(u) = log u + 1;  u f″(u) = 1.  (f-DPO with it is DPO.)"""

    def f(self, log_u: Tensor) -> Tensor:
        return torch.exp(log_u) * log_u

    def fprime(self, log_u: Tensor) -> Tensor:
        return log_u + 1

    def u_fsecond(self, log_u: Tensor) -> Tensor:
        return torch.ones_like(log_u)


@dataclass(frozen=True)
class ForwardKL:
    """f(u) = −log u;  f′(u) = −1/u;  u f″(u) = 1/u."""

    def f(self, log_u: Tensor) -> Tensor:
        return -log_u

    def fprime(self, log_u: Tensor) -> Tensor:
        return -torch.exp(-log_u)

    def u_fsecond(self, log_u: Tensor) -> Tensor:
        return torch.exp(-log_u)


@dataclass(frozen=True)
class JensenShannon:
    """f(u) = u log u − (u+1) log((u+1)/2);  f′(u) = log(2u/(1+u));  u f″(u) = 1/(1+u)."""

    def f(self, log_u: Tensor) -> Tensor:
        return torch.exp(log_u) * log_u - (torch.exp(log_u) + 1) * (F.softplus(log_u) - math.log(2.0))

    def fprime(self, log_u: Tensor) -> Tensor:
        return math.log(2.0) + log_u - F.softplus(log_u)

    def u_fsecond(self, log_u: Tensor) -> Tensor:
        return torch.sigmoid(-log_u)


@dataclass(frozen=True)
class Alpha:
    """α-divergence, 0 < α < 1:  f(u) = (u^{1−α} − (1−α)u − α) / (α(α−1));
    f′(u) = (1 − u^{−α}) / α;  u f″(u) = u^{−α}.  α → 0 tends to reverse KL, α → 1 to forward KL."""

    alpha: float = 0.5

    def __post_init__(self):
        number(self, "alpha", self.alpha, ALPHA, low=0, high=1, low_open=True, high_open=True)

    def f(self, log_u: Tensor) -> Tensor:
        a = self.alpha
        return (torch.exp((1 - a) * log_u) - (1 - a) * torch.exp(log_u) - a) / (a * (a - 1))

    def fprime(self, log_u: Tensor) -> Tensor:
        return (1 - torch.exp(-self.alpha * log_u)) / self.alpha

    def u_fsecond(self, log_u: Tensor) -> Tensor:
        return torch.exp(-self.alpha * log_u)


DIVERGENCES = {"reverse_kl": ReverseKL, "forward_kl": ForwardKL, "js": JensenShannon, "alpha": Alpha}


def divergence(name: str, alpha: float = 0.5) -> FDivergence:
    """The f-divergence called ``name`` (one of DIVERGENCES)."""
    one_of("divergence", "name", name, DIVERGENCES, "the f-divergences of f-DPO's Table 1")
    return Alpha(alpha) if name == "alpha" else DIVERGENCES[name]()

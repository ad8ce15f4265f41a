"""Gates: an objective that picks, per prompt, which of two objectives its rows train.

HPT (Lv et al. 2025, "Towards a Unified View of Large Language Model Post-Training", arXiv
2509.04419) switches per question between SFT on a demonstration and RL on the model's own rollouts:

    P(q) = (1/n) Σ_i 1[R(τ_i) > ½]       success rate of the n rollouts of prompt q
    L    = Σ_q  1[P(q) ≤ γ] · L_below(q)  +  1[P(q) > γ] · L_above(q)

Rows carry a role: ``batch.extra["is_demo"]`` [B] bool marks demonstration rows (τ*), the others
are rollouts. Rows of one prompt share ``group``. A prompt routed below trains its demonstration
rows with ``below`` (its rollouts are dropped); a prompt routed above trains its rollouts with
``above`` (its demonstration is dropped). Each objective sees only its rows (``Batch.subset``), so
its own normaliser counts only them: for HPT, the SFT term is a token mean over the demonstration
tokens of the SFT-routed prompts and the RL term is GRPO's mean over the RL-routed rollouts.

Routing is decided on the whole optimiser step (``batch.whole``) and each objective receives
``batch.subset(route)``, whose whole step is the route's rows of the step: its normaliser counts
the route's tokens over the step, so accumulated micro-batches add up to the full step exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.advantages.group import group_sums
from unigrad.estimator.checks import fraction, number, part, text
from unigrad.estimator.protocols import Objective, Output

GAMMA = ("it is compared with a success rate P(q), the fraction of correct rollouts: the paper's gate of 2 correct "
         "out of 8 is gamma = 0.25, and gamma = 1 already routes every prompt to SFT")


@dataclass(frozen=True)
class Gate:
    """Per prompt: success rate ≤ ``gamma`` → ``below`` on its demonstration rows, else ``above`` on
    its rollout rows; the loss is the sum of the two objectives on their rows.

    The success rate is read from ``batch.extra[threshold_field]`` ([B], one value per row, equal
    within a prompt) when present, otherwise computed as the fraction of the prompt's rollout rows
    (``is_demo`` false) with reward > ``success_threshold`` (½, for {0, 1} rewards). A prompt with
    no rollout rows has success rate 0. Metrics: ``sft_fraction`` (prompts routed below / prompts),
    and each objective's metrics prefixed ``below/`` and ``above/``."""

    threshold_field: str = "success_rate"
    gamma: float = 0.0
    below: Objective | None = None
    above: Objective | None = None
    success_threshold: float = 0.5

    def __post_init__(self):
        if self.below is None or self.above is None:
            raise ValueError("Gate needs both objectives: below= (e.g. SFT) and above= (e.g. GRPO)")
        part(self, "below", self.below, "objective", "loss", "requires")
        part(self, "above", self.above, "objective", "loss", "requires")
        fraction(self, "gamma", self.gamma, GAMMA)
        text(self, "threshold_field", self.threshold_field, "the Batch.extra field holding each row's success rate")
        number(self, "success_threshold", self.success_threshold, "a rollout succeeds when its reward is above it")

    @property
    def requires(self) -> frozenset[str]:
        return self.below.requires | self.above.requires | frozenset({"reward", "group", "is_demo"})

    def success_rate(self, batch: Batch) -> Tensor:
        """P(q) of each row's prompt, [B]."""
        if self.threshold_field in batch.extra:
            return batch.extra[self.threshold_field].detach().to(torch.float64)
        group = batch.require("group")
        rollout = ~batch.require("is_demo").bool()
        success = ((batch.require("reward").detach() > self.success_threshold) & rollout).to(torch.float64)
        return group_sums(success, group) / group_sums(rollout.to(torch.float64), group).clamp(min=1)

    def route(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(below_rows, above_rows): [B] bool masks of the rows each objective trains."""
        is_demo = batch.require("is_demo").bool()
        low = self.success_rate(batch) <= self.gamma
        return is_demo & low, ~is_demo & ~low

    def loss(self, batch: Batch) -> Output:
        whole = batch.whole
        group = whole.require("group")
        low_groups = torch.unique(group[self.success_rate(whole) <= self.gamma]).numel()
        below_rows, above_rows = self.route(whole)
        return routed(batch, (("below", self.below, below_rows), ("above", self.above, above_rows)),
                      {"sft_fraction": low_groups / max(torch.unique(group).numel(), 1)})


def routed(batch: Batch, routes, metrics: dict) -> Output:
    """Σ over ``routes`` (name, objective, [B] bool rows of the whole step) of the objective on
    ``batch.subset(rows)``: each sees only its rows of the step, so its normaliser counts them alone and
    accumulated micro-batches add up exactly. Metrics: ``metrics`` and each route's, prefixed by its name."""
    loss = batch.logp.sum() * 0.0              # keeps the graph when a route is empty
    objective = torch.zeros((), dtype=batch.logp.dtype, device=batch.logp.device)
    for name, part_of, keep in routes:
        sub = batch.subset(keep)
        if sub.logp.shape[0] == 0:
            continue
        out = part_of.loss(sub)
        loss = loss + out.loss
        objective = objective + out.objective
        metrics.update({f"{name}/{key}": value for key, value in out.metrics.items()})
        metrics[f"{name}/objective"] = float(out.objective)
    return Output(loss=loss, objective=objective.detach(), metrics=metrics)

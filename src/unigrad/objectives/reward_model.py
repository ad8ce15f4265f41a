"""Reward-model training: the Bradley–Terry loss on a sequence score, a standalone objective.

Not one Estimator: it descends a score r_θ(x, y) (a sequence-classification head, ``extra["score"]``
from ``logprobs.scores.SequenceScores``), not the likelihood ∇ log π_θ of the four-part estimator.
The objective says what it trains (``trains = "score"``: ``run.assemble`` loads the model with a
one-output head) and on which data (``formats``: pairs); ``check_score_run`` refuses a run that
could not give it either.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from unigrad.batch import Batch
from unigrad.config import ConfigError
from unigrad.estimator.advantages.preference import pair_rows
from unigrad.estimator.checks import non_negative, text
from unigrad.estimator.protocols import Output


@dataclass(frozen=True)
class BradleyTerryLoss:
    """The Bradley–Terry loss of a reward model on preference pairs (y⁺ chosen over y⁻ for x):

        L = (1/P) Σ_pairs [ −log σ(r(x, y⁺) − r(x, y⁻) − m) + η (r(x, y⁺) + r(x, y⁻))² ]

    (Ouyang et al. 2022, "Training language models to follow instructions with human feedback",
    §3.5, eq. 1, with one comparison per prompt; the margin m as in Touvron et al. 2023, "Llama 2",
    §3.2.2: m = ``margin`` plus the pair's own ``extra["margin"]`` when the data gives one; η the
    centring coefficient of TRL's RewardTrainer, ``center_rewards_coefficient``, which pulls the
    scores towards zero mean; 0: plain Bradley–Terry). The mean is over the step's P pairs, so
    micro-batches add up to the whole step. The loss is its own canonical value.
    Metrics: ``pair_accuracy`` (r⁺ > r⁻, ties ½), ``score_margin`` (mean r⁺ − r⁻), ``score_chosen``,
    ``score_rejected``."""

    margin: float = 0.0
    center: float = 0.0
    field: str = "score"
    trains: ClassVar[str] = "score"
    formats: ClassVar[tuple[str, ...]] = ("pairs",)

    def __post_init__(self):
        non_negative(self, "margin", self.margin, "the score difference the chosen response must win by")
        non_negative(self, "center", self.center, "the weight of η (r⁺ + r⁻)²; a negative one pushes scores apart")
        text(self, "field", self.field, "the Batch.extra field with the score r(x, y) per row")

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({self.field, "group", "sign"})

    def loss(self, batch: Batch) -> Output:
        score = batch.require(self.field)
        chosen, rejected = pair_rows(batch.require("group"), batch.require("sign"))
        r_plus, r_minus = score[chosen], score[rejected]
        delta = r_plus - r_minus
        margin = self.margin + (batch.extra["margin"][chosen].to(delta) if "margin" in batch.extra else 0.0)
        per_pair = F.softplus(-(delta - margin)) + self.center * (r_plus + r_minus) ** 2
        loss = per_pair.sum() / batch.groups_total
        d = delta.detach()
        metrics = {"pair_accuracy": float(((d > 0).double() + 0.5 * (d == 0).double()).mean()),
                   "score_margin": float(d.mean()), "score_chosen": float(r_plus.detach().mean()),
                   "score_rejected": float(r_minus.detach().mean())}
        return Output(loss=loss, objective=loss.detach(), metrics=metrics)


def check_score_run(objective, config) -> None:
    """A run whose objective trains a score head (``trains == "score"``) on data it can read, without
    what needs token log-probs or sampling (a score model has neither): else a ConfigError naming the key."""
    if getattr(objective, "trains", "lm") != "score":
        return
    formats = getattr(objective, "formats", ("pairs",))
    if config.data.format not in formats:
        raise ConfigError(f"data.format={config.data.format!r}: reward-model fits a Bradley–Terry score to preference "
                          f"pairs (prompt, chosen, rejected); set data.format: {' or '.join(formats)}")
    refused = {"train.track_kl": config.train.track_kl, "data.on_policy_fraction": config.data.on_policy_fraction,
               "teacher.name": config.teacher.name, "model.lora": config.model.lora}
    for key, value in refused.items():
        if value:
            why = ("LoRA adapters on a score head are not supported yet; train the full model" if key == "model.lora"
                   else "a reward model has a score head, no token log-probs to compare or sample")
            raise ConfigError(f"{key}: not with reward-model ({why}); remove it")


__all__ = ["BradleyTerryLoss", "check_score_run"]

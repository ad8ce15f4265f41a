"""Reward-model training (the reward-modelling stage of RLHF): a factory for the Bradley–Terry objective."""
from __future__ import annotations

from unigrad.estimator.checks import non_negative
from unigrad.objectives.reward_model import BradleyTerryLoss


def reward_model(margin: float = 0.0, center_rewards_coefficient: float = 0.0) -> BradleyTerryLoss:
    """Reward model (Ouyang et al. 2022, "Training language models to follow instructions with human
    feedback", §3.5): a one-output head on the causal LM, fitted to preference pairs by Bradley–Terry,

        L = −log σ(r(x, y⁺) − r(x, y⁻) − m) + η (r(x, y⁺) + r(x, y⁻))²,   mean over pairs,

    with the margin m = ``margin`` (+ a pair's ``margin`` field; Touvron et al. 2023, "Llama 2") and
    η = ``center_rewards_coefficient`` (TRL's RewardTrainer). The run loads the model with a score head
    (``trains = "score"``) and saves it where ``AutoModelForSequenceClassification`` loads it."""
    non_negative("reward-model", "margin", margin, "the score difference the chosen response must win by")
    non_negative("reward-model", "center_rewards_coefficient", center_rewards_coefficient,
                 "the weight of η (r⁺ + r⁻)²; a negative one pushes scores apart")
    return BradleyTerryLoss(float(margin), float(center_rewards_coefficient))


__all__ = ["reward_model"]

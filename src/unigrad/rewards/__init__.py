"""Rewards: verifiable rule-based functions, reward models, ensembles, robust scoring.

A reward function is ``fn(prompt, completion, answer: str | None, **meta) -> float``.
"""
from unigrad.rewards.loading import BUILTINS, load_reward
from unigrad.rewards.models import Ensemble, RewardModel
from unigrad.rewards.scoring import RewardReport, best_of_n, score_rollouts
from unigrad.rewards.verifiable import (
    boxed_content,
    extract_answer,
    format_reward,
    math_verify_match,
    numeric_match,
    parse_number,
)

__all__ = [
    "BUILTINS", "Ensemble", "RewardModel", "RewardReport", "best_of_n", "boxed_content", "extract_answer",
    "format_reward", "load_reward", "math_verify_match", "numeric_match", "parse_number", "score_rollouts",
]

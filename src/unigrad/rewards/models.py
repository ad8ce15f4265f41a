"""Learned rewards: a sequence-classification reward model and ensembles of reward functions.

``RewardModel(folder)`` scores (prompt, completion) with ``AutoModelForSequenceClassification``
(one output; the score is that logit at the last non-pad token), in batches; ``method: reward-model``
trains such folders. ``Ensemble`` combines reward functions or models:

    mean:         r = (1/K) Σ_k r_k
    min:          r = min_k r_k                                  (worst-case optimisation)
    uncertainty:  r = (1/K) Σ_k r_k − λ · (1/K) Σ_k (r_k − r̄)²  (uncertainty-weighted optimisation,
                  Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization")

Both are reward functions themselves (``fn(prompt, completion, answer=None, **meta) -> float``) and
also offer ``score(prompts, completions, answers=None) -> Tensor[N]`` for batches.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

MODES = ("mean", "min", "uncertainty")


def _messages(prompt: Any) -> list[dict[str, str]]:
    """A prompt as chat messages: a string is one user message; (role, content) pairs or dicts are kept."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    out = []
    for m in prompt:
        if isinstance(m, dict):
            out.append({"role": m["role"], "content": m["content"]})
        else:
            role, content = m
            out.append({"role": role, "content": content})
    return out


class RewardModel:
    """A reward model in ``folder`` (or a Hub id): ``AutoModelForSequenceClassification`` with one label.

    The score of (x, y) is the head's output at the last non-pad token (``logprobs.scores.sequence_scores``)
    of the tokens unigrad trains reward models on: the chat-templated prompt ending where the answer
    starts (``data.encode_prompt``), then the completion and EOS (``data.encode_completion``); so a
    folder trained by ``reward-model`` scores rollouts exactly as it scored its pairs. The tokens are
    cut to ``max_length`` (keeping the end, where the answer is); batches of ``batch_size`` are
    right-padded. A local folder is loaded as ``models.load_model(folder, head="score")`` loads it
    (safetensors only).
    """

    def __init__(self, folder: str | os.PathLike, batch_size: int = 16, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, max_length: int | None = None, model=None, tokenizer=None):
        if model is None or tokenizer is None:
            model, tokenizer = _load(folder, dtype, device)
        num_labels = getattr(model.config, "num_labels", 1)
        if num_labels != 1:
            raise ValueError(f"reward model {folder}: expected one output (num_labels=1), got {num_labels}")
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError(f"reward model {folder}: the tokenizer has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        self.folder = str(folder)
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_length = max_length

    def __repr__(self) -> str:
        return f"RewardModel({self.folder!r})"

    def ids(self, prompt: Any, completion: str) -> list[int]:
        """The token ids scored for (prompt, completion)."""
        from unigrad.data.tokenization import encode_completion, encode_prompt

        messages = tuple((m["role"], m["content"]) for m in _messages(prompt))
        ids = encode_prompt(self.tokenizer, messages) + encode_completion(self.tokenizer, completion)
        if self.max_length is not None and len(ids) > self.max_length:
            ids = ids[len(ids) - self.max_length:]
        return list(ids)

    @torch.no_grad()
    def score_ids(self, rows: Sequence[Sequence[int]]) -> Tensor:
        """[N] float32 scores of token-id rows (``ids``, or a tokenised dataset's prompt + completion)."""
        from unigrad.logprobs.scores import padded, sequence_scores

        out = [sequence_scores(self.model, *padded(rows[i:i + self.batch_size], self.tokenizer.pad_token_id)).cpu()
               for i in range(0, len(rows), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    def score(self, prompts: Sequence[Any], completions: Sequence[str], answers: Sequence | None = None) -> Tensor:
        """[N] float32 scores (the single logit) of each (prompt, completion)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return self.score_ids([self.ids(p, c) for p, c in zip(prompts, completions)])

    def __call__(self, prompt: Any, completion: str, answer: str | None = None, **meta) -> float:
        return float(self.score([prompt], [completion])[0])


def _load(folder, dtype, device):
    """(model, tokenizer) of a reward model: a local folder through ``models.load_model(head="score")``
    (one whose config is not a sequence classifier is refused), else a Hub id through transformers."""
    from unigrad.models import is_score_folder, load_model

    local = os.path.expanduser(str(folder))
    if os.path.isdir(local):
        if not is_score_folder(local):
            raise ValueError(f"reward model {folder}: its config.json names no *ForSequenceClassification "
                             f"architecture, so it is not a reward model (train one with method: reward-model)")
        return load_model(local, dtype=dtype, device=device, head="score")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return (AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=dtype),
            AutoTokenizer.from_pretrained(str(folder)))


@dataclass(frozen=True)
class Ensemble:
    """Combine K reward functions / models: ``mode`` mean, min or uncertainty (mean − lam · variance).

    The variance is the population variance over members, (1/K) Σ (r_k − r̄)², as in Coste et al. 2023.
    """
    members: tuple[Callable, ...]
    mode: str = "mean"
    lam: float = 1.0

    def __init__(self, members: Sequence[Callable], mode: str = "mean", lam: float = 1.0):
        members = tuple(members)
        if not members:
            raise ValueError("Ensemble needs at least one member")
        if mode not in MODES:
            raise ValueError(f"Ensemble mode must be one of {', '.join(MODES)}, got {mode!r}")
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "lam", float(lam))

    def member_scores(self, prompts: Sequence[Any], completions: Sequence[str], answers: Sequence | None = None,
                      metas: Sequence[dict] | None = None) -> Tensor:
        """[K, N] scores of each member."""
        n = len(completions)
        answers = list(answers) if answers is not None else [None] * n
        metas = list(metas) if metas is not None else [{}] * n
        rows = []
        for m in self.members:
            if hasattr(m, "score"):
                rows.append(torch.as_tensor(m.score(prompts, completions, answers), dtype=torch.float32))
            else:
                rows.append(torch.tensor([float(m(p, c, a, **(meta or {})))
                                          for p, c, a, meta in zip(prompts, completions, answers, metas)],
                                         dtype=torch.float32))
        return torch.stack(rows)

    def combine(self, scores: Tensor) -> Tensor:
        """[K, N] member scores → [N] ensemble reward."""
        if self.mode == "mean":
            return scores.mean(0)
        if self.mode == "min":
            return scores.min(0).values
        return scores.mean(0) - self.lam * scores.var(0, unbiased=False)

    def score(self, prompts: Sequence[Any], completions: Sequence[str], answers: Sequence | None = None,
              metas: Sequence[dict] | None = None) -> Tensor:
        return self.combine(self.member_scores(prompts, completions, answers, metas))

    def __call__(self, prompt: Any, completion: str, answer: str | None = None, **meta) -> float:
        return float(self.score([prompt], [completion], [answer], [meta])[0])


__all__ = ["Ensemble", "MODES", "RewardModel"]

"""Learned rewards: a sequence-classification reward model and ensembles of reward functions.

``RewardModel(folder)`` scores (prompt, completion) with ``AutoModelForSequenceClassification``
(one output; the score is that logit), in batches. ``Ensemble`` combines reward functions or models:

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

    The text scored is the chat template applied to ``[prompt messages…, assistant: completion]`` when
    the tokenizer has one, else ``prompt + completion``; it is cut to ``max_length`` tokens (keeping
    the end, where the answer is). Batches of ``batch_size`` are right-padded.
    """

    def __init__(self, folder: str | os.PathLike, batch_size: int = 16, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, max_length: int | None = None, model=None, tokenizer=None):
        if model is None or tokenizer is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(folder))
            model = model or AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=dtype)
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

    def text(self, prompt: Any, completion: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = _messages(prompt) + [{"role": "assistant", "content": completion}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return (prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in _messages(prompt))) + completion

    def _ids(self, prompt: Any, completion: str) -> list[int]:
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        ids = self.tokenizer(self.text(prompt, completion), add_special_tokens=not templated)["input_ids"]
        if self.max_length is not None and len(ids) > self.max_length:
            ids = ids[len(ids) - self.max_length:]
        return list(ids)

    @torch.no_grad()
    def score(self, prompts: Sequence[Any], completions: Sequence[str], answers: Sequence | None = None) -> Tensor:
        """[N] float32 scores (the single logit) of each (prompt, completion)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        out = []
        for i in range(0, len(prompts), self.batch_size):
            rows = [self._ids(p, c) for p, c in zip(prompts[i:i + self.batch_size], completions[i:i + self.batch_size])]
            L = max(len(r) for r in rows)
            ids = torch.full((len(rows), L), pad, dtype=torch.long)
            att = torch.zeros((len(rows), L), dtype=torch.long)
            for k, r in enumerate(rows):
                ids[k, :len(r)] = torch.tensor(r, dtype=torch.long)
                att[k, :len(r)] = 1
            logits = self.model(input_ids=ids.to(device), attention_mask=att.to(device)).logits
            out.append(logits[:, 0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def __call__(self, prompt: Any, completion: str, answer: str | None = None, **meta) -> float:
        return float(self.score([prompt], [completion])[0])


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
